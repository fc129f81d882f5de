"""User sessions: listing, revoking and capping the sessions of a user. Knows the store
contract; ends sessions through the lifecycle; no Quart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .errors import InvalidPayload
from .owners import AUTHENTICATED_AT_KEY

if TYPE_CHECKING:
    from .clock import Clock
    from .codec import PayloadCodec
    from .expiry import ExpiryPolicy
    from .lifecycle import Lifecycle
    from .owners import OwnerKeys
    from .stores.base import MaintainedStore, StoredSession


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One of a user's live sessions, as :meth:`Session.user_sessions` lists them.

    ``handle`` names the session for :meth:`Session.revoke_session`: stable for the
    session's life (also across new IDs), and neither the cookie ID nor its stored hash,
    so it is safe to put in a page. ``current`` is true for the session of the request
    being served. Times are aware UTC datetimes."""

    handle: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    user_agent: str | None
    ip_address: str | None
    current: bool
    #: When the user last proved who they are on that session (the login, or the last
    #: ``session.mark_authenticated()``); ``None`` if it is not known.
    authenticated_at: datetime | None = None


class UserSessions:
    """List, revoke and cap the sessions of users in ``store``."""

    def __init__(
        self,
        store: MaintainedStore,
        codec: PayloadCodec,
        owners: OwnerKeys,
        policy: ExpiryPolicy,
        lifecycle: Lifecycle,
        clock: Clock,
        *,
        max_per_user: int | None = None,
    ) -> None:
        self.store = store
        self.codec = codec
        self.owners = owners
        self.policy = policy
        self.lifecycle = lifecycle
        self.clock = clock
        self.max_per_user = max_per_user

    async def live_rows(self, user: str) -> list[StoredSession]:
        """The user's live rows, most recently active first."""
        now = int(self.clock())
        rows = await self.store.sessions_of(self.owners.user_hashes(user))
        live = [row for row in rows if row.handle and self.policy.is_live(row, now)]
        return sorted(live, key=lambda row: (row.touched_at, row.created_at), reverse=True)

    async def list(self, user: str, *, current_handle: str | None = None) -> list[SessionInfo]:
        infos = []
        for row in await self.live_rows(user):
            client = self.owners.open_client(row.id_hash, row.client) if row.client else None
            infos.append(
                SessionInfo(
                    handle=row.handle or "",
                    created_at=_utc(row.created_at),
                    last_seen_at=_utc(row.touched_at),
                    expires_at=_utc(self.policy.expiry(row)),
                    user_agent=client.user_agent if client else None,
                    ip_address=client.ip_address if client else None,
                    current=current_handle is not None and row.handle == current_handle,
                    authenticated_at=self._authenticated_at(row),
                )
            )
        return infos

    def _authenticated_at(self, row: StoredSession) -> datetime | None:
        try:
            data, _ = self.codec.open(row.id_hash, row.payload)
        except InvalidPayload:
            return None
        stamp = data.get(AUTHENTICATED_AT_KEY)
        if isinstance(stamp, bool) or not isinstance(stamp, int | float):
            return None
        return _utc(int(stamp))

    async def revoke(self, handle: str, *, user: str | None = None) -> bool:
        hashes = None if user is None else self.owners.user_hashes(user)
        ended = await self.lifecycle.end_handles([handle], "revoked", user=user, user_hashes=hashes)
        return ended > 0

    async def revoke_all(self, user: str, *, except_handle: str | None = None) -> int:
        return await self.lifecycle.end_user_sessions(
            user, self.owners.user_hashes(user), except_handle=except_handle
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
        return await self.lifecycle.end_handles(excess, "capped", user=user)


def _utc(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
