"""The save protocol without Quart, against the in-memory store: the merge as a table, and
interleavings of two requests of one session written out as data."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from quartsess.codec import PayloadCodec
from quartsess.expiry import ExpiryPolicy
from quartsess.keys import derive_fernet_key
from quartsess.lifecycle import Lifecycle
from quartsess.owners import OwnerKeys
from quartsess.saving import Loaded, SaveResult, SessionSaver, merge_changes
from quartsess.stores.memory import MemoryStore
from tests.conftest import FakeClock

# (base: what both loaded, ours: what this request holds, theirs: the newer row, merged)
MERGES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ("a key only we added", {}, {"a": 1}, {}, {"a": 1}),
    ("a key only they added", {}, {}, {"b": 2}, {"b": 2}),
    ("each side added one", {}, {"a": 1}, {"b": 2}, {"a": 1, "b": 2}),
    ("only they changed it", {"a": 1}, {"a": 1}, {"a": 2}, {"a": 2}),
    ("both changed it: ours wins", {"a": 1}, {"a": 3}, {"a": 2}, {"a": 3}),
    ("we deleted it", {"a": 1, "b": 1}, {"b": 1}, {"a": 1, "b": 2}, {"b": 2}),
    ("they deleted it, we did not touch it", {"a": 1}, {"a": 1}, {}, {}),
    ("they deleted it, we changed it", {"a": 1}, {"a": 5}, {}, {"a": 5}),
    ("True replaced by 1 is a change", {"a": True}, {"a": 1}, {"a": False}, {"a": 1}),
    ("a list replaced by a tuple is a change", {"a": [1]}, {"a": (1,)}, {"a": [2]}, {"a": (1,)}),
    ("1 replaced by 1.0 is a change", {"a": 1}, {"a": 1.0}, {"a": 2}, {"a": 1.0}),
    (
        "nested change by us, new key by them",
        {"cart": {"tea": 1}},
        {"cart": {"tea": 2}},
        {"cart": {"tea": 1}, "user": "ada"},
        {"cart": {"tea": 2}, "user": "ada"},
    ),
    # -- at every depth of nested dicts --
    (
        "each side added a different product to the cart",
        {"cart": {}},
        {"cart": {"tea": 1}},
        {"cart": {"mug": 1}},
        {"cart": {"mug": 1, "tea": 1}},
    ),
    (
        "each side created the cart with a product",
        {},
        {"cart": {"tea": 1}},
        {"cart": {"mug": 1}},
        {"cart": {"mug": 1, "tea": 1}},
    ),
    (
        "each side changed a different product",
        {"cart": {"tea": 1, "mug": 1}},
        {"cart": {"tea": 2, "mug": 1}},
        {"cart": {"tea": 1, "mug": 3}},
        {"cart": {"tea": 2, "mug": 3}},
    ),
    (
        "both changed one product: the later save's value (a merge cannot add)",
        {"cart": {"tea": 1}},
        {"cart": {"tea": 2}},
        {"cart": {"tea": 2}},
        {"cart": {"tea": 2}},
    ),
    (
        "three levels deep, one key each",
        {"a": {"b": {"c": 1, "d": 1}}},
        {"a": {"b": {"c": 2, "d": 1}}},
        {"a": {"b": {"c": 1, "d": 3}, "e": 1}},
        {"a": {"b": {"c": 2, "d": 3}, "e": 1}},
    ),
    (
        "they removed a product we did not touch",
        {"cart": {"tea": 1, "mug": 1}},
        {"cart": {"tea": 2, "mug": 1}},
        {"cart": {"tea": 1}},
        {"cart": {"tea": 2}},
    ),
    (
        "we removed a product they changed: the later save's deletion",
        {"cart": {"tea": 1, "mug": 1}},
        {"cart": {"mug": 1}},
        {"cart": {"tea": 5, "mug": 1}},
        {"cart": {"mug": 1}},
    ),
    (
        "they removed a product we changed: the later save's change",
        {"cart": {"tea": 1, "mug": 1}},
        {"cart": {"tea": 2, "mug": 1}},
        {"cart": {"mug": 1}},
        {"cart": {"tea": 2, "mug": 1}},
    ),
    (
        "we emptied the cart (a change) while they added to it",
        {"cart": {"tea": 1}},
        {"cart": {}},
        {"cart": {"tea": 1, "mug": 1}},
        {"cart": {"mug": 1}},
    ),
    (
        "we deleted the whole cart while they changed it",
        {"cart": {"tea": 1}, "n": 1},
        {"n": 1},
        {"cart": {"tea": 2}, "n": 1},
        {"n": 1},
    ),
    (
        "they deleted the whole cart while we changed it",
        {"cart": {"tea": 1}},
        {"cart": {"tea": 2}},
        {},
        {"cart": {"tea": 2}},
    ),
    (
        "lists are replaced whole",
        {"seen": [1]},
        {"seen": [1, 2]},
        {"seen": [1, 3]},
        {"seen": [1, 2]},
    ),
    (
        "a dict we replaced by a list replaces theirs whole",
        {"cart": {"tea": 1}},
        {"cart": ["tea"]},
        {"cart": {"tea": 1, "mug": 1}},
        {"cart": ["tea"]},
    ),
    (
        "a nested value's type counts: 1 replaced by 1.0 inside the cart",
        {"cart": {"tea": 1, "mug": 1}},
        {"cart": {"tea": 1.0, "mug": 1}},
        {"cart": {"tea": 1, "mug": 2}},
        {"cart": {"tea": 1.0, "mug": 2}},
    ),
]


@pytest.mark.parametrize(
    ("base", "ours", "theirs", "merged"),
    [case[1:] for case in MERGES],
    ids=[case[0] for case in MERGES],
)
def test_merge_changes(
    base: dict[str, Any], ours: dict[str, Any], theirs: dict[str, Any], merged: dict[str, Any]
) -> None:
    result = merge_changes(base, ours, theirs)
    assert result == merged
    assert types_of(result) == types_of(merged)


def types_of(value: Any) -> Any:
    """The value's shape with every leaf replaced by its type (1 and 1.0 differ)."""
    if isinstance(value, dict):
        return {key: types_of(item) for key, item in value.items()}
    return type(value)


