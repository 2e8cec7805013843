"""Where a vertex provider's Google credentials are, decided once at load time (no network):
`has_credentials` (routing, /providers, /health) reads the answer.

Application default credentials are looked for where Google's libraries look: the file
named by GOOGLE_APPLICATION_CREDENTIALS, gcloud's `application_default_credentials.json`
(under CLOUDSDK_CONFIG, %APPDATA%\\gcloud or ~/.config/gcloud), else the metadata server,
which is assumed present on Google Cloud (GCE_METADATA_HOST set, Cloud Run or Cloud
Functions, or a Google Compute Engine machine).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

ADC_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
ADC_FILE = "application_default_credentials.json"
GOOGLE_CLOUD_ENV = ("GCE_METADATA_HOST", "GCE_METADATA_IP", "K_SERVICE", "FUNCTION_TARGET")
DMI_PRODUCT_NAME = Path("/sys/class/dmi/id/product_name")


def vertex_credentials(configured: str | None, base_dir: Path,
                       environ: Mapping[str, str]) -> str | None:
    """The frozen `credentials_file`: an absolute path, None for application default
    credentials, "" when none can be found (the provider is then no_credentials)."""
    if configured is None:
        return None if default_credentials_found(environ) else ""
    if not configured:
        return ""
    path = Path(configured).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return str(path.resolve()) if path.is_file() else ""


def default_credentials_found(environ: Mapping[str, str]) -> bool:
    named = environ.get(ADC_ENV)
    if named:
        return Path(named).expanduser().is_file()
    return any(path.is_file() for path in _gcloud_files(environ)) or _on_google_cloud(environ)


def _gcloud_files(environ: Mapping[str, str]) -> list[Path]:
    dirs = [environ.get("CLOUDSDK_CONFIG")]
    if environ.get("APPDATA"):
        dirs.append(str(Path(environ["APPDATA"]) / "gcloud"))
    if environ.get("HOME"):
        dirs.append(str(Path(environ["HOME"]) / ".config" / "gcloud"))
    return [Path(d) / ADC_FILE for d in dirs if d]


def _on_google_cloud(environ: Mapping[str, str]) -> bool:
    if any(environ.get(name) for name in GOOGLE_CLOUD_ENV):
        return True
    try:
        return DMI_PRODUCT_NAME.read_text("utf-8").startswith("Google")
    except OSError:
        return False
