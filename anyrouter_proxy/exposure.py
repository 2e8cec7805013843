"""Never serve the published demo key beyond this machine.

The example config ships a demo key whose plain text is printed in the README, so that
`make run` works at once. Anyone who reads the README holds it: `serve` refuses to listen
on an address other machines can reach while any key of the config has its digest.
"""

from __future__ import annotations

import ipaddress

from .config.model import Config

# sha256 of the README's demo key, sk-ar-demo-0000000000000000000000000000
DEMO_KEY_SHA256 = "cff5f1ff10990c39578186ae5b2e276b638e9c8e1aea788bdb52ee9d189a34bc"
LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (also written [::1] or as ::ffff:127.x.y.z) and
    localhost; False for the wildcards 0.0.0.0 and ::, any other address, and any other
    name (it may resolve to any interface)."""
    name = host.strip().removeprefix("[").removesuffix("]").rstrip(".").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])  # without an IPv6 zone
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def demo_key_names(config: Config) -> list[str]:
    """The names of the config's keys that are the published demo key."""
    return [name for name, key in config.keys.items() if key.key_sha256 == DEMO_KEY_SHA256]


def exposure_problem(config: Config, host: str) -> str | None:
    """Why `serve` must not listen on `host` with this config, as one paragraph for the
    operator; None when it may."""
    names = demo_key_names(config)
    if not names or is_loopback(host):
        return None
    listed = ", ".join(f"keys.{name}" for name in names)
    where = f" in {config.path}" if config.path is not None else ""
    return (
        f"refusing to serve on {host}: the config{where} still has the demo key "
        f"({listed}), whose secret is published in the README, and {host} is reachable "
        "from other machines, so anyone could spend its credits. Make a key of your own "
        "with `anyrouter-proxy keys new NAME`, paste the snippet it prints under `keys:`, "
        f"and remove the demo key ({listed}); in a container, mount the edited routes.yaml "
        "over the image's. To try the demo, listen on 127.0.0.1, ::1 or localhost instead."
    )
