"""Session payloads: tagged JSON, bound to the row's ID hash, encrypted with MultiFernet."""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask.json.tag import JSONTag, TaggedJSONSerializer

from .errors import InvalidPayload, SessionNotSerializable, SessionTooLarge

_HKDF_SALT = b"quartsess"
_HKDF_INFO = b"quartsess session payload encryption v1"
_HASH_BYTES = 32


class _TagPreciseDateTime(JSONTag):
    """datetime as ISO 8601: keeps microseconds and the (absent or present) timezone.

    Quart's default datetime tag goes through an HTTP date and drops both.
    """

    __slots__ = ()
    key = " dt"

    def check(self, value: Any) -> bool:
        return isinstance(value, datetime)

    def to_json(self, value: Any) -> Any:
        return value.isoformat()

    def to_python(self, value: Any) -> Any:
        return datetime.fromisoformat(value)


class SessionSerializer(TaggedJSONSerializer):
    """Quart's tagged JSON (dict, tuple, bytes, Markup, UUID, datetime) as compact UTF-8."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        super().__init__()
        self.register(_TagPreciseDateTime, index=0)
        self._decoder = json.JSONDecoder(object_hook=self.untag)

    def dump_bytes(self, value: dict[str, Any]) -> bytes:
        try:
            # Plain JSON content tags to itself: skip the tagging walk (same bytes).
            tagged = value if self._is_plain(value) else self.tag(value)
            text = json.dumps(tagged, separators=(",", ":"), ensure_ascii=False)
            # Inside the try: a lone surrogate ("\ud800", e.g. from a JSON request body)
            # cannot be encoded and is reported like any other unstorable value.
            return text.encode("utf-8")
        except (TypeError, ValueError) as error:
            raise SessionNotSerializable(
                f"session values must be JSON types, tuples, bytes, datetimes, UUIDs or "
                f"Markup: {error}"
            ) from error
        except RecursionError:
            raise SessionNotSerializable("the session is nested too deeply to store") from None

    def _is_plain(self, value: Any) -> bool:
        """Whether ``value`` holds only exact JSON types and no dict that looks tagged."""
        try:
            return self._plain(value)
        except RecursionError:
            return False  # the tagging walk reports it

    def _plain(self, value: Any) -> bool:
        kind = type(value)
        if kind is str or kind is int or kind is float or kind is bool or value is None:
            return True
        if kind is dict:
            if len(value) == 1 and next(iter(value)) in self.tags:
                return False
            return all(type(k) is str and self._plain(v) for k, v in value.items())
        if kind is list:
            return all(self._plain(item) for item in value)
        return False

    def load_bytes(self, data: bytes) -> dict[str, Any]:
        # ``untag`` as the object hook sees every JSON object bottom-up, exactly like
        # ``loads``'s own walk, but inside the C decoder.
        value = self._decoder.decode(data.decode("utf-8"))
        if not isinstance(value, dict):
            raise ValueError("a session payload must be a JSON object")
        return value


def derive_fernet_key(secret: str | bytes) -> bytes:
    """A Fernet key derived from an application secret with HKDF-SHA256."""
    material = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(material))


def generate_key() -> str:
    """A new random Fernet key, as text."""
    return Fernet.generate_key().decode("ascii")


class PayloadCodec:
    """dict <-> ciphertext. The plaintext starts with the row's ID hash, so a payload
    copied onto another row fails to open. The newest key encrypts; every key decrypts."""

    def __init__(self, keys: Sequence[bytes], max_bytes: int) -> None:
        if not keys:
            raise ValueError("at least one encryption key is required")
        self._fernet = MultiFernet([Fernet(key) for key in keys])
        self._serializer = SessionSerializer()
        self.max_bytes = max_bytes

    def serialize(self, data: dict[str, Any]) -> bytes:
        """The plaintext form of ``data``, compared byte for byte to detect changes."""
        return self._serializer.dump_bytes(data)

    def deserialize(self, plaintext: bytes) -> dict[str, Any]:
        return self._serializer.load_bytes(plaintext)

    def check_size(self, plaintext: bytes) -> None:
        """Raise :class:`SessionTooLarge` if ``plaintext`` is over ``max_bytes``."""
        if len(plaintext) > self.max_bytes:
            raise SessionTooLarge(len(plaintext), self.max_bytes)

    def seal(self, id_hash: str, plaintext: bytes) -> bytes:
        """Encrypt serialized data for the row ``id_hash``; enforces ``max_bytes``."""
        self.check_size(plaintext)
        return self._fernet.encrypt(bytes.fromhex(id_hash) + plaintext)

    def open(self, id_hash: str, ciphertext: bytes) -> tuple[dict[str, Any], bytes]:
        """Decrypt a row's payload; returns the data and its serialized form.

        A payload far larger than any this app writes (``max_bytes`` encrypted is about
        4/3 of it plus 120 bytes) is refused unread, so a huge row cannot exhaust
        memory; the 2x margin keeps rows written under a larger ``SESSION_MAX_BYTES``."""
        if len(ciphertext) > 2 * self.max_bytes + 1024:
            raise InvalidPayload("the payload is far larger than SESSION_MAX_BYTES allows")
        try:
            plaintext = self._fernet.decrypt(ciphertext)
        except (InvalidToken, TypeError) as error:
            raise InvalidPayload("the payload does not decrypt with any configured key") from error
        binding, body = plaintext[:_HASH_BYTES], plaintext[_HASH_BYTES:]
        if not hmac.compare_digest(binding, bytes.fromhex(id_hash)):
            raise InvalidPayload("the payload belongs to another session row")
        try:
            return self.deserialize(body), body
        except (ValueError, RecursionError, UnicodeDecodeError) as error:
            raise InvalidPayload("the payload is not a valid session document") from error

    def rotate(self, ciphertext: bytes) -> bytes:
        """Re-encrypt with the newest key (raises InvalidToken if no key opens it)."""
        return self._fernet.rotate(ciphertext)


def fernet_keys(values: Iterable[str | bytes]) -> list[bytes]:
    return [value.encode("ascii") if isinstance(value, str) else bytes(value) for value in values]
