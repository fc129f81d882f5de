"""Key rotation: re-encrypt every row with the newest key, in batches, while the app
keeps serving. ``quart sessions rotate-keys`` reports what :func:`rotate_keys` did."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .errors import InvalidPayload
from .owners import user_of

if TYPE_CHECKING:
    from .codec import PayloadCodec
    from .owners import OwnerKeys
    from .stores.base import MaintainedStore, StoredSession

ROTATE_BATCH_SIZE = 500


@dataclass(slots=True)
class RotationReport:
    """What a rotation did: rows ``scanned``, ``rotated`` to the newest key, already
    ``current``, ``raced`` (rewritten by a request meanwhile, so left as they were),
    ``unreadable`` (ID hashes no configured key opens) and how many of those were
    ``deleted``."""

    scanned: int = 0
    rotated: int = 0
    current: int = 0
    raced: int = 0
    deleted: int = 0
    unreadable: list[str] = field(default_factory=list)


async def rotate_keys(
    store: MaintainedStore,
    codec: PayloadCodec,
    owners: OwnerKeys,
    user_key: str | None,
    *,
    batch_size: int = ROTATE_BATCH_SIZE,
    delete_unreadable: bool = False,
) -> RotationReport:
    """Re-encrypt every row of ``store`` with the newest key: the payload, the client
    record, and the user's hash under the newest key (so the user's sessions are found
    under it). Safe to interrupt and run again: rows that use the newest key are left
    alone, and a row that a request rewrote meanwhile is not overwritten (its version
    changed; the request's write used the newest key already)."""
    report = RotationReport()
    after = ""
    while rows := await store.scan(after, batch_size):
        after = rows[-1].id_hash
        report.scanned += len(rows)
        updates = []
        for row in rows:
            if codec.uses_newest_key(row.payload):
                report.current += 1
                continue
            try:
                updates.append(_rotated(row, codec, owners, user_key))
            except InvalidPayload:
                report.unreadable.append(row.id_hash)
                if delete_unreadable and await store.delete_version(row.id_hash, row.version):
                    report.deleted += 1
        done = await store.replace_payloads(updates) if updates else 0
        report.rotated += done
        report.raced += len(updates) - done
    return report


def _rotated(
    row: StoredSession, codec: PayloadCodec, owners: OwnerKeys, user_key: str | None
) -> StoredSession:
    data, _ = codec.open(row.id_hash, row.payload)
    user = user_of(data, user_key)
    return replace(
        row,
        payload=codec.rotate(row.payload),
        user_hash=None if user is None else owners.user_hash(user),
        client=None if row.client is None else owners.rotate_client(row.client),
    )
