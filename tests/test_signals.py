"""Lifecycle signals (quartsess.signals): every transition sends its signal exactly once,
with the right fields, after the change is committed, on SQLite, PostgreSQL and MariaDB;
plain and coroutine receivers; a receiver that raises fails nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from quart import Quart

from quartsess import Session, signals
from tests.conftest import AppFactory, FakeClock
from tests.support import add_routes, stored_rows
from tests.test_user_sessions import app_of, invoke

Event = tuple[str, dict[str, Any]]
SIGNALS = {
    "created": signals.session_created,
    "user_changed": signals.session_user_changed,
    "ended": signals.session_ended,
    "pruned": signals.sessions_pruned,
}


class Recorder:
    """Records every signal ``app`` sends, in order; coroutine receivers, as an app's
    would be (one plain receiver too, through Quart's ensure_async)."""

    def __init__(self, app: Quart) -> None:
        self.app = app
        self.events: list[Event] = []
        self._receivers: list[tuple[Any, Any]] = []
        for name, signal in SIGNALS.items():
            if name == "pruned":
                receiver = self._plain(name)
            else:
                receiver = self._coroutine(name)
            signal.connect(receiver, sender=app, weak=False)
            self._receivers.append((signal, receiver))

    def _coroutine(self, name: str) -> Any:
        async def receive(sender: Quart, **fields: Any) -> None:
            assert sender is self.app
            await asyncio.sleep(0)  # awaited, not just called
            self.events.append((name, fields))

        return receive

    def _plain(self, name: str) -> Any:
        def receive(sender: Quart, **fields: Any) -> None:
            assert sender is self.app
            self.events.append((name, fields))

        return receive

    def take(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    def disconnect(self) -> None:
        for signal, receiver in self._receivers:
            signal.disconnect(receiver, sender=self.app)


@pytest.fixture
def recorded() -> Iterator[list[Recorder]]:
    made: list[Recorder] = []
    yield made
    for recorder in made:
        recorder.disconnect()


def record(app: Quart, recorded: list[Recorder]) -> Recorder:
    recorder = Recorder(app)
    recorded.append(recorder)
    return recorder


async def handles_of(app: Quart, user: str) -> list[str]:
    ext: Session = app.extensions["quartsess"]
    return [info.handle for info in await ext.user_sessions(user)]


async def test_every_transition_sends_its_signal_once(
    make_app: AppFactory, clock: FakeClock, recorded: list[Recorder]
) -> None:
    app = app_of(make_app, SESSION_MAX_PER_USER=2, SESSION_PRUNE_INTERVAL=0)
    ext: Session = app.extensions["quartsess"]
    events = record(app, recorded)
    async with app.test_app() as test_app:
        laptop = test_app.test_client()
        await laptop.post("/set", json={"cart": {"tea": 1}})  # an anonymous visitor
        [(name, fields)] = events.take()
        assert name == "created" and fields["user"] is None
        laptop_handle = fields["handle"]

        await laptop.post("/set", json={"cart": {"tea": 2}})  # a change of content only
        assert events.take() == []

        await laptop.post("/seed-login/ada")  # a login: a new ID, the same session
        assert events.take() == [
            ("user_changed", {"handle": laptop_handle, "user": "ada", "previous_user": None})
        ]
        assert await handles_of(app, "ada") == [laptop_handle]

        clock.advance(5)
        phone = test_app.test_client()
        await phone.post("/seed-login/ada")  # stored bound from the start: one signal
        [(name, fields)] = events.take()
        assert (name, fields["user"]) == ("created", "ada")
        phone_handle = fields["handle"]

        clock.advance(5)
        tablet = test_app.test_client()
        await tablet.post("/set", json={"cart": {}})
        [(_, fields)] = events.take()
        tablet_handle = fields["handle"]
        await tablet.post("/seed-login/ada")  # a third device: the least recent goes
        assert events.take() == [
            ("user_changed", {"handle": tablet_handle, "user": "ada", "previous_user": None}),
            ("ended", {"handle": laptop_handle, "user": "ada", "reason": "capped"}),
        ]

        await tablet.post("/seed-logout")  # keeps the data: a change of user
        assert events.take() == [
            ("user_changed", {"handle": tablet_handle, "user": None, "previous_user": "ada"})
        ]
        await tablet.post("/clear")  # a logout
        assert events.take() == [
            ("ended", {"handle": tablet_handle, "user": None, "reason": "logout"})
        ]
        await tablet.post("/clear")  # nothing left to end: nothing sent
        assert events.take() == []

        assert await ext.revoke_session(phone_handle)  # no user given: read from the row
        assert events.take() == [
            ("ended", {"handle": phone_handle, "user": "ada", "reason": "revoked"})
        ]
        assert not await ext.revoke_session(phone_handle)
        assert events.take() == []

        await laptop.post("/seed-login/bob")
        await phone.post("/seed-login/bob")
        events.take()
        bobs = await handles_of(app, "bob")
        assert await ext.revoke_user_sessions("bob") == 2
        ended = events.take()
        assert sorted(f["handle"] for _, f in ended) == sorted(bobs)
        assert {(n, f["user"], f["reason"]) for n, f in ended} == {("ended", "bob", "revoked")}
        assert len(ended) == 2

        # Past the idle deadline: the request that finds it ends it, once.
        await laptop.post("/seed-login/carol")
        [(_, fields)] = events.take()
        carol = fields["handle"]
        clock.advance(40 * 24 * 3600)
        assert await (await laptop.get("/whoami")).get_json() == {"user": None}
        assert events.take() == [("ended", {"handle": carol, "user": "carol", "reason": "expired"})]
        assert await (await laptop.get("/whoami")).get_json() == {"user": None}
        assert events.take() == []


async def test_the_pruner_sends_one_signal_per_batch(
    make_app: AppFactory, clock: FakeClock, recorded: list[Recorder]
) -> None:
    app = add_routes(make_app(SESSION_PRUNE_INTERVAL=0))
    events = record(app, recorded)
    async with app.test_app() as test_app:
        for _ in range(3):
            await test_app.test_client().post("/set", json={"a": 1})
        events.take()
        clock.advance(40 * 24 * 3600)
        pruner = app.extensions["quartsess"].pruner_for(app)
        pruner.batch_size = 2
        assert await pruner.prune() == 3
    assert events.take() == [("pruned", {"count": 2}), ("pruned", {"count": 1})]


async def test_a_command_sends_the_signals_of_what_it_did(
    make_app: AppFactory, recorded: list[Recorder]
) -> None:
    app = app_of(make_app)
    events = record(app, recorded)
    async with app.test_app() as test_app:
        await test_app.test_client().post("/seed-login/ada")
        [(_, fields)] = events.take()
        result = await invoke(app, "revoke", "--user", "ada")
        assert result.exit_code == 0, result.output
    assert events.take() == [
        ("ended", {"handle": fields["handle"], "user": "ada", "reason": "revoked"})
    ]


async def test_a_receiver_that_raises_fails_nothing(
    make_app: AppFactory, recorded: list[Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    app = add_routes(make_app())
    seen: list[str] = []

    async def broken(sender: Quart, **fields: Any) -> None:
        raise RuntimeError("the audit log is down")

    def after(sender: Quart, **fields: Any) -> None:
        seen.append(fields["handle"])

    signals.session_created.connect(broken, sender=app, weak=False)
    signals.session_created.connect(after, sender=app, weak=False)
    try:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            response = await client.post("/set", json={"a": 1})
            assert response.status_code == 200
            assert await (await client.get("/get/a")).get_json() == {"value": 1}
            assert len(await stored_rows(app)) == 1
    finally:
        signals.session_created.disconnect(broken, sender=app)
        signals.session_created.disconnect(after, sender=app)
    assert len(seen) == 1  # the receiver after the broken one still ran
    [failure] = [r for r in caplog.records if "receiver" in r.getMessage()]
    assert failure.levelno == logging.ERROR and failure.exc_info is not None
    assert "the audit log is down" in str(failure.exc_info[1])


async def test_signals_are_sent_only_to_the_app_that_sent_them(
    make_app: AppFactory, recorded: list[Recorder]
) -> None:
    first, second = add_routes(make_app()), add_routes(make_app())
    first_events, second_events = record(first, recorded), record(second, recorded)
    async with first.test_app() as test_app:
        await test_app.test_client().post("/set", json={"a": 1})
    assert [name for name, _ in first_events.take()] == ["created"]
    assert second_events.take() == []


async def test_a_signal_is_sent_after_the_commit(
    make_app: AppFactory, recorded: list[Recorder]
) -> None:
    app = add_routes(make_app())
    rows_seen: list[int] = []

    async def receiver(sender: Quart, **fields: Any) -> None:
        rows_seen.append(len(await stored_rows(app)))

    signals.session_created.connect(receiver, sender=app, weak=False)
    try:
        async with app.test_app() as test_app:
            await test_app.test_client().post("/set", json={"a": 1})
    finally:
        signals.session_created.disconnect(receiver, sender=app)
    assert rows_seen == [1]


async def test_two_revocations_at_once_report_each_session_once(
    make_app: AppFactory, recorded: list[Recorder]
) -> None:
    app = app_of(make_app)
    ext: Session = app.extensions["quartsess"]
    events = record(app, recorded)
    async with app.test_app() as test_app:
        for _ in range(5):
            await test_app.test_client().post("/seed-login/ada")
        handles = await handles_of(app, "ada")
        events.take()
        counts = await asyncio.gather(
            ext.revoke_user_sessions("ada"), ext.revoke_user_sessions("ada")
        )
    assert sum(counts) == 5
    ended = events.take()
    assert sorted(fields["handle"] for _, fields in ended) == sorted(handles)