def make_saver(
    clock: FakeClock, policy: ExpiryPolicy | None = None, user_key: str | None = None
) -> tuple[SessionSaver, MemoryStore]:
    store = MemoryStore()
    keys = [derive_fernet_key("k" * 32)]
    codec = PayloadCodec(keys, max_bytes=1 << 16)
    policy = policy or ExpiryPolicy(idle_timeout=3600, absolute_timeout=None, touch_interval=60)
    lifecycle = Lifecycle(store, codec, user_key)
    saver = SessionSaver(store, codec, OwnerKeys(keys), policy, lifecycle, clock, user_key=user_key)
    return saver, store


async def stored(saver: SessionSaver, data: dict[str, Any]) -> Loaded:
    outcome = await saver.save(None, data)
    assert outcome.result is SaveResult.ISSUED and outcome.loaded is not None
    return outcome.loaded


async def content(saver: SessionSaver, store: MemoryStore) -> list[dict[str, Any]]:
    """The content of every row, as a request would load it."""
    return [saver.codec.open(row.id_hash, row.payload)[0] for row in store.rows.values()]


# Two requests, A and B, loaded the same session holding ``base``; A saves first, then B.
# Each action: a dict (the request's data at save time), "clear" (logout: empty data),
# or ("regenerate", dict) (a login). Expected: B's result, and the rows left afterwards.
Action = dict[str, Any] | str | tuple[str, dict[str, Any]]
INTERLEAVINGS: list[
    tuple[str, dict[str, Any], Action, Action, SaveResult, list[dict[str, Any]]]
] = [
    (
        "keys changed by one side each both survive",
        {"n": 0},
        {"n": 0, "a": 1},
        {"n": 0, "b": 1},
        SaveResult.KEPT,
        [{"n": 0, "a": 1, "b": 1}],
    ),
    (
        "two products added to one cart by two requests both survive",
        {"cart": {}},
        {"cart": {"tea": 1}},
        {"cart": {"mug": 1}},
        SaveResult.KEPT,
        [{"cart": {"mug": 1, "tea": 1}}],
    ),
    (
        "a login that lost a race to a cart change carries the nested change",
        {"cart": {"tea": 1}},
        {"cart": {"tea": 1, "mug": 1}},
        ("regenerate", {"cart": {"tea": 1}, "user": "ada"}),
        SaveResult.ISSUED,
        [{"cart": {"tea": 1, "mug": 1}, "user": "ada"}],
    ),
    (
        "a key both changed keeps the later save's value",
        {"n": 0},
        {"n": 1},
        {"n": 1},
        SaveResult.KEPT,
        [{"n": 1}],
    ),
    (
        "a logout is not undone by a slower save",
        {"user": "ada"},
        "clear",
        {"user": "ada", "cart": {"tea": 1}},
        SaveResult.NOT_STORED,
        [],
    ),
    (
        "a login is not undone by a slower save under the old ID",
        {"cart": {}},
        ("regenerate", {"cart": {}, "user": "ada"}),
        {"cart": {"tea": 1}},
        SaveResult.NOT_STORED,
        [{"cart": {}, "user": "ada"}],
    ),
    (
        "a login that lost a race carries the other save's changes to the new ID",
        {"cart": {}},
        {"cart": {"tea": 1}},
        ("regenerate", {"cart": {}, "user": "ada"}),
        SaveResult.ISSUED,
        [{"cart": {"tea": 1}, "user": "ada"}],
    ),
    (
        "a logout after a concurrent change still logs out",
        {"user": "ada"},
        {"user": "ada", "cart": {"tea": 1}},
        "clear",
        SaveResult.ENDED,
        [],
    ),
]


