"""When a session ends: its idle and absolute deadlines, and how often a write moves them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import SessionConfig
    from .stores.base import StoredSession


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    """When a session ends: ``idle_timeout`` seconds after it was last touched
    (``anonymous_idle_timeout`` for a session bound to no user), and
    ``absolute_timeout`` seconds after it was created (``None``: no such limit). The
    idle deadline is written at most once per ``touch_interval`` seconds."""

    idle_timeout: int
    absolute_timeout: int | None
    touch_interval: int
    anonymous_idle_timeout: int | None = None  # None: the idle timeout

    @classmethod
    def from_config(cls, config: SessionConfig) -> ExpiryPolicy:
        return cls(
            config.idle_timeout,
            config.absolute_timeout,
            config.touch_interval,
            config.anonymous_idle_timeout,
        )

    def idle_for(self, bound: bool) -> int:
        if bound or self.anonymous_idle_timeout is None:
            return self.idle_timeout
        return self.anonymous_idle_timeout

    def expiry(self, record: StoredSession) -> int:
        """When ``record`` ends under the current settings (which may have been
        shortened since it was written)."""
        end = min(record.expires_at, record.touched_at + self.idle_for(bool(record.user_hash)))
        if self.absolute_timeout is not None:
            end = min(end, record.created_at + self.absolute_timeout)
        return end

    def is_live(self, record: StoredSession, now: int) -> bool:
        """Whether ``record`` is live at ``now``."""
        return now < self.expiry(record)

    def deadline(self, now: int, created_at: int, *, bound: bool = True) -> int:
        """The ``expires_at`` to write at ``now`` for a session created at
        ``created_at`` (``bound``: to a user)."""
        deadline = now + self.idle_for(bound)
        if self.absolute_timeout is not None:
            deadline = min(deadline, created_at + self.absolute_timeout)
        return deadline

    def touch_due(self, record: StoredSession, now: int) -> bool:
        return now - record.touched_at >= self.touch_interval

    def moved_deadline(self, record: StoredSession, now: int, bound: bool) -> tuple[int, int]:
        """``touched_at`` and ``expires_at`` for a content write of ``record`` at ``now``
        (``bound``: to a user, after the write): moved as a touch moves them (at most once
        per ``touch_interval``), so most writes leave the indexed deadline alone. An
        earlier deadline, or one under another idle timeout (the session was bound to a
        user or unbound without a new ID), is written at once."""
        deadline = self.deadline(now, record.created_at, bound=bound)
        if (
            self.touch_due(record, now)
            or deadline < record.expires_at
            or self.idle_for(bound) != self.idle_for(bool(record.user_hash))
        ):
            return now, deadline
        return record.touched_at, record.expires_at
