"""Who a session belongs to and what it records of its client: the user named at
``SESSION_USER_KEY``, the keyed hash stored for that user (never the user), and the
client record (User-Agent, address) sealed to its row. No database, no Quart."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import InvalidPayload
from .sealing import RowSealer

_USER_KEY_INFO = b"quartsess user binding v1"

#: Where a session's payload keeps when its user last proved who they are (epoch
#: seconds): written by the save (a login) and by ``session.mark_authenticated()``, never
#: by assigning a session key (the session object keeps it beside its data).
AUTHENTICATED_AT_KEY = "_authenticated_at"


@dataclass(frozen=True, slots=True)
class Client:
    """What is recorded of the client of a request (``SESSION_RECORD_CLIENT``)."""

    user_agent: str | None
    ip_address: str | None


def user_of(data: Mapping[str, Any], key: str | None) -> str | None:
    """The user a session's data belongs to: ``str(data[key])``; ``None`` when binding
    is off, the key is absent or its value is ``None``."""
    if key is None:
        return None
    value = data.get(key)
    return None if value is None else str(value)


class OwnerKeys:
    """The keyed forms of a session's owner: the user's HMAC (one key per encryption key,
    newest first, so sessions bound before a key rotation are still found) and the
    sealed client record."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        self._user_keys = [_user_key(key) for key in keys]
        self._sealer = RowSealer(keys)

    def user_hash(self, user: str) -> str:
        """The keyed hash (HMAC-SHA256, newest key) stored for ``user``: finds its rows
        without storing who the user is."""
        return _hmac_hex(self._user_keys[0], user)

    def user_hashes(self, user: str) -> list[str]:
        """``user``'s hash under every configured key, newest first."""
        return [_hmac_hex(key, user) for key in self._user_keys]

    def seal_client(self, id_hash: str, client: Client) -> bytes:
        """Encrypt what is recorded of the client, bound to the row like a payload."""
        body = json.dumps([client.user_agent, client.ip_address], ensure_ascii=False)
        return self._sealer.seal(id_hash, body.encode("utf-8"))

    def open_client(self, id_hash: str, sealed: bytes) -> Client:
        """The client recorded in a row; an empty one if it does not open."""
        try:
            user_agent, ip_address = json.loads(self._sealer.open(id_hash, sealed).decode())
        except (InvalidPayload, ValueError, TypeError):
            return Client(None, None)
        return Client(
            user_agent if isinstance(user_agent, str) else None,
            ip_address if isinstance(ip_address, str) else None,
        )

    def rotate_client(self, sealed: bytes) -> bytes | None:
        """The client record under the newest key; ``None`` (dropped) if no key opens it."""
        try:
            return self._sealer.rotate(sealed)
        except InvalidPayload:
            return None


def _user_key(fernet_key: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"quartsess", info=_USER_KEY_INFO)
    return hkdf.derive(base64.urlsafe_b64decode(fernet_key))


def _hmac_hex(key: bytes, user: str) -> str:
    return hmac.new(key, user.encode("utf-8"), hashlib.sha256).hexdigest()