async def act(saver: SessionSaver, loaded: Loaded, action: Action) -> SaveResult:
    if action == "clear":
        return (await saver.save(loaded, {})).result
    if isinstance(action, tuple):
        _, data = action
        return (await saver.save(loaded, data, regenerate=True)).result
    assert isinstance(action, dict)
    return (await saver.save(loaded, action)).result


@pytest.mark.parametrize(
    ("base", "first", "second", "second_result", "rows"),
    [case[1:] for case in INTERLEAVINGS],
    ids=[case[0] for case in INTERLEAVINGS],
)
async def test_two_requests_of_one_session(
    clock: FakeClock,
    base: dict[str, Any],
    first: Action,
    second: Action,
    second_result: SaveResult,
    rows: list[dict[str, Any]],
) -> None:
    saver, store = make_saver(clock)
    loaded = await stored(saver, base)
    clock.advance(1)
    await act(saver, loaded, first)
    assert await act(saver, loaded, second) is second_result
    assert await content(saver, store) == rows


async def test_a_read_only_request_writes_nothing_until_a_touch_is_due(clock: FakeClock) -> None:
    saver, store = make_saver(clock)
    loaded = await stored(saver, {"n": 1})
    statements: list[str] = []
    store.statement_listeners.append(statements.append)
    assert not saver.decide(loaded, {"n": 1}, modified=False).writes
    clock.advance(59)
    assert (await saver.save(loaded, {"n": 1})).result is SaveResult.KEPT
    assert statements == []
    clock.advance(1)
    outcome = await saver.save(loaded, {"n": 1})
    assert outcome.result is SaveResult.KEPT and statements == ["touch"]
    assert outcome.loaded is not None
    assert outcome.loaded.record.expires_at == int(clock()) + 3600


