"""User sessions: which user a session belongs to, and listing and revoking a user's
sessions. Knows the store contract and the codec; no Quart."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .clock import Clock
    from .codec import PayloadCodec
    from .saving import ExpiryPolicy
    from .stores.base import MaintainedStore, StoredSession


@dataclass(frozen=True, slots=True)
class Client:
    """What is recorded of the client of a request (``SESSION_RECORD_CLIENT``)."""

    user_agent: str | None
    ip_address: str | None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One of a user's live sessions, as :meth:`Session.user_sessions` lists them.

    ``handle`` names the session for :meth:`Session.revoke_session`: stable for the
    session's life (also across new IDs), and neither the cookie ID nor its stored hash,
    so it is safe to put in a page. ``current`` is true for the session of the request
    being served."""

    handle: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    user_agent: str | None
    ip_address: str | None
    current: bool


def user_of(data: Mapping[str, Any], key: str | None) -> str | None:
    """The user a session's data belongs to: ``str(data[key])``; ``None`` when binding
    is off, the key is absent or its value is ``None``."""
    if key is None:
        return None
    value = data.get(key)
    return None if value is None else str(value)


def new_handle() -> str:
    """A fresh session handle: 128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


class UserSessions:
    """List, revoke and cap the sessions of users in ``store``."""

    def __init__(
        self,
        store: MaintainedStore,
        codec: PayloadCodec,
        policy: ExpiryPolicy,
        clock: Clock,
        *,
        max_per_user: int | None = None,
    ) -> None:
        self.store = store
        self.codec = codec
        self.policy = policy
        self.clock = clock
        self.max_per_user = max_per_user

    async def live_rows(self, user: str) -> list[StoredSession]:
        """The user's live rows, most recently active first."""
        now = int(self.clock())
        rows = await self.store.sessions_of(self.codec.user_hashes(user))
        live = [row for row in rows if row.handle and self.policy.is_live(row, now)]
        return sorted(live, key=lambda row: (row.touched_at, row.created_at), reverse=True)

    async def list(self, user: str, *, current_handle: str | None = None) -> list[SessionInfo]:
        infos = []
        for row in await self.live_rows(user):
            user_agent, ip_address = (
                self.codec.open_client(row.id_hash, row.client) if row.client else (None, None)
            )
            infos.append(
                SessionInfo(
                    handle=row.handle or "",
                    created_at=_utc(row.created_at),
                    last_seen_at=_utc(row.touched_at),
                    expires_at=_utc(self.policy.expiry(row)),
                    user_agent=user_agent,
                    ip_address=ip_address,
                    current=current_handle is not None and row.handle == current_handle,
                )
            )
        return infos

    async def revoke(self, handle: str, *, user: str | None = None) -> bool:
        hashes = None if user is None else self.codec.user_hashes(user)
        return await self.store.delete_handles([handle], user_hashes=hashes) > 0

    async def revoke_all(self, user: str, *, except_handle: str | None = None) -> int:
        return await self.store.delete_user(
            self.codec.user_hashes(user), except_handle=except_handle
        )

    async def enforce_limit(self, user: str, *, keep_handle: str) -> int:
        """Revoke the least recently active sessions of ``user`` beyond
        ``max_per_user``, never ``keep_handle``; returns how many went."""
        if self.max_per_user is None:
            return 0
        others = [row for row in await self.live_rows(user) if row.handle != keep_handle]
        excess = [row.handle for row in others[self.max_per_user - 1 :] if row.handle]
        if not excess:
            return 0
        return await self.store.delete_handles(excess)


def _utc(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
