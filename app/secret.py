"""The app's secret key: from the environment, or generated once into the instance folder;
and the keys derived from it, one per purpose."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ENV_VAR = "QUARTSESS_SECRET_KEY"
FILE_NAME = "secret_key"
_HKDF_SALT = b"quartsess-demo"


def load_secret_key(instance_path: str | os.PathLike[str]) -> str:
    """``$QUARTSESS_SECRET_KEY`` if set, else ``<instance>/secret_key`` (created on first use).

    The file is written with mode 0600 and published atomically, so several workers
    starting at once all end up with the same key."""
    from_env = os.environ.get(ENV_VAR, "").strip()
    if from_env:
        return from_env
    folder = Path(instance_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE_NAME
    if not path.exists():
        _publish_new_key(path)
    key = path.read_text(encoding="ascii").strip()
    if not key:
        raise RuntimeError(f"{path} is empty; delete it to generate a new key")
    return key


def _publish_new_key(path: Path) -> None:
    # Write a private temporary file, then hard-link it into place: the link either
    # appears complete or fails because another worker won the race.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        temporary.unlink(missing_ok=True)


@lru_cache(maxsize=16)
def derive_key(secret_key: str | bytes, purpose: bytes) -> bytes:
    """A 32-byte key for one ``purpose``, derived from the secret key with HKDF-SHA256 (as
    quartsess derives its encryption keys): knowing one such key tells nothing of the
    secret key or of the keys for other purposes."""
    material = secret_key.encode() if isinstance(secret_key, str) else bytes(secret_key)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=purpose)
    return hkdf.derive(material)