async def test_a_content_write_moves_the_idle_deadline_as_a_touch_does(clock: FakeClock) -> None:
    # At most once per touch interval, so most writes leave the indexed deadline alone;
    # the session is never kept past its idle timeout.
    saver, store = make_saver(clock)
    loaded = await stored(saver, {"n": 0})
    created = int(clock())
    for n in range(1, 4):
        clock.advance(20)
        outcome = await saver.save(loaded, {"n": n})
        assert outcome.result is SaveResult.KEPT and outcome.loaded is not None
        loaded = outcome.loaded
        [row] = store.rows.values()
        expected = (created, created + 3600) if n < 3 else (created + 60, created + 60 + 3600)
        assert (row.touched_at, row.expires_at) == expected
    assert saver.codec.open(row.id_hash, row.payload)[0] == {"n": 3}


async def test_a_worker_keeps_no_plaintext_of_a_row_it_replaced_or_deleted(
    clock: FakeClock,
) -> None:
    saver, store = make_saver(clock)
    kept = saver.codec._kept
    first = await stored(saver, {"n": 0})
    assert first.record.payload in kept  # the next read of this row decrypts nothing
    outcome = await saver.save(first, {"n": 1})
    assert outcome.loaded is not None
    second = outcome.loaded
    assert second.record.payload in kept and first.record.payload not in kept
    renewed = await saver.save(second, {"n": 2}, regenerate=True)  # a new ID
    assert renewed.loaded is not None and second.record.payload not in kept
    assert (await saver.save(renewed.loaded, {})).result is SaveResult.ENDED  # a logout
    assert len(kept) == 0 and store.rows == {}
    expiring = await stored(saver, {"n": 3})
    clock.advance(3601)
    assert await saver.load(expiring.sid) is None
    assert len(kept) == 0


async def test_a_content_write_writes_an_earlier_deadline_at_once(clock: FakeClock) -> None:
    saver, store = make_saver(clock)
    loaded = await stored(saver, {"n": 0})
    clock.advance(10)
    shorter = replace(saver.policy, idle_timeout=600)
    saver.policy = shorter
    outcome = await saver.save(loaded, {"n": 1})
    assert outcome.result is SaveResult.KEPT
    [row] = store.rows.values()
    assert (row.touched_at, row.expires_at) == (int(clock()), int(clock()) + 600)


async def test_a_session_bound_to_a_user_in_place_gets_the_users_idle_timeout_at_once(
    clock: FakeClock,
) -> None:
    # A login where no cookie can be sent (a websocket handler) keeps the ID; before the
    # touch is due, the write must still leave the anonymous visitor's short deadline.
    policy = ExpiryPolicy(3600, None, 60, anonymous_idle_timeout=600)
    saver, store = make_saver(clock, policy, user_key="user")
    loaded = await stored(saver, {"cart": 1})
    assert loaded.record.expires_at == int(clock()) + 600
    clock.advance(30)
    outcome = await saver.save(loaded, {"cart": 1, "user": "ada"}, can_send_cookie=False)
    assert outcome.result is SaveResult.KEPT
    [row] = store.rows.values()
    assert row.user_hash is not None
    assert (row.touched_at, row.expires_at) == (int(clock()), int(clock()) + 3600)
    clock.advance(900)  # past the anonymous timeout
    assert await saver.load(loaded.sid) is not None


async def test_an_expired_session_does_not_load(clock: FakeClock) -> None:
    saver, _ = make_saver(clock)
    loaded = await stored(saver, {"n": 1})
    assert await saver.load(loaded.sid) is not None
    clock.advance(3600)
    assert await saver.load(loaded.sid) is None


async def test_regenerate_keeps_the_absolute_deadline(clock: FakeClock) -> None:
    policy = ExpiryPolicy(idle_timeout=3600, absolute_timeout=7200, touch_interval=60)
    saver, store = make_saver(clock, policy)
    loaded = await stored(saver, {"n": 1})
    clock.advance(5000)
    outcome = await saver.save(loaded, {"n": 1, "user": "ada"}, regenerate=True)
    assert outcome.loaded is not None and outcome.loaded.sid != loaded.sid
    assert outcome.loaded.record.created_at == loaded.record.created_at
    assert outcome.loaded.record.expires_at == loaded.record.created_at + 7200
    assert list(store.rows) == [outcome.loaded.record.id_hash]
