#!/usr/bin/env bash
# The programs `make test` drives for real, installed when missing (Debian/Ubuntu,
# apt-get), skipped when present: safe to run again, and silent when there is nothing to do.
#
#   python3-venv   `python3 -m venv` for .venv
#   nginx          tests/e2e/test_deploy_nginx.py, test_replicas.py run deploy/nginx/anyrouter.conf
#   postgresql     tests/pg_server.py starts a private cluster with its initdb / pg_ctl
#                  (the package's own cluster is not used)
#   redis-server   tests/redis_server.py starts a throwaway instance on loopback
#   prometheus     promtool checks deploy/prometheus and the Grafana queries
#   wrk            tests/e2e/test_bench.py runs `make bench`'s script for one second
#   chromium       tests/e2e/test_dashboard_browser.py drives it with Playwright for Python
#                  (Playwright's own browser download is never used)
#   nodejs, npm    tests/e2e/test_node_clients.py runs the official JavaScript SDKs
#                  (tests/node, installed there by `npm ci`); Node.js 18 or newer
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
missing=()

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

if [ ! -x .venv/bin/python ]; then
  probe=$(mktemp -d)
  if ! "$PYTHON" -m venv "$probe/venv" >/dev/null 2>&1; then missing+=(python3-venv); fi
  rm -rf "$probe"
fi
have nginx || missing+=(nginx)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || have initdb || missing+=(postgresql)
have redis-server || missing+=(redis-server)
have promtool || missing+=(prometheus)
have wrk || missing+=(wrk)
[ -x /usr/bin/chromium ] || missing+=(chromium)
have node || missing+=(nodejs)
have npm || missing+=(npm)

[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "make test needs: ${missing[*]} (not found; install them with your package manager)" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "make test needs: ${missing[*]}; as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi
echo "installing what the tests need: ${missing[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >/dev/null
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
