"""Key rotation: re-encrypt every row with the newest key, in batches, while the app
keeps serving. ``quart sessions rotate-keys`` reports what :func:`rotate_keys` did.
:func:`check_keys` tells whether the configured keys open the stored sessions at all."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .errors import InvalidPayload
from .owners import user_of

if TYPE_CHECKING:
    from .codec import PayloadCodec
    from .expiry import ExpiryPolicy
    from .owners import OwnerKeys
    from .stores.base import MaintainedStore, StoredSession

ROTATE_BATCH_SIZE = 500
#: Rows :func:`check_keys` reads (one primary-key range read).
KEY_CHECK_SAMPLE = 100


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


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """What :func:`check_keys` found: ``checked`` live rows, of which ``opened`` opened."""

    checked: int
    opened: int

    @property
    def opens_none(self) -> bool:
        """Live rows are stored and no configured key opens any of them: these are not
        the keys the app serves with."""
        return self.checked > 0 and self.opened == 0


async def check_keys(
    store: MaintainedStore,
    codec: PayloadCodec,
    policy: ExpiryPolicy,
    now: int,
    *,
    sample: int = KEY_CHECK_SAMPLE,
) -> KeyCheck:
    """Whether the configured keys open the stored sessions: for a command that found
    none of a user's sessions, which it cannot tell from "run with the wrong secret"
    (a user's rows are found by a keyed hash, so other keys find nobody's).

    Cheap: one read of up to ``sample`` rows in primary-key order (a random sample, as
    the keys are hashes of random IDs), stopping at the first live row that opens. Rows
    past their deadline are skipped: they may be left from a key removed on purpose. A
    live row no key opens is possible with the right keys too (a key dropped before
    ``rotate-keys``), but every live row of the sample failing is not: a worker wrote or
    re-encrypted each of them with the keys it serves with."""
    checked = 0
    for row in await store.scan("", sample):
        if not policy.is_live(row, now):
            continue
        checked += 1
        try:
            codec.open(row.id_hash, row.payload)
        except InvalidPayload:
            continue
        codec.forget(row.payload)  # a command's process keeps no plaintexts
        return KeyCheck(checked, 1)
    return KeyCheck(checked, 0)
