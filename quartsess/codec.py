"""Sealing session payloads: serialized, bound to the row's ID hash, encrypted with
MultiFernet. Knows no database and no Quart."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import InvalidPayload, SessionTooLarge
from .serializer import SessionSerializer

_HASH_BYTES = 32
# Decrypted payloads kept for reuse, by ciphertext: at most this many bytes of ciphertext
# and plaintext together (about 10,000 small sessions), each entry at most a sixteenth.
OPENED_BYTES_KEPT = 4 * 1024 * 1024
_ENTRY_OVERHEAD = 120  # two bytes objects and a dict slot, roughly
_USER_KEY_INFO = b"quartsess user binding v1"


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
        if not keys:
            raise ValueError("at least one encryption key is required")
        self._fernet = MultiFernet([Fernet(key) for key in keys])
        self._newest = Fernet(keys[0])
        # One HMAC key per encryption key, newest first: sessions bound before a key
        # rotation are still found under the older ones.
        self._user_keys = [_user_key(key) for key in keys]
        self.serializer = serializer if serializer is not None else SessionSerializer()
        self.max_bytes = max_bytes
        # A returning visitor's row usually holds the very ciphertext this process wrote
        # or opened last time; decrypting it again (HMAC check and AES, ~15 us) would give
        # the same bytes. Only the decryption is skipped: the row is still read on every
        # request, and the binding to the row is still checked.
        self._kept = KeptPlaintexts(OPENED_BYTES_KEPT)

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
        bound = bytes.fromhex(id_hash) + plaintext
        ciphertext = self._fernet.encrypt(bound)
        self._kept.put(ciphertext, bound)
        return ciphertext

    def open(self, id_hash: str, ciphertext: bytes) -> tuple[dict[str, Any], bytes]:
        """Decrypt a row's payload; returns the data and its serialized form.

        A payload far larger than any this app writes (``max_bytes`` encrypted is about
        4/3 of it plus 120 bytes) is refused unread, so a huge row cannot exhaust
        memory; the 2x margin keeps rows written under a larger ``SESSION_MAX_BYTES``."""
        if len(ciphertext) > 2 * self.max_bytes + 1024:
            raise InvalidPayload("the payload is far larger than SESSION_MAX_BYTES allows")
        plaintext = self._kept.get(ciphertext)
        if plaintext is None:
            try:
                plaintext = self._fernet.decrypt(ciphertext)
            except (InvalidToken, TypeError) as error:
                raise InvalidPayload(
                    "the payload does not decrypt with any configured key"
                ) from error
            self._kept.put(ciphertext, plaintext)
        binding, body = plaintext[:_HASH_BYTES], plaintext[_HASH_BYTES:]
        if not hmac.compare_digest(binding, bytes.fromhex(id_hash)):
            raise InvalidPayload("the payload belongs to another session row")
        try:
            return self.deserialize(body), body
        except (ValueError, RecursionError, UnicodeDecodeError) as error:
            raise InvalidPayload("the payload is not a valid session document") from error

    def forget(self, ciphertext: bytes) -> None:
        """Drop what is kept of ``ciphertext``: its row was rewritten, deleted or expired."""
        self._kept.forget(ciphertext)

    def user_hash(self, user: str) -> str:
        """The keyed hash (HMAC-SHA256, newest key) stored for ``user``: finds its rows
        without storing who the user is."""
        return _hmac_hex(self._user_keys[0], user)

    def user_hashes(self, user: str) -> list[str]:
        """``user``'s hash under every configured key, newest first."""
        return [_hmac_hex(key, user) for key in self._user_keys]

    def seal_client(self, id_hash: str, user_agent: str | None, ip_address: str | None) -> bytes:
        """Encrypt what is recorded of the client, bound to the row like a payload."""
        body = json.dumps([user_agent, ip_address], ensure_ascii=False).encode("utf-8")
        return self._fernet.encrypt(bytes.fromhex(id_hash) + body)

    def open_client(self, id_hash: str, ciphertext: bytes) -> tuple[str | None, str | None]:
        """``(user_agent, ip_address)`` of a row; ``(None, None)`` if it does not open."""
        try:
            plaintext = self._fernet.decrypt(ciphertext)
            binding, body = plaintext[:_HASH_BYTES], plaintext[_HASH_BYTES:]
            if not hmac.compare_digest(binding, bytes.fromhex(id_hash)):
                return None, None
            user_agent, ip_address = json.loads(body.decode("utf-8"))
        except (InvalidToken, TypeError, ValueError):
            return None, None
        return (
            user_agent if isinstance(user_agent, str) else None,
            ip_address if isinstance(ip_address, str) else None,
        )

    def uses_newest_key(self, ciphertext: bytes) -> bool:
        """Whether ``ciphertext`` is encrypted with the newest key already."""
        try:
            self._newest.decrypt(ciphertext)
        except InvalidToken:
            return False
        return True

    def rotate(self, ciphertext: bytes) -> bytes:
        """Re-encrypt with the newest key; raises :class:`InvalidPayload` if no key opens it."""
        try:
            return self._fernet.rotate(ciphertext)
        except InvalidToken as error:
            raise InvalidPayload("the payload does not decrypt with any configured key") from error


class KeptPlaintexts:
    """Plaintexts by their ciphertext, the least recently used dropped first, within
    ``budget`` bytes (each entry at most a sixteenth of it). Safe to share between threads.
    bytes are not tracked by the garbage collector, so this adds nothing to its walks."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0  # bytes held, by _entry_size
        self._entries: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def get(self, ciphertext: bytes) -> bytes | None:
        if type(ciphertext) is not bytes:
            return None
        with self._lock:
            plaintext = self._entries.pop(ciphertext, None)
            if plaintext is not None:
                self._entries[ciphertext] = plaintext  # now the most recently used
        return plaintext

    def put(self, ciphertext: bytes, plaintext: bytes) -> None:
        size = _entry_size(ciphertext, plaintext)
        if type(ciphertext) is not bytes or size > self.budget // 16:
            return
        with self._lock:
            entries = self._entries
            if ciphertext in entries:
                return
            while entries and self.size + size > self.budget:
                oldest = next(iter(entries))
                self.size -= _entry_size(oldest, entries.pop(oldest))
            entries[ciphertext] = plaintext
            self.size += size

    def forget(self, ciphertext: bytes) -> None:
        if type(ciphertext) is not bytes:
            return
        with self._lock:
            plaintext = self._entries.pop(ciphertext, None)
            if plaintext is not None:
                self.size -= _entry_size(ciphertext, plaintext)

    def __contains__(self, ciphertext: object) -> bool:
        return type(ciphertext) is bytes and ciphertext in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def _entry_size(ciphertext: bytes, plaintext: bytes) -> int:
    return len(ciphertext) + len(plaintext) + _ENTRY_OVERHEAD


def _user_key(fernet_key: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"quartsess", info=_USER_KEY_INFO)
    return hkdf.derive(base64.urlsafe_b64decode(fernet_key))


def _hmac_hex(key: bytes, user: str) -> str:
    return hmac.new(key, user.encode("utf-8"), hashlib.sha256).hexdigest()
