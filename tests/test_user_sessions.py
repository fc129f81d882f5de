"""User sessions (SESSION_USER_KEY): binding, renewal on every change of user, listing
and revoking, limits, on SQLite, PostgreSQL and MariaDB, through real requests."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pytest
from click.testing import Result
from quart import Quart, Response, jsonify, session
from quart.cli import ScriptInfo

from quartsess import Session, SessionInfo, SessionStoreUnavailable, generate_key
from quartsess.cli import sessions_cli
from quartsess.ids import hash_session_id
from tests.conftest import SECRET, AppFactory, FakeClock
from tests.support import (
    StatementLog,
    add_gated_route,
    add_routes,
    bounded,
    session_cookie,
    start,
    stored_rows,
)

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) QuartsessTestBrowser/7.1"
FROM = {"client": ("203.0.113.9", 41000)}  # request.remote_addr of a test request


def add_user_routes(app: Quart) -> Quart:
    """Login the seeds' way (no regenerate), logout, and the device list."""

    @app.post("/seed-login/<user_id>")
    async def seed_login(user_id: str) -> Response:
        session["user_id"] = int(user_id) if user_id.isdigit() else user_id
        return jsonify(ok=True)

    @app.post("/seed-logout")
    async def seed_logout() -> Response:
        session.pop("user_id", None)
        return jsonify(ok=True)

    @app.get("/devices")
    async def devices() -> Response:
        ext: Session = app.extensions["quartsess"]
        found = await ext.user_sessions(session["user_id"])
        return jsonify(
            handle=session.handle,
            sessions=[
                {"handle": s.handle, "current": s.current, "ua": s.user_agent, "ip": s.ip_address}
                for s in found
            ],
        )

    @app.post("/devices/revoke/<handle>")
    async def revoke(handle: str) -> Response:
        ext: Session = app.extensions["quartsess"]
        return jsonify(gone=await ext.revoke_session(handle, user=session["user_id"]))

    @app.post("/devices/revoke-others")
    async def revoke_others() -> Response:
        ext: Session = app.extensions["quartsess"]
        return jsonify(gone=await ext.revoke_user_sessions(session["user_id"], keep_current=True))

    @app.get("/whoami")
    async def whoami() -> Response:
        return jsonify(user=session.get("user_id"))

    return app


def app_of(make_app: AppFactory, **config: Any) -> Quart:
    return add_user_routes(add_routes(make_app(**config)))


async def test_the_seeds_login_renews_the_id_and_kills_a_planted_one(
    make_app: AppFactory,
) -> None:
    """Fixation the seeds' way: an attacker gets an issued anonymous ID and plants it in
    the victim's browser; the victim logs in with ``session["user_id"] = ...``."""
    app = app_of(make_app)
    async with app.test_app() as test_app:
        attacker = test_app.test_client()
        planted = session_cookie(await attacker.get("/visits"))
        assert planted
        victim = test_app.test_client()
        victim.set_cookie("localhost", "session", planted)
        assert await (await victim.get("/get/visits")).get_json() == {"value": 1}
        renewed = session_cookie(await victim.post("/seed-login/42"))
        assert renewed and renewed != planted
        assert await (await attacker.get("/whoami")).get_json() == {"user": None}
        assert await (await victim.get("/whoami")).get_json() == {"user": 42}
        ids = {row.id_hash for row in await stored_rows(app)}
        assert hash_session_id(planted) not in ids


