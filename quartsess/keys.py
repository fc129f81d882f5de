"""Fernet keys: derived from the app's secret with HKDF, or generated."""

from __future__ import annotations

import base64
from collections.abc import Iterable

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_HKDF_SALT = b"quartsess"
_HKDF_INFO = b"quartsess session payload encryption v1"


def derive_fernet_key(secret: str | bytes) -> bytes:
    """A Fernet key derived from an application secret with HKDF-SHA256."""
    material = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(material))


def generate_key() -> str:
    """A new random Fernet key, as text."""
    return Fernet.generate_key().decode("ascii")


def fernet_keys(values: Iterable[str | bytes]) -> list[bytes]:
    """Keys given as text or bytes, as bytes."""
    return [value.encode("ascii") if isinstance(value, str) else bytes(value) for value in values]
