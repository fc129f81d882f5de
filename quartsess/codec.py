"""Session payloads: serialized, size-checked, sealed to their row (see :mod:`.sealing`),
and kept decrypted by ciphertext so an unchanged row is not decrypted twice. Knows no
database and no Quart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import InvalidPayload, SessionTooLarge
from .kept import KeptPlaintexts
from .sealing import RowSealer
from .serializer import SessionSerializer


class PayloadCodec:
    """dict <-> ciphertext. The plaintext starts with the row's ID hash, so a payload
    copied onto another row fails to open. The newest key encrypts; every key decrypts.

    ``serializer`` turns the dict into the bytes that are encrypted (and compared to
    detect changes); the default is :class:`~quartsess.serializer.SessionSerializer`."""

    def __init__(
        self,
        keys: Sequence[bytes],
        max_bytes: int,
        serializer: SessionSerializer | None = None,
    ) -> None:
        self.sealer = RowSealer(keys)
        self.serializer = serializer if serializer is not None else SessionSerializer()
        self.max_bytes = max_bytes
        # A returning visitor's row usually holds the very ciphertext this process wrote
        # or opened last time; decrypting it again (HMAC check and AES, ~15 us) would give
        # the same bytes. Only the decryption is skipped: the row is still read on every
        # request, and the binding to the row is still checked.
        self._kept = KeptPlaintexts()

    def serialize(self, data: dict[str, Any]) -> bytes:
        """The plaintext form of ``data``, compared byte for byte to detect changes."""
        return self.serializer.dump_bytes(data)

    def deserialize(self, plaintext: bytes) -> dict[str, Any]:
        return self.serializer.load_bytes(plaintext)

    def check_size(self, plaintext: bytes) -> None:
        """Raise :class:`SessionTooLarge` if ``plaintext`` is over ``max_bytes``."""
        if len(plaintext) > self.max_bytes:
            raise SessionTooLarge(len(plaintext), self.max_bytes)

    def seal(self, id_hash: str, plaintext: bytes) -> bytes:
        """Encrypt serialized data for the row ``id_hash``; enforces ``max_bytes``."""
        self.check_size(plaintext)
        bound = self.sealer.bind(id_hash, plaintext)
        ciphertext = self.sealer.encrypt(bound)
        self._kept.put(ciphertext, bound)
        return ciphertext

    def open(self, id_hash: str, ciphertext: bytes) -> tuple[dict[str, Any], bytes]:
        """Decrypt a row's payload; returns the data and its serialized form.

        A payload far larger than any this app writes (``max_bytes`` encrypted is about
        4/3 of it plus 120 bytes) is refused unread, so a huge row cannot exhaust
        memory; the 2x margin keeps rows written under a larger ``SESSION_MAX_BYTES``."""
        if len(ciphertext) > 2 * self.max_bytes + 1024:
            raise InvalidPayload("the payload is far larger than SESSION_MAX_BYTES allows")
        bound = self._kept.get(ciphertext)
        if bound is None:
            bound = self.sealer.decrypt(ciphertext)
            self._kept.put(ciphertext, bound)
        body = self.sealer.unbind(id_hash, bound)
        try:
            return self.deserialize(body), body
        except (ValueError, RecursionError, UnicodeDecodeError) as error:
            raise InvalidPayload("the payload is not a valid session document") from error

    def forget(self, ciphertext: bytes) -> None:
        """Drop what is kept of ``ciphertext``: its row was rewritten, deleted or expired."""
        self._kept.forget(ciphertext)

    def uses_newest_key(self, ciphertext: bytes) -> bool:
        """Whether ``ciphertext`` is encrypted with the newest key already."""
        return self.sealer.uses_newest_key(ciphertext)

    def rotate(self, ciphertext: bytes) -> bytes:
        """Re-encrypt with the newest key; raises :class:`InvalidPayload` if no key opens it."""
        return self.sealer.rotate(ciphertext)