async def test_every_change_of_user_renews_the_id(make_app: AppFactory) -> None:
    app = app_of(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        anonymous = session_cookie(await client.get("/visits"))
        ada = session_cookie(await client.post("/seed-login/ada"))
        bob = session_cookie(await client.post("/seed-login/bob"))  # one user to another
        out = session_cookie(await client.post("/seed-logout"))  # present to absent
        assert len({anonymous, ada, bob, out}) == 4 and None not in {anonymous, ada, bob, out}
        again = session_cookie(await client.post("/seed-login/bob"))
        assert again is not None
        same = await client.post("/seed-login/bob")  # the same user: no new ID
        assert session_cookie(same) in (None, again)
        assert len(await stored_rows(app)) == 1
        # 123 and "123" are the same user.
        number = session_cookie(await client.post("/seed-login/123"))
        assert session_cookie(await client.post("/set", json={"user_id": "123"})) in (None, number)


async def test_the_row_holds_a_keyed_hash_of_the_user_and_nothing_readable_of_the_client(
    make_app: AppFactory,
) -> None:
    app = app_of(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/seed-login/4242", headers={"User-Agent": BROWSER}, scope_base=FROM)
        [row] = await stored_rows(app)
    plain = {"4242", b"4242".hex(), hashlib.sha256(b"4242").hexdigest()}
    assert row.user_hash is not None and len(row.user_hash) == 64
    assert row.user_hash not in plain
    assert row.client is not None
    raw = b"".join(
        value if isinstance(value, bytes) else str(value).encode()
        for value in (row.payload, row.client, row.handle, row.user_hash)
    )
    for secret in (b"QuartsessTestBrowser", b"203.0.113.9", b"4242"):
        assert secret not in raw


async def test_only_sessions_bound_to_a_user_record_their_client(
    make_app: AppFactory, clock: FakeClock
) -> None:
    """Only a user's sessions are ever listed: an anonymous one records nothing of its
    client, a login records it (from the request that logged in) and a logout clears it."""
    app = app_of(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.get("/visits", headers={"User-Agent": BROWSER}, scope_base=FROM)
        [anonymous] = await stored_rows(app)
        assert anonymous.client is None
        await client.post("/seed-login/ada", headers={"User-Agent": BROWSER}, scope_base=FROM)
        [bound] = await stored_rows(app)
        assert bound.client is not None
        clock.advance(3600)  # a touch is due: the bound session's client is written again
        await client.get("/get/visits", headers={"User-Agent": "Other/1"}, scope_base=FROM)
        [touched] = await stored_rows(app)
        assert touched.touched_at > bound.touched_at and touched.client is not None
        [listed] = await app.extensions["quartsess"].user_sessions("ada")
        assert (listed.user_agent, listed.ip_address) == ("Other/1", "203.0.113.9")
        await client.post("/seed-logout", headers={"User-Agent": BROWSER}, scope_base=FROM)
        [logged_out] = await stored_rows(app)
        assert logged_out.user_hash is None and logged_out.client is None
        assert await (await client.get("/get/visits")).get_json() == {"value": 1}


async def test_with_record_client_off_a_write_clears_what_was_recorded(
    make_app: AppFactory,
) -> None:
    recording = app_of(make_app)
    async with recording.test_app() as test_app:
        laptop = test_app.test_client()
        cookie = session_cookie(
            await laptop.post("/seed-login/ada", headers={"User-Agent": BROWSER}, scope_base=FROM)
        )
        assert cookie is not None
        [row] = await stored_rows(recording)
        assert row.client is not None
    private = app_of(make_app, SESSION_RECORD_CLIENT=False)
    async with private.test_app() as test_app:
        same = test_app.test_client()
        same.set_cookie("localhost", "session", cookie)
        await same.get("/visits", headers={"User-Agent": BROWSER}, scope_base=FROM)
        [written] = await stored_rows(private)
        assert written.version > row.version and written.client is None
        [listed] = await private.extensions["quartsess"].user_sessions("ada")
        assert (listed.user_agent, listed.ip_address) == (None, None)


async def test_a_user_lists_their_devices_and_logs_one_out(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = app_of(make_app)
    async with app.test_app() as test_app:
        laptop, phone, stranger = (test_app.test_client() for _ in range(3))
        await laptop.post("/seed-login/ada", headers={"User-Agent": BROWSER}, scope_base=FROM)
        clock.advance(5)
        await phone.post("/seed-login/ada", headers={"User-Agent": "PhoneBrowser/2"})
        await stranger.post("/seed-login/eve")
        listed = await (await phone.get("/devices")).get_json()
        assert [s["current"] for s in listed["sessions"]] == [True, False]  # newest first
        assert [s["ua"] for s in listed["sessions"]] == ["PhoneBrowser/2", BROWSER]
        assert [s["ip"] for s in listed["sessions"]][1] == "203.0.113.9"
        laptop_handle = listed["sessions"][1]["handle"]
        # Another user cannot end ada's session with its handle.
        assert await (await stranger.post(f"/devices/revoke/{laptop_handle}")).get_json() == {
            "gone": False
        }
        assert await (await phone.post(f"/devices/revoke/{laptop_handle}")).get_json() == {
            "gone": True
        }
        assert await (await laptop.get("/whoami")).get_json() == {"user": None}
        assert len((await (await phone.get("/devices")).get_json())["sessions"]) == 1


async def test_log_out_all_other_devices_and_everywhere(make_app: AppFactory) -> None:
    app = app_of(make_app)
    async with app.test_app() as test_app:
        devices = [test_app.test_client() for _ in range(3)]
        for device in devices:
            await device.post("/seed-login/ada")
        assert await (await devices[0].post("/devices/revoke-others")).get_json() == {"gone": 2}
        assert (await (await devices[1].get("/whoami")).get_json())["user"] is None
        assert (await (await devices[0].get("/whoami")).get_json())["user"] == "ada"
        ext: Session = app.extensions["quartsess"]
        assert await ext.revoke_user_sessions("ada") == 1
        assert (await (await devices[0].get("/whoami")).get_json())["user"] is None
        assert await ext.user_sessions("ada") == []


async def test_a_revoked_sessions_slow_request_does_not_bring_it_back(
    make_app: AppFactory,
) -> None:
    app = app_of(make_app)
    gates = add_gated_route(app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/seed-login/ada")
        entered, gate = gates["b"]
        slow = await start(client, "/gated/b/cart/3", entered)
        ext: Session = app.extensions["quartsess"]
        assert await ext.revoke_user_sessions("ada") == 1
        gate.set()
        assert (await bounded(slow)).status_code == 200
        assert await stored_rows(app) == []


async def test_revocation_reaches_another_worker(
    db_url: str, table_name: str, clock: FakeClock
) -> None:
    """Two apps on one database, as two hypercorn workers are: a session revoked in one
    is logged out on its next request to the other."""

    def worker() -> Quart:
        app = Quart(__name__)
        app.config.update(
            SECRET_KEY=SECRET, SESSION_DB_URL=db_url, SESSION_TABLE=table_name, TESTING=True
        )
        Session(app, clock=clock)
        return add_user_routes(add_routes(app))

    first, second = worker(), worker()
    async with first.test_app() as one, second.test_app() as two:
        browser = one.test_client()
        await browser.post("/seed-login/ada")
        [listed] = await first.extensions["quartsess"].user_sessions("ada", first)
        assert await second.extensions["quartsess"].revoke_session(listed.handle, app=second)
        browser.app = second
        assert (await (await browser.get("/whoami")).get_json())["user"] is None
        assert two is not None


async def test_at_most_max_per_user_sessions_the_least_recently_active_go(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = app_of(make_app, SESSION_MAX_PER_USER=3)
    async with app.test_app() as test_app:
        devices = [test_app.test_client() for _ in range(3)]
        for device in devices:
            await device.post("/seed-login/ada")
            clock.advance(100)
        await devices[0].get("/visits")  # the oldest login is the most recently active now
        clock.advance(100)
        fourth = test_app.test_client()
        await fourth.post("/seed-login/ada")
        users = [(await (await d.get("/whoami")).get_json())["user"] for d in devices]
        assert users == ["ada", None, "ada"]  # the least recently active went
        assert len(await app.extensions["quartsess"].user_sessions("ada")) == 3


async def test_a_login_whose_cap_cannot_be_enforced_still_logs_in(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The store fails between the login's write and the cap's: the login is stored
    (and the old row gone), so the response still carries the new cookie; the cap waits
    for the next login, and the log says so."""
    app = app_of(make_app, SESSION_MAX_PER_USER=3)
    async with app.test_app() as test_app:
        device = test_app.test_client()
        await device.get("/visits")
        users = app.extensions["quartsess"].parts_for(app).users

        async def outage(*args: Any, **kwargs: Any) -> None:
            raise SessionStoreUnavailable("the database went away")

        monkeypatch.setattr(users, "enforce_limit", outage)
        with caplog.at_level(logging.WARNING, logger="quartsess"):
            response = await device.post("/seed-login/ada")
        assert response.status_code == 200
        assert "Set-Cookie" in response.headers
        assert (await (await device.get("/whoami")).get_json())["user"] == "ada"
        assert any("SESSION_MAX_PER_USER not enforced" in r.message for r in caplog.records)


async def test_anonymous_sessions_have_their_own_idle_timeout(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = app_of(make_app, SESSION_ANONYMOUS_IDLE_TIMEOUT=600, SESSION_IDLE_TIMEOUT=86400)
    async with app.test_app() as test_app:
        visitor, member = test_app.test_client(), test_app.test_client()
        await visitor.get("/visits")
        await member.post("/seed-login/ada")
        clock.advance(601)
        assert await (await visitor.get("/get/visits")).get_json() == {"value": None}
        assert (await (await member.get("/whoami")).get_json())["user"] == "ada"


async def test_binding_costs_no_extra_statement(make_app: AppFactory, clock: FakeClock) -> None:
    app = app_of(make_app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.post("/seed-login/ada")
        with StatementLog(app) as log:
            await client.get("/whoami")  # read-only
            await client.get("/visits")  # a content change
            clock.advance(61)
            await client.get("/whoami")  # a due touch
        assert log.statements == ["load", "load", "update", "load", "touch"]


async def test_sessions_bound_before_a_key_rotation_are_found_and_rotate_keys_rekeys_them(
    make_app: AppFactory,
) -> None:
    old, new = generate_key(), generate_key()
    before = app_of(make_app, SESSION_ENCRYPTION_KEYS=[old])
    async with before.test_app() as test_app:
        await test_app.test_client().post("/seed-login/ada")
        [row] = await stored_rows(before)
    rotated = app_of(make_app, SESSION_ENCRYPTION_KEYS=[new, old])
    async with rotated.test_app():
        assert len(await rotated.extensions["quartsess"].user_sessions("ada", rotated)) == 1
    result = await invoke(rotated, "rotate-keys")
    assert result.exit_code == 0, result.output
    only_new = app_of(make_app, SESSION_ENCRYPTION_KEYS=[new])
    async with only_new.test_app():
        [after] = await stored_rows(only_new)
        assert after.user_hash != row.user_hash and after.handle == row.handle
        [listed] = await only_new.extensions["quartsess"].user_sessions("ada", only_new)
        assert listed.user_agent is not None  # the client record was rotated too


async def test_the_cli_lists_and_revokes_a_users_sessions(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = app_of(make_app)
    async with app.test_app() as test_app:
        for agent in ("First/1", "Second/2"):
            clock.advance(5)
            await test_app.test_client().post(
                "/seed-login/ada", headers={"User-Agent": agent}, scope_base=FROM
            )
        [handle, _] = [s.handle for s in await app.extensions["quartsess"].user_sessions("ada")]
    listed = await invoke(app, "list", "--user", "ada")
    assert listed.exit_code == 0, listed.output
    assert "2 live sessions of user 'ada'" in listed.output
    assert "Second/2" in listed.output and "203.0.113.9" in listed.output
    one = await invoke(app, "revoke", "--handle", handle, "--user", "ada")
    assert (one.exit_code, one.output.strip()) == (0, "Revoked 1 session.")
    missing = await invoke(app, "revoke", "--handle", handle)
    assert missing.exit_code == 1 and "Revoked 0 sessions." in missing.output
    rest = await invoke(app, "revoke", "--user", "ada")
    assert rest.output.strip() == "Revoked 1 session."
    assert (await invoke(app, "revoke")).exit_code == 2  # a usage error names the options


async def test_binding_off_binds_nothing(make_app: AppFactory) -> None:
    app = app_of(make_app, SESSION_USER_KEY=None)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        first = session_cookie(await client.post("/seed-login/ada"))
        renewed = session_cookie(await client.post("/seed-login/bob"))
        assert renewed in (None, first)  # no renewal
        assert first and await app.extensions["quartsess"].user_sessions("bob") == []
        [row] = await stored_rows(app)
        assert row.user_hash is None and row.handle


async def test_a_session_that_serves_no_app_says_so(make_app: AppFactory) -> None:
    """``Session()`` never given an app: every call that needs one says there is none
    (not "pass the app: this Session serves several apps"), and so does an app that
    this Session was not given, while one it serves is found without being named."""
    lonely = Session()
    for call in (
        lonely.user_sessions("42"),
        lonely.revoke_session("h"),
        lonely.revoke_user_sessions("42"),
        lonely.prune(),
    ):
        with pytest.raises(RuntimeError, match="this Session serves no app yet"):
            await call
    with pytest.raises(RuntimeError, match="serves no app yet"):
        lonely.parts_for()
    with pytest.raises(RuntimeError, match="init_app"):
        lonely.parts_for(Quart(__name__))
    app = make_app()
    assert app.extensions["quartsess"].parts_for() is app.extensions["quartsess"].parts_for(app)


def test_session_info_is_frozen() -> None:
    assert SessionInfo.__dataclass_params__.frozen  # type: ignore[attr-defined]


async def invoke(app: Quart, *args: str) -> Result:
    import asyncio

    runner = app.test_cli_runner()
    info = ScriptInfo(create_app=lambda: app)
    return await asyncio.to_thread(runner.invoke, sessions_cli, list(args), obj=info)
