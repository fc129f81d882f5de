"""Fernet tokens bound to one session row: the row's ID hash is encrypted with the body,
so a token copied onto another row does not open. ``MultiFernet``: the newest key
encrypts, every key decrypts. Knows no database and no Quart."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import InvalidPayload

_HASH_BYTES = 32


class RowSealer:
    """Encrypts bodies for a row (``seal``) and opens them only on that row (``open``).

    The two halves of each are public too, for a caller that keeps decrypted tokens:
    ``bind`` + ``encrypt``, ``decrypt`` + ``unbind``."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is required")
        self._fernet = MultiFernet([Fernet(key) for key in keys])
        self._newest = Fernet(keys[0])

    def seal(self, id_hash: str, body: bytes) -> bytes:
        return self.encrypt(self.bind(id_hash, body))

    def open(self, id_hash: str, token: bytes) -> bytes:
        """The body sealed for ``id_hash``; :class:`InvalidPayload` if no key opens the
        token or it belongs to another row."""
        return self.unbind(id_hash, self.decrypt(token))

    @staticmethod
    def bind(id_hash: str, body: bytes) -> bytes:
        return bytes.fromhex(id_hash) + body

    @staticmethod
    def unbind(id_hash: str, bound: bytes) -> bytes:
        binding, body = bound[:_HASH_BYTES], bound[_HASH_BYTES:]
        if not hmac.compare_digest(binding, bytes.fromhex(id_hash)):
            raise InvalidPayload("the payload belongs to another session row")
        return body

    def encrypt(self, bound: bytes) -> bytes:
        return self._fernet.encrypt(bound)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except (InvalidToken, TypeError) as error:
            raise InvalidPayload("the payload does not decrypt with any configured key") from error

    def uses_newest_key(self, token: bytes) -> bool:
        """Whether ``token`` is encrypted with the newest key already."""
        try:
            self._newest.decrypt(token)
        except InvalidToken:
            return False
        return True

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt with the newest key; :class:`InvalidPayload` if no key opens it."""
        try:
            return self._fernet.rotate(token)
        except InvalidToken as error:
            raise InvalidPayload("the payload does not decrypt with any configured key") from error
