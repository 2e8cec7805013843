"""A Google service account key made for the test: a fresh RSA key pair, written as the
JSON file the Cloud console downloads (its `token_uri` pointing at the fake's endpoint)."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fake_gemini import PROJECT, FakeGoogle

CLIENT_EMAIL = f"anyrouter@{PROJECT}.iam.gserviceaccount.com"


def write_service_account(path: Path, fake: FakeGoogle) -> Path:
    """Writes the key file and tells the fake the public key and identity to expect."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    fake.public_key_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    fake.client_email = CLIENT_EMAIL
    path.write_text(json.dumps({
        "type": "service_account", "project_id": PROJECT, "private_key_id": "0123456789abcdef",
        "private_key": private_pem, "client_email": CLIENT_EMAIL, "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": fake.token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com"}))
    return path
