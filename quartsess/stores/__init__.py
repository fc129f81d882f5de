"""Where sessions are kept: the store contract and its implementations.

Nothing here imports Quart. :mod:`.base` is the contract; :mod:`.sql` the SQL store (one
module per per-request runner beside it); :mod:`.memory` an in-memory store.
"""

from __future__ import annotations

from .base import STORE_ERRORS, MaintainedStore, SessionStore, StoredSession, StoreStats
from .memory import MemoryStore
from .sql import SqlStore

__all__ = [
    "STORE_ERRORS",
    "MaintainedStore",
    "MemoryStore",
    "SessionStore",
    "SqlStore",
    "StoreStats",
    "StoredSession",
]
