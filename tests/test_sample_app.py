"""Route tests for the sample app (app/) through Quart's test client, on a fresh SQLite file."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import logging
import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypercorn.config import Config as HypercornConfig
from hypercorn.logging import Logger as HypercornLogger
from quart import Quart
from quart import typing as quart_typing
from quart.testing import QuartClient, WebsocketResponseError
from quart.wrappers import Response

import app as app_package
import quartsess
from app import auth as app_auth
from app import create_app
from app.logs import configure_logging
from app.throttle import Limit, LoginThrottle, client_network
from tests.conftest import FakeClock

SECRET = "test-secret-key-for-the-sample-app"
COOKIE = "quartsess_demo"
CSRF_COOKIE = "quartsess_demo_csrf"
TOKEN_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
TOKEN_META = re.compile(r'name="csrf-token" content="([^"]+)"')
THROTTLE_KEY = b"k" * 32


def build_app(tmp_path: Path, **config: Any) -> Quart:
    settings: dict[str, Any] = {
        "TESTING": True,
        "SECRET_KEY": SECRET,
        "SESSION_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'sessions.sqlite3'}",
        "INSTANCE_PATH": str(tmp_path / "instance"),
    }
    settings.update(config)
    return create_app(settings)


APP_VARIABLES = (
    "QUARTSESS_SECRET_KEY",
    "QUARTSESS_DB_URL",
    "QUARTSESS_TABLE",
    "QUARTSESS_COOKIE_SECURE",
    "QUARTSESS_INSTANCE_PATH",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's own environment variables must not leak in from the test runner."""
    for variable in APP_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[QuartClient]:
    app = build_app(tmp_path)
    async with app.test_app() as test_app:
        yield new_client(test_app)


def stored_row_count(tmp_path: Path) -> int:
    """Rows in the app's sessions table (``build_app``'s SQLite file)."""
    with sqlite3.connect(tmp_path / "sessions.sqlite3") as connection:
        [(count,)] = connection.execute("SELECT COUNT(*) FROM quart_sessions").fetchall()
    connection.close()
    return int(count)


def new_client(test_app: quart_typing.TestAppProtocol) -> QuartClient:
    client = test_app.test_client()
    assert isinstance(client, QuartClient)
    return client


async def text_of(response: Response) -> str:
    return await response.get_data(as_text=True)


def session_cookie(client: QuartClient) -> str | None:
    assert client.cookie_jar is not None
    for cookie in client.cookie_jar:
        if cookie.name == COOKIE:
            return cookie.value
    return None


def set_cookies(response: Response) -> list[str]:
    return response.headers.getlist("Set-Cookie")


def cookies_named(response: Response, name: str) -> list[str]:
    return [cookie for cookie in set_cookies(response) if cookie.startswith(f"{name}=")]


async def form_token(client: QuartClient, path: str) -> str:
    """Load a page with a form and return its CSRF token."""
    response = await client.get(path)
    assert response.status_code == 200
    match = TOKEN_FIELD.search(await text_of(response))
    assert match is not None, f"no csrf_token field on {path}"
    return match.group(1)


async def log_in(
    client: QuartClient,
    username: str = "alice",
    password: str = "wonderland",  # noqa: S107
) -> Response:
    token = await form_token(client, "/login")
    return await client.post(
        "/login", form={"username": username, "password": password, "csrf_token": token}
    )


async def test_home_logged_out_is_read_only(client: QuartClient) -> None:
    response = await client.get("/")
    body = await text_of(response)
    assert response.status_code == 200
    assert '<dd id="login-state">No</dd>' in body
    assert '<dd id="visit-count">0</dd>' in body
    assert set_cookies(response) == []  # looking at the home page stores nothing


async def test_pages_send_security_headers(client: QuartClient) -> None:
    response = await client.get("/")
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "path", ["/", "/login", "/cart/", "/dashboard", "/visits", "/nowhere", "/login?next=/cart/"]
)
async def test_pages_are_never_stored_by_a_cache(client: QuartClient, path: str) -> None:
    response = await client.get(path)
    assert response.cache_control.no_store, path
    assert "Strict-Transport-Security" not in response.headers  # plain http here


async def test_logged_in_pages_are_never_stored_by_a_cache(client: QuartClient) -> None:
    await log_in(client)
    await cart_post(client, "add", product_id="tea")
    for path in ("/dashboard", "/cart/", "/"):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.cache_control.no_store, path


async def test_static_files_may_be_cached(client: QuartClient) -> None:
    response = await client.get("/static/style.css")
    assert not response.cache_control.no_store


async def test_logout_clears_site_data(client: QuartClient) -> None:
    await log_in(client)
    token = await form_token(client, "/dashboard")
    response = await client.post("/logout", form={"csrf_token": token})
    assert response.headers["Clear-Site-Data"] == '"cookies", "storage"'


async def test_https_deployment_sends_hsts_and_host_prefixed_cookies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUARTSESS_COOKIE_SECURE", "1")
    app = build_app(tmp_path)
    async with app.test_app() as test_app:
        client = new_client(test_app)
        login = await client.get("/login")
        assert login.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
        [csrf] = cookies_named(login, f"__Host-{CSRF_COOKIE}")
        visits = await client.get("/visits")
        [cookie] = cookies_named(visits, f"__Host-{COOKIE}")
    for header in (csrf, cookie):
        assert "Secure" in header and "Path=/" in header and "Domain" not in header


async def test_static_css_is_served(client: QuartClient) -> None:
    response = await client.get("/static/style.css")
    assert response.status_code == 200
    assert "--accent" in await text_of(response)


async def test_login_page_shows_demo_credentials(client: QuartClient) -> None:
    response = await client.get("/login")
    body = await text_of(response)
    assert response.status_code == 200
    for text in ("alice", "wonderland", "bob", "builder", 'name="csrf_token"'):
        assert text in body
    assert "scrypt" not in body.split("</table>")[0]  # hashes never reach the page


async def test_login_regenerates_the_session_and_redirects(client: QuartClient) -> None:
    await client.get("/visits")  # a session stored before login
    token = await form_token(client, "/login")
    before = session_cookie(client)
    assert before is not None
    response = await client.post(
        "/login", form={"username": "alice", "password": "wonderland", "csrf_token": token}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/dashboard"
    after = session_cookie(client)
    assert after is not None and after != before

    dashboard = await client.get("/dashboard")
    body = await text_of(dashboard)
    assert dashboard.status_code == 200
    assert "Hello, Alice Liddell" in body
    assert "Welcome, Alice Liddell!" in body  # the flash message, shown once
    assert "Welcome, Alice Liddell!" not in await text_of(await client.get("/dashboard"))


async def test_old_session_id_is_dead_after_login(client: QuartClient) -> None:
    await client.get("/visits")
    before = session_cookie(client)
    assert before is not None
    await log_in(client)
    client.set_cookie("localhost", COOKIE, before)  # replay the pre-login ID
    response = await client.get("/dashboard")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


async def test_bad_password_shows_error_and_changes_nothing(client: QuartClient) -> None:
    token = await form_token(client, "/login")
    before = session_cookie(client)
    response = await client.post(
        "/login", form={"username": "alice", "password": "nope", "csrf_token": token}
    )
    body = await text_of(response)
    assert response.status_code == 200
    assert "Unknown username or wrong password." in body
    assert 'value="alice"' in body  # the username is kept in the form, the password not
    assert set_cookies(response) == []
    assert session_cookie(client) == before
    assert (await client.get("/dashboard")).status_code == 302


async def test_unknown_user_gets_the_same_error(client: QuartClient) -> None:
    response = await log_in(client, username="mallory", password="wonderland")
    assert "Unknown username or wrong password." in await text_of(response)
    assert set_cookies(response) == []


async def test_login_without_csrf_token_is_refused(client: QuartClient) -> None:
    await form_token(client, "/login")
    response = await client.post("/login", form={"username": "alice", "password": "wonderland"})
    assert response.status_code == 400
    assert "security token" in await text_of(response)
    assert (await client.get("/dashboard")).status_code == 302


async def test_login_with_wrong_csrf_token_is_refused(client: QuartClient) -> None:
    token = await form_token(client, "/login")
    response = await client.post(
        "/login",
        form={"username": "alice", "password": "wonderland", "csrf_token": token[:-2] + "xx"},
    )
    assert response.status_code == 400


async def test_post_without_any_session_is_refused(client: QuartClient) -> None:
    response = await client.post(
        "/login", form={"username": "alice", "password": "wonderland", "csrf_token": "guess"}
    )
    assert response.status_code == 400
    assert set_cookies(response) == []


async def test_csrf_token_is_accepted_from_a_header(client: QuartClient) -> None:
    token = await form_token(client, "/cart/")
    response = await client.post(
        "/cart/add", form={"product_id": "tea"}, headers={"X-CSRF-Token": token}
    )
    assert response.status_code == 302


async def test_csrf_token_changes_at_login(client: QuartClient) -> None:
    before = await form_token(client, "/login")
    await log_in(client)
    after = await form_token(client, "/cart/")
    assert after != before


# -- viewing a page stores nothing; CSRF without a stored session ----------------------

PAGES = (
    "/",
    "/?logged_out=1",
    "/login",
    "/login?next=/cart/",
    "/login?next=/%0Bevil",
    "/cart/",
    "/dashboard",
    "/nowhere",
    "/logout",
    "/static/style.css",
)


async def test_page_views_store_no_session_only_the_visit_counter_does(tmp_path: Path) -> None:
    app = build_app(tmp_path)
    async with app.test_app() as test_app:
        for _ in range(20):
            for path in PAGES:
                client = new_client(test_app)  # a new visitor each time, without cookies
                response = await client.get(path)
                assert response.status_code in {200, 302, 404, 405}, path
                assert cookies_named(response, COOKIE) == [], path
        assert stored_row_count(tmp_path) == 0

        response = await new_client(test_app).get("/visits")
        assert len(cookies_named(response, COOKIE)) == 1
    assert stored_row_count(tmp_path) == 1


async def test_login_works_on_a_first_visit_without_a_stored_session(
    tmp_path: Path,
) -> None:
    app = build_app(tmp_path)
    async with app.test_app() as test_app:
        client = new_client(test_app)
        token = await form_token(client, "/login")
        assert session_cookie(client) is None
        assert stored_row_count(tmp_path) == 0
        response = await client.post(
            "/login", form={"username": "alice", "password": "wonderland", "csrf_token": token}
        )
        assert response.status_code == 302
        assert (await client.get("/dashboard")).status_code == 200
    assert stored_row_count(tmp_path) == 1


async def test_csrf_cookie_is_http_only_and_set_once(client: QuartClient) -> None:
    first = await client.get("/login")
    [cookie] = cookies_named(first, CSRF_COOKIE)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert first.headers["Cache-Control"] == "no-store"
    second = await client.get("/cart/")
    assert set_cookies(second) == []  # the browser's nonce is kept


async def test_csrf_token_of_another_browser_is_refused(tmp_path: Path) -> None:
    app = build_app(tmp_path)
    async with app.test_app() as test_app:
        attacker, victim = new_client(test_app), new_client(test_app)
        token = await form_token(attacker, "/login")
        await form_token(victim, "/login")
        response = await victim.post(
            "/login", form={"username": "alice", "password": "wonderland", "csrf_token": token}
        )
        assert response.status_code == 400
        assert session_cookie(victim) is None


async def test_csrf_token_needs_its_cookie(client: QuartClient) -> None:
    token = await form_token(client, "/login")
    client.delete_cookie("localhost", CSRF_COOKIE)
    response = await client.post(
        "/login", form={"username": "alice", "password": "wonderland", "csrf_token": token}
    )
    assert response.status_code == 400


async def test_csrf_nonce_is_not_accepted_as_its_own_token(client: QuartClient) -> None:
    await form_token(client, "/login")
    assert client.cookie_jar is not None
    [nonce] = [cookie.value for cookie in client.cookie_jar if cookie.name == CSRF_COOKIE]
    response = await client.post(
        "/login", form={"username": "alice", "password": "wonderland", "csrf_token": nonce}
    )
    assert response.status_code == 400


async def test_dashboard_redirects_logged_out_visitors_to_login(client: QuartClient) -> None:
    response = await client.get("/dashboard")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/dashboard"
    login = await client.get(response.headers["Location"])
    body = await text_of(login)
    assert "Please log in to see that page." in body
    assert 'name="next" value="/dashboard"' in body


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/cart/", "/cart/"),
        ("//evil.example/", "/dashboard"),
        ("https://evil.example/", "/dashboard"),
        ("/\\evil.example", "/dashboard"),
        ("", "/dashboard"),
        ("/\x0bcart", "/dashboard"),
        ("/\x00", "/dashboard"),
        ("/\x0c", "/dashboard"),
        ("/cart/\r\nSet-Cookie: x=y", "/dashboard"),
        ("/\n/evil.example", "/dashboard"),
        ("/\t/evil.example", "/dashboard"),
        ("/\x7f", "/dashboard"),
        ("/\x85", "/dashboard"),
    ],
)
async def test_login_continues_only_to_local_pages(
    client: QuartClient, target: str, expected: str
) -> None:
    token = await form_token(client, "/login")
    response = await client.post(
        "/login",
        form={"username": "bob", "password": "builder", "csrf_token": token, "next": target},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == expected
    assert (await client.get("/dashboard")).status_code == 200  # logged in, whatever next was


async def test_login_page_sends_logged_in_users_to_dashboard(client: QuartClient) -> None:
    await log_in(client)
    response = await client.get("/login")
    assert response.status_code == 302
    assert response.headers["Location"] == "/dashboard"


async def test_home_shows_the_logged_in_user(client: QuartClient) -> None:
    await log_in(client, "bob", "builder")
    body = await text_of(await client.get("/"))
    assert "Yes, as <strong>Bob the Builder</strong>" in body
    assert "Log out bob" in body


async def test_logout_deletes_session_and_cookie(client: QuartClient) -> None:
    await log_in(client)
    logged_in = session_cookie(client)
    assert logged_in is not None
    token = await form_token(client, "/dashboard")
    response = await client.post("/logout", form={"csrf_token": token})
    assert response.status_code == 302
    assert response.headers["Location"] == "/?logged_out=1"
    [deletion] = set_cookies(response)
    assert deletion.startswith(f"{COOKIE}=;") and "Expires=Thu, 01 Jan 1970" in deletion
    assert session_cookie(client) is None

    home = await text_of(await client.get("/?logged_out=1"))
    assert "You have been logged out." in home
    client.set_cookie("localhost", COOKIE, logged_in)  # the old ID is dead server-side
    assert (await client.get("/dashboard")).status_code == 302


async def test_logout_needs_post_and_csrf_token(client: QuartClient) -> None:
    await log_in(client)
    assert (await client.get("/logout")).status_code == 405
    assert (await client.post("/logout")).status_code == 400
    assert (await client.post("/logout", form={"csrf_token": "wrong"})).status_code == 400
    assert (await client.get("/dashboard")).status_code == 200


async def test_visits_counter_rises_on_each_view(client: QuartClient) -> None:
    for expected in (1, 2, 3):
        body = await text_of(await client.get("/visits"))
        assert f'<output id="visits" aria-live="polite">{expected}</output>' in body
    assert '<dd id="visit-count">3</dd>' in await text_of(await client.get("/"))


async def test_visits_survive_login(client: QuartClient) -> None:
    await client.get("/visits")
    await client.get("/visits")
    await log_in(client)
    assert '<dd id="visit-count">2</dd>' in await text_of(await client.get("/"))


async def test_session_cookie_flags(client: QuartClient) -> None:
    response = await client.get("/visits")
    [cookie] = cookies_named(response, COOKIE)
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain http on loopback unless QUARTSESS_COOKIE_SECURE=1
    assert "Cookie" in response.headers["Vary"]


async def test_secure_cookie_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUARTSESS_COOKIE_SECURE", "1")
    app = build_app(tmp_path)
    async with app.test_app() as test_app:
        response = await new_client(test_app).get("/visits")
    cookies = set_cookies(response)
    assert len(cookies) == 2  # the session's and the CSRF nonce's
    assert all("Secure" in cookie for cookie in cookies)


# -- failed-login throttle --------------------------------------------------------------


@pytest.fixture
def hash_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every password hash the app checks (the real check still runs)."""
    runs: list[str] = []
    real = app_auth.check_password_hash

    def counting(stored: str, password: str) -> bool:
        runs.append(password)
        return real(stored, password)

    monkeypatch.setattr(app_auth, "check_password_hash", counting)
    return runs


def throttled_app(tmp_path: Path, clock: FakeClock, *, account: int, client: int) -> Quart:
    return build_app(
        tmp_path,
        LOGIN_LIMIT_PER_ACCOUNT=Limit(failures=account, window=60),
        LOGIN_LIMIT_PER_CLIENT=Limit(failures=client, window=60),
        LOGIN_THROTTLE_CLOCK=clock,
    )


async def attempt(client: QuartClient, username: str, password: str) -> Response:
    token = await form_token(client, "/login")
    return await client.post(
        "/login", form={"username": username, "password": password, "csrf_token": token}
    )


async def test_failed_logins_per_account_are_limited(
    tmp_path: Path, clock: FakeClock, hash_runs: list[str]
) -> None:
    app = throttled_app(tmp_path, clock, account=3, client=100)
    async with app.test_app() as test_app:
        client = new_client(test_app)
        for guess in ("one", "two", "three"):
            assert (await attempt(client, "alice", guess)).status_code == 200
        assert hash_runs == ["one", "two", "three"]

        clock.advance(20)
        refused = await attempt(client, "alice", "four")
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "40"
        assert "Too many failed logins. Try again in 1 minute." in await text_of(refused)
        right = await attempt(client, "ALICE", "wonderland")  # usernames: any case
        assert right.status_code == 429  # the right password is refused too
        assert hash_runs == ["one", "two", "three"]  # no hash ran for refused attempts
        assert (await client.get("/dashboard")).status_code == 302
        other = await attempt(new_client(test_app), "bob", "builder")
        assert other.status_code == 302  # another account is not held back

        clock.advance(41)  # the window is over
        assert (await attempt(client, "alice", "wonderland")).status_code == 302
        assert (await client.get("/dashboard")).status_code == 200


async def test_failed_logins_per_client_address_are_limited(
    tmp_path: Path, clock: FakeClock, hash_runs: list[str]
) -> None:
    app = throttled_app(tmp_path, clock, account=100, client=3)
    async with app.test_app() as test_app:
        client = new_client(test_app)
        for name in ("mallory", "trudy", "eve"):  # one guess each, from one address
            assert (await attempt(client, name, "guess")).status_code == 200
        refused = await attempt(client, "alice", "wonderland")
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "60"
        assert len(hash_runs) == 3


async def test_a_successful_login_does_not_count(tmp_path: Path, clock: FakeClock) -> None:
    app = throttled_app(tmp_path, clock, account=3, client=3)
    async with app.test_app() as test_app:
        for _ in range(5):
            response = await attempt(new_client(test_app), "alice", "wonderland")
            assert response.status_code == 302
        client = new_client(test_app)
        statuses = [(await attempt(client, "alice", "nope")).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]


async def test_parallel_guesses_run_no_more_hashes_than_the_limit(
    tmp_path: Path, clock: FakeClock, hash_runs: list[str]
) -> None:
    app = throttled_app(tmp_path, clock, account=5, client=100)
    async with app.test_app() as test_app:
        guessers = [new_client(test_app) for _ in range(12)]
        tokens = [await form_token(guesser, "/login") for guesser in guessers]
        responses = await asyncio.gather(
            *(
                guesser.post(
                    "/login",
                    form={"username": "alice", "password": f"guess{n}", "csrf_token": token},
                )
                for n, (guesser, token) in enumerate(zip(guessers, tokens, strict=True))
            )
        )
    assert sorted(response.status_code for response in responses) == [200] * 5 + [429] * 7
    assert len(hash_runs) == 5


async def test_the_limit_holds_across_workers(tmp_path: Path, clock: FakeClock) -> None:
    """Two apps on one instance folder, as hypercorn's workers are: one counter."""
    first = throttled_app(tmp_path, clock, account=2, client=100)
    second = throttled_app(tmp_path, clock, account=2, client=100)
    async with first.test_app() as one, second.test_app() as other:
        assert (await attempt(new_client(one), "bob", "a")).status_code == 200
        assert (await attempt(new_client(other), "bob", "b")).status_code == 200
        assert (await attempt(new_client(one), "bob", "builder")).status_code == 429
        assert (await attempt(new_client(other), "bob", "builder")).status_code == 429


def first_attempts_at_once(throttles: list[LoginThrottle]) -> list[BaseException]:
    """Each throttle's first attempt, in threads released together; what they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(throttles))

    def first_attempt(throttle: LoginThrottle) -> None:
        start.wait(timeout=10)
        try:
            asyncio.run(throttle.reserve("alice", "192.0.2.1"))
        except BaseException as error:  # collected; the callers' assertions name them
            errors.append(error)

    threads = [threading.Thread(target=first_attempt, args=(t,)) for t in throttles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "hung"
    return errors


def test_workers_that_make_the_throttle_file_at_once_all_count_their_attempt(
    tmp_path: Path,
) -> None:
    """Two workers' first logins on a new file: a bare ``PRAGMA journal_mode=WAL`` got
    "database is locked" at once (no busy timeout) in about one pair in ten, a 500."""
    for pair in range(100):
        path = tmp_path / f"throttle-{pair}.sqlite3"
        workers = [
            LoginThrottle(
                path, key=THROTTLE_KEY, per_account=Limit(5, 60), per_client=Limit(100, 60)
            )
            for _ in range(2)
        ]
        errors = first_attempts_at_once(workers)
        assert errors == [], f"pair {pair}"
        connection = sqlite3.connect(path)
        try:
            [(attempts,)] = connection.execute("SELECT max(attempts) FROM login_attempts")
        finally:
            connection.close()
        assert attempts == len(workers)  # both counted, on one row


def test_the_sample_app_uses_only_quartsess_public_api() -> None:
    """The app is meant to be copied: what it imports of quartsess must stay stable."""
    imported: list[str] = []
    for source in sorted((Path(app_package.__file__).parent).glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("quartsess"):
                imported += [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                imported += [a.name for a in node.names if a.name.startswith("quartsess")]
    public = {f"quartsess.{name}" for name in quartsess.__all__}
    assert imported and set(imported) <= public, sorted(set(imported) - public)


async def test_failed_logins_are_logged_without_forged_lines(
    client: QuartClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app")
    forged = "mallory\n[2026-01-01 00:00:00 +0000] [1] [INFO] app.auth: login ok" + "x" * 500
    await attempt(client, forged, "guess")
    [record] = [r for r in caplog.records if r.name == "app.auth"]
    message = record.getMessage()
    assert record.levelname == "INFO" and message.startswith("failed login for 'mallory\\n")
    assert "\n" not in message and len(message) < 120
    assert "guess" not in message  # never the password


HYPERCORN_TOML = Path(__file__).resolve().parent.parent / "hypercorn.toml"
HUGE = 20_000  # characters: a header or form value this long is logged cut short


async def test_client_values_in_the_app_log_lines_are_capped(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The address too: behind a proxy's headers middleware it is what the client claims
    (Quart refuses line breaks in it, not other characters or length)."""
    caplog.set_level(logging.INFO, logger="app")
    app = throttled_app(tmp_path, clock, account=1, client=100)
    async with app.test_app() as test_app:
        device = Device(test_app, "x" * HUGE, "203.0.113.7\x1b[2K" + "a" * HUGE)
        for _ in range(2):  # a failure, then a refusal
            form = {
                "username": "mallory\x1b[2K" + "u" * HUGE,
                "password": "guess",
                "csrf_token": await device.token("/login"),
            }
            assert (await device.post("/login", form)).status_code in {200, 429}
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("app")]
    assert [m.split(" for ")[0] for m in messages] == ["failed login", "login"]
    for message in messages:
        assert len(message) < 500 and "\x1b" not in message, message[:600]
        assert "'mallory\\x1b[2Ku" in message and "'203.0.113.7\\x1b[2Kaaa" in message


async def test_the_access_log_caps_and_escapes_what_the_client_sent(tmp_path: Path) -> None:
    """hypercorn's access log line, with hypercorn.toml's format: the User-Agent, the path
    (decoded: %0A is a line break) and every other atom come from the client."""
    build_app(tmp_path)
    config = HypercornConfig.from_toml(HYPERCORN_TOML)
    scope: Any = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/\n[2026-01-01 00:00:00 +0000] [1] [INFO] app.auth: login ok" + "p" * HUGE,
        "query_string": b"",
        "headers": [(b"user-agent", b"Mozilla/5.0 " + b"x" * HUGE)],
        "client": ("203.0.113.7", 50000),
    }
    response: Any = {"status": 404, "headers": [(b"content-length", b"9")]}
    records: list[logging.LogRecord] = []
    access = logging.getLogger("hypercorn.access")
    handlers, propagate = access.handlers, access.propagate
    try:
        logger = HypercornLogger(config)  # sets the access logger's handler: replaced
        access.handlers = [logging.Handler()]
        access.handlers[0].emit = records.append  # type: ignore[method-assign]
        await logger.access(scope, response, 0.001)
    finally:
        access.handlers, access.propagate = handlers, propagate
    [record] = records
    message = record.getMessage()
    assert len(message) < 1000 and "\n" not in message, message[:1200]
    assert '"GET /\\n[2026-01-01' in message and '"Mozilla/5.0 xxx' in message


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("<local>", "<local>"),
    ],
)
def test_clients_are_told_apart_by_address_or_ipv6_network(address: str, network: str) -> None:
    assert client_network(address) == network


# -- cart ---------------------------------------------------------------------------------


async def cart_post(client: QuartClient, action: str, **form: str) -> Response:
    token = await form_token(client, "/cart/")
    return await client.post(f"/cart/{action}", form={"csrf_token": token, **form})


async def test_cart_starts_empty_with_products(client: QuartClient) -> None:
    body = await text_of(await client.get("/cart/"))
    assert "Your cart is empty." in body
    assert '<a href="/cart/" aria-current="page">Cart' in body
    for name in ("Loose-leaf tea, 100 g", "Stoneware mug", "Gooseneck kettle"):
        assert name in body


async def test_cart_add_update_remove_clear_and_total(client: QuartClient) -> None:
    response = await cart_post(client, "add", product_id="tea")
    assert response.status_code == 302
    assert response.headers["Location"] == "/cart/"
    await cart_post(client, "add", product_id="tea")
    await cart_post(client, "add", product_id="mug", quantity="3")
    body = await text_of(await client.get("/cart/"))
    assert 'id="qty-tea" name="quantity" type="number" min="0" max="99" value="2"' in body
    assert 'id="cart-total">€49.00<' in body  # 2 x 6.50 + 3 x 12.00
    assert '<span class="badge" id="cart-count">5</span>' in body

    await cart_post(client, "update", product_id="mug", quantity="1")
    assert 'id="cart-total">€25.00<' in await text_of(await client.get("/cart/"))

    await cart_post(client, "remove", product_id="tea")
    body = await text_of(await client.get("/cart/"))
    assert 'data-product="tea"' not in body
    assert 'id="cart-total">€12.00<' in body

    await cart_post(client, "update", product_id="mug", quantity="0")  # 0 removes
    assert "Your cart is empty." in await text_of(await client.get("/cart/"))

    await cart_post(client, "add", product_id="kettle")
    response = await cart_post(client, "clear")
    assert response.status_code == 302
    body = await text_of(await client.get("/cart/"))
    assert "Your cart is empty." in body
    assert "Your cart is empty now." in body  # flash


async def test_cart_quantity_is_capped(client: QuartClient) -> None:
    await cart_post(client, "add", product_id="biscuits", quantity="90")
    await cart_post(client, "add", product_id="biscuits", quantity="90")
    assert 'value="99"' in await text_of(await client.get("/cart/"))


async def test_cart_survives_login_and_logout_empties_it(client: QuartClient) -> None:
    await cart_post(client, "add", product_id="kettle")
    await log_in(client)
    assert 'data-product="kettle"' in await text_of(await client.get("/cart/"))
    await cart_post(client, "clear")
    await cart_post(client, "add", product_id="tea")
    token = await form_token(client, "/cart/")
    await client.post("/logout", form={"csrf_token": token})
    assert "Your cart is empty." in await text_of(await client.get("/cart/"))


async def test_no_sequence_of_requests_pushes_the_session_over_its_limit(
    tmp_path: Path,
) -> None:
    """Every action that flashes, over and over, its redirect never followed (a page view
    shows the messages and so removes them): the session stays small enough to save."""
    app = build_app(tmp_path, SESSION_MAX_BYTES=1024)
    async with app.test_app() as test_app:
        client = new_client(test_app)
        await log_in(client)
        for _ in range(3):  # logged in already: each login flashes again
            token = await form_token(client, "/cart/")
            response = await client.post(
                "/login", form={"username": "alice", "password": "wonderland", "csrf_token": token}
            )
            assert response.status_code == 302
        for _ in range(30):
            assert (await client.get("/visits")).status_code == 200
        token = await form_token(client, "/cart/")
        actions = (
            ("add", {"product_id": "tea"}),
            ("add", {"product_id": "mug", "quantity": "99"}),
            ("add", {"product_id": "kettle", "quantity": "99"}),
            ("add", {"product_id": "biscuits", "quantity": "99"}),
            ("update", {"product_id": "tea", "quantity": "99"}),
            ("remove", {"product_id": "kettle"}),
            ("update", {"product_id": "biscuits", "quantity": "0"}),
            ("clear", {}),
        )
        for _ in range(40):
            for action, form in actions:
                response = await client.post(f"/cart/{action}", form={"csrf_token": token, **form})
                assert response.status_code == 302, await text_of(response)
        body = await text_of(await client.get("/cart/"))
        assert body.count('<p class="flash flash-') == 3  # only the newest messages
        assert "Your cart is empty now." in body


async def test_cart_unknown_product_is_404(client: QuartClient) -> None:
    response = await cart_post(client, "add", product_id="unicorn")
    assert response.status_code == 404
    assert "There is no such product." in await text_of(response)


@pytest.mark.parametrize("action", ["remove", "update"])
async def test_cart_item_not_in_cart_is_404(client: QuartClient, action: str) -> None:
    await cart_post(client, "add", product_id="tea")
    response = await cart_post(client, action, product_id="mug", quantity="2")
    assert response.status_code == 404
    assert "not in your cart" in await text_of(response)
    assert 'data-product="tea"' in await text_of(await client.get("/cart/"))


@pytest.mark.parametrize("quantity", ["-1", "100", "two", "1.5", ""])
async def test_cart_bad_quantity_is_400(client: QuartClient, quantity: str) -> None:
    await cart_post(client, "add", product_id="tea")
    response = await cart_post(client, "update", product_id="tea", quantity=quantity)
    assert response.status_code == 400
    assert 'value="1"' in await text_of(await client.get("/cart/"))


async def test_cart_add_zero_is_400(client: QuartClient) -> None:
    response = await cart_post(client, "add", product_id="tea", quantity="0")
    assert response.status_code == 400


async def test_cart_changes_need_csrf_token(client: QuartClient) -> None:
    await client.get("/cart/")
    for action in ("add", "update", "remove", "clear"):
        response = await client.post(f"/cart/{action}", form={"product_id": "tea"})
        assert response.status_code == 400, action
    assert "Your cart is empty." in await text_of(await client.get("/cart/"))


async def test_unknown_page_is_a_404_page(client: QuartClient) -> None:
    response = await client.get("/nowhere")
    assert response.status_code == 404
    assert "404 · Not Found" in await text_of(response)


# -- websocket ----------------------------------------------------------------------------

ORIGIN = {"Origin": "http://localhost"}
FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"


async def visits_token(client: QuartClient) -> str:
    match = TOKEN_META.search(await text_of(await client.get("/visits")))
    assert match is not None
    return match.group(1)


async def socket_call(client: QuartClient, message: object, **headers: str) -> Any:
    async with client.websocket("/ws/visits", headers={**ORIGIN, **headers}) as socket:
        await socket.send(json.dumps(message))
        return json.loads(await socket.receive())


async def test_websocket_counts_a_visit_and_it_is_stored(client: QuartClient) -> None:
    token = await visits_token(client)  # visit 1
    assert await socket_call(client, {"action": "visit", "csrf_token": token}) == {"visits": 2}
    assert await socket_call(client, {"action": "visit", "csrf_token": token}) == {"visits": 3}
    assert await socket_call(client, {"action": "read", "csrf_token": token}) == {"visits": 3}
    body = await text_of(await client.get("/visits"))  # the websocket's changes were saved
    assert '<output id="visits" aria-live="polite">4</output>' in body


async def test_websocket_needs_the_csrf_token(client: QuartClient) -> None:
    await visits_token(client)
    reply = await socket_call(client, {"action": "visit", "csrf_token": "wrong"})
    assert reply == {"error": "missing or wrong csrf_token"}
    assert await socket_call(client, {"action": "visit"}) == reply
    assert '<dd id="visit-count">1</dd>' in await text_of(await client.get("/"))


async def test_websocket_without_a_session_changes_nothing(client: QuartClient) -> None:
    reply = await socket_call(client, {"action": "visit", "csrf_token": "anything"})
    assert reply == {"error": "missing or wrong csrf_token"}
    assert session_cookie(client) is None


async def test_websocket_rejects_unknown_messages(client: QuartClient) -> None:
    token = await visits_token(client)
    assert await socket_call(client, {"action": "reset", "csrf_token": token}) == {
        "error": "unknown action"
    }
    async with client.websocket("/ws/visits", headers=ORIGIN) as socket:
        await socket.send("not json")
        assert json.loads(await socket.receive()) == {"error": "unknown action"}


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "https://localhost", "ws://localhost", "localhost", None]
)
async def test_websocket_refuses_other_origins(client: QuartClient, origin: str | None) -> None:
    await visits_token(client)
    headers = {"Origin": origin} if origin else {}
    with pytest.raises(WebsocketResponseError) as refused:
        async with client.websocket("/ws/visits", headers=headers) as socket:
            await socket.send(json.dumps({"action": "read"}))
            await socket.receive()
    assert refused.value.response.status_code == 403


# -- set-up -------------------------------------------------------------------------------

STARTUP_SCRIPT = """
import logging, sys
if sys.argv[1] == "host":
    logging.basicConfig(format="HOST %(name)s %(message)s")
from app import create_app
from app.logs import configure_logging
create_app({"SECRET_KEY": "k" * 40, "INSTANCE_PATH": sys.argv[2], "SESSION_IDEL_TIMEOUT": 5})
"""
OUR_LINE = re.compile(
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[(\d+)\] \[WARNING\] quartsess: "
    r"SESSION_IDEL_TIMEOUT is not a setting quartsess or Quart knows",
    re.MULTILINE,
)


def start_up(tmp_path: Path, mode: str) -> str:
    """Build the app in a fresh interpreter; its stderr."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUARTSESS_")}
    result = subprocess.run(  # noqa: S603 - fixed arguments
        [sys.executable, "-c", STARTUP_SCRIPT, mode, str(tmp_path / "instance")],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stderr


def test_logging_is_set_up_when_nobody_else_did(tmp_path: Path) -> None:
    stderr = start_up(tmp_path, "plain")
    [pid] = OUR_LINE.findall(stderr)
    assert int(pid) > 0


def test_logging_set_up_by_the_host_is_left_alone(tmp_path: Path) -> None:
    stderr = start_up(tmp_path, "host")
    assert OUR_LINE.search(stderr) is None
    assert stderr.count("HOST quartsess SESSION_IDEL_TIMEOUT is not a setting") == 1


def test_logging_is_left_alone_under_pytest(caplog: pytest.LogCaptureFixture) -> None:
    configure_logging()  # pytest's capture handlers are on the root logger
    assert logging.getLogger("quartsess").handlers == []
    logging.getLogger("quartsess").warning("still captured")
    assert "still captured" in caplog.text


async def test_secret_key_is_generated_once_into_the_instance_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUARTSESS_SECRET_KEY", raising=False)
    first = build_app(tmp_path, SECRET_KEY=None)
    key_file = tmp_path / "instance" / "secret_key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert first.secret_key == key_file.read_text().strip()
    assert len(str(first.secret_key)) >= 40
    second = build_app(tmp_path, SECRET_KEY=None)
    assert second.secret_key == first.secret_key
    assert [path.name for path in key_file.parent.iterdir()] == ["secret_key"]


async def test_secret_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUARTSESS_SECRET_KEY", "from-the-environment-0123456789")
    app = build_app(tmp_path, SECRET_KEY=None)
    assert app.secret_key == "from-the-environment-0123456789"
    assert not (tmp_path / "instance" / "secret_key").exists()


async def test_sessions_survive_an_app_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUARTSESS_SECRET_KEY", raising=False)
    monkeypatch.delenv("QUARTSESS_DB_URL", raising=False)
    config = {"SECRET_KEY": None, "SESSION_DB_URL": None}  # everything from instance/
    first = build_app(tmp_path, **config)
    async with first.test_app() as test_app:
        client = new_client(test_app)
        await log_in(client)
        cookie = session_cookie(client)
    assert cookie is not None
    assert (tmp_path / "instance" / "quartsess.sqlite3").exists()

    second = build_app(tmp_path, **config)
    async with second.test_app() as test_app:
        client = new_client(test_app)
        client.set_cookie("localhost", COOKIE, cookie)
        assert (await client.get("/dashboard")).status_code == 200


# --- Your sessions: each device logged in as the user, logged out from another ---------------

FIREFOX_ON_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
)
SAFARI_ON_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
CHROME_ON_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36"
)
DATE = re.compile(r" \d{4}-\d\d-\d\d \d\d:\d\d UTC")
DEVICE_ROW = re.compile(
    r'<tr class="device( this-device)?" data-handle="([^"]+)">(.*?)</tr>', re.DOTALL
)


class Device:
    """One browser: its own cookie jar, User-Agent and address on every request."""

    def __init__(self, test_app: quart_typing.TestAppProtocol, user_agent: str, address: str):
        self.client = new_client(test_app)
        self.user_agent = user_agent
        self.address = address

    async def get(self, path: str) -> Response:
        return await self.client.get(
            path, headers={"User-Agent": self.user_agent}, scope_base={"client": self._client}
        )

    async def post(self, path: str, form: dict[str, str]) -> Response:
        return await self.client.post(
            path,
            form=form,
            headers={"User-Agent": self.user_agent},
            scope_base={"client": self._client},
        )

    async def token(self, path: str = "/sessions/") -> str:
        response = await self.get(path)
        assert response.status_code == 200
        match = TOKEN_FIELD.search(await text_of(response))
        assert match is not None
        return match.group(1)

    async def log_in(self, username: str = "alice", password: str = "wonderland") -> None:  # noqa: S107
        form = {
            "username": username,
            "password": password,
            "csrf_token": await self.token("/login"),
        }
        response = await self.post("/login", form)
        assert response.status_code == 302

    async def rows(self) -> list[tuple[bool, str, str]]:
        """``(this device, handle, row text)`` for each row of the sessions page, in order."""
        response = await self.get("/sessions/")
        assert response.status_code == 200
        return [
            (bool(current), handle, " ".join(re.sub(r"<[^>]+>", " ", cells).split()))
            for current, handle, cells in DEVICE_ROW.findall(await text_of(response))
        ]

    async def is_logged_in(self) -> bool:
        response = await self.get("/dashboard")
        assert response.status_code in {200, 302}
        return response.status_code == 200

    @property
    def _client(self) -> tuple[str, int]:
        return (self.address, 50000)


async def test_sessions_page_lists_each_device_of_the_user(tmp_path: Path) -> None:
    async with build_app(tmp_path).test_app() as test_app:
        laptop = Device(test_app, FIREFOX_ON_WINDOWS, "203.0.113.7")
        phone = Device(test_app, SAFARI_ON_IPHONE, "198.51.100.20")
        bobs = Device(test_app, CHROME_ON_ANDROID, "192.0.2.99")
        await laptop.log_in()
        await phone.log_in()
        await bobs.log_in("bob", "builder")

        rows = await laptop.rows()
        assert [(current, DATE.split(text)[0]) for current, _, text in rows] == [
            (True, "Firefox 133 on Windows 10 203.0.113.7"),
            (False, "Mobile Safari 17 on iOS 17 198.51.100.20"),  # a first look marks none
        ]
        assert rows[0][2].endswith("this device")
        assert rows[1][2].endswith("Log out")
        assert len(DATE.findall(rows[0][2])) == 2  # signed in, last active
        page = await text_of(await laptop.get("/sessions/"))
        assert "Log out all other devices" in page
        assert COOKIE not in page and (session_cookie(laptop.client) or "?") not in page

        [(current, _, text)] = await bobs.rows()
        assert current and text.startswith("Chrome Mobile 131 on Android 14 192.0.2.99")
        assert "Log out all other devices" not in await text_of(await bobs.get("/sessions/"))


async def test_sessions_page_needs_a_login(client: QuartClient) -> None:
    response = await client.get("/sessions/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/sessions/"
    assert set_cookies(response) == []


async def test_log_out_another_device(tmp_path: Path) -> None:
    async with build_app(tmp_path).test_app() as test_app:
        laptop = Device(test_app, FIREFOX_ON_WINDOWS, "203.0.113.7")
        phone = Device(test_app, SAFARI_ON_IPHONE, "198.51.100.20")
        await laptop.log_in()
        await phone.log_in()
        [_, (_, phone_handle, _)] = await laptop.rows()

        response = await laptop.post(
            "/sessions/revoke", {"handle": phone_handle, "csrf_token": await laptop.token()}
        )
        assert response.status_code == 302
        assert response.headers["Location"] == "/sessions/"
        page = await text_of(await laptop.get("/sessions/"))
        assert "That device is logged out." in page
        assert "You are logged in on this device only." in page
        assert [current for current, _, _ in await laptop.rows()] == [True]
        assert not await phone.is_logged_in()
        assert await laptop.is_logged_in()

        again = await laptop.post(
            "/sessions/revoke", {"handle": phone_handle, "csrf_token": await laptop.token()}
        )
        assert again.status_code == 404  # already gone


async def test_log_out_all_other_devices(tmp_path: Path) -> None:
    async with build_app(tmp_path).test_app() as test_app:
        laptop = Device(test_app, FIREFOX_ON_WINDOWS, "203.0.113.7")
        phone = Device(test_app, SAFARI_ON_IPHONE, "198.51.100.20")
        tablet = Device(test_app, CHROME_ON_ANDROID, "198.51.100.21")
        bobs = Device(test_app, CHROME_ON_ANDROID, "192.0.2.99")
        for device in (laptop, phone, tablet):
            await device.log_in()
        await bobs.log_in("bob", "builder")

        response = await phone.post("/sessions/revoke-others", {"csrf_token": await phone.token()})
        assert response.status_code == 302
        assert "Logged out 2 other devices." in await text_of(await phone.get("/sessions/"))
        assert [await device.is_logged_in() for device in (laptop, phone, tablet, bobs)] == [
            False,
            True,
            False,
            True,
        ]
        [(current, _, text)] = await phone.rows()
        assert current and text.startswith("Mobile Safari 17 on iOS 17")


async def test_logging_devices_out_needs_the_csrf_token(tmp_path: Path) -> None:
    async with build_app(tmp_path).test_app() as test_app:
        laptop = Device(test_app, FIREFOX_ON_WINDOWS, "203.0.113.7")
        phone = Device(test_app, SAFARI_ON_IPHONE, "198.51.100.20")
        await laptop.log_in()
        await phone.log_in()
        [_, (_, phone_handle, _)] = await laptop.rows()
        forged = await phone.token()  # a valid token, but of another browser's nonce

        for path, form in (
            ("/sessions/revoke", {"handle": phone_handle}),
            ("/sessions/revoke", {"handle": phone_handle, "csrf_token": forged}),
            ("/sessions/revoke-others", {}),
            ("/sessions/revoke-others", {"csrf_token": forged}),
        ):
            response = await laptop.post(path, form)
            assert response.status_code == 400, (path, form)
            assert "security token" in await text_of(response)
        assert await phone.is_logged_in()
        assert len(await laptop.rows()) == 2


async def test_a_handle_of_another_user_or_of_this_device_is_refused(tmp_path: Path) -> None:
    async with build_app(tmp_path).test_app() as test_app:
        alices = Device(test_app, FIREFOX_ON_WINDOWS, "203.0.113.7")
        bobs = Device(test_app, CHROME_ON_ANDROID, "192.0.2.99")
        await alices.log_in()
        await bobs.log_in("bob", "builder")
        [(_, alice_handle, _)] = await alices.rows()
        [(_, bob_handle, _)] = await bobs.rows()

        for handle in (alice_handle, "no-such-handle"):
            response = await bobs.post(
                "/sessions/revoke", {"handle": handle, "csrf_token": await bobs.token()}
            )
            assert response.status_code == 404
        own = await bobs.post(
            "/sessions/revoke", {"handle": bob_handle, "csrf_token": await bobs.token()}
        )
        assert own.status_code == 400  # this device logs out with "Log out"
        empty = await bobs.post("/sessions/revoke", {"csrf_token": await bobs.token()})
        assert empty.status_code == 400
        assert await alices.is_logged_in()
        assert await bobs.is_logged_in()


async def visits_shown(response: Response) -> int:
    match = re.search(r'<output id="visits"[^>]*>(\d+)</output>', await text_of(response))
    assert match is not None
    return int(match.group(1))


async def test_visitors_who_never_log_in_are_forgotten_after_30_idle_minutes(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with build_app(tmp_path, CLOCK=clock).test_app() as test_app:
        visitor = new_client(test_app)
        user = new_client(test_app)
        await visitor.get("/visits")
        await log_in(user)
        clock.advance(29 * 60)
        assert await visits_shown(await visitor.get("/visits")) == 2
        assert (await user.get("/dashboard")).status_code == 200
        clock.advance(31 * 60)
        assert await visits_shown(await visitor.get("/visits")) == 1  # a new session
        assert (await user.get("/dashboard")).status_code == 200  # users: 2 hours
        clock.advance(121 * 60)
        assert (await user.get("/dashboard")).status_code == 302


# -- audit log ----------------------------------------------------------------------------


async def test_the_audit_log_has_every_session_transition_and_no_session_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.audit")
    app = build_app(tmp_path)
    async with app.test_app() as test_app:
        phone = new_client(test_app)
        await phone.get("/visits", headers={"User-Agent": FIREFOX})  # a visitor's session
        await log_in(phone)
        laptop = new_client(test_app)
        await log_in(laptop)
        laptop_cookie = session_cookie(laptop)
        token = await form_token(laptop, "/sessions/")
        ended = await laptop.post("/sessions/revoke-others", form={"csrf_token": token})
        assert ended.status_code == 302
        token = await form_token(laptop, "/dashboard")
        assert (await laptop.post("/logout", form={"csrf_token": token})).status_code == 302
        phone_cookie = session_cookie(phone)
    lines = [r.getMessage() for r in caplog.records if r.name == "app.audit"]
    assert [line.split(",")[0].split(" ", 2)[2] for line in lines] == [
        "created",
        "changed user - -> 'alice'",
        "created",
        "of user 'alice' ended: revoked",
        "of user 'alice' ended: logout",
    ]
    assert "from Firefox 133 on Windows 10 at" in lines[0]
    assert lines[1].split(" ")[1] == lines[0].split(" ")[1]  # one session: one handle
    assert all(len(line.split(" ")[1]) == 8 for line in lines)  # a prefix of the handle
    for cookie in (laptop_cookie, phone_cookie):
        assert cookie is not None and cookie not in caplog.text


# -- CSRF tokens are bound to the session as well as to the browser's nonce ---------------


def csrf_nonce(client: QuartClient) -> str:
    assert client.cookie_jar is not None
    [nonce] = [cookie.value for cookie in client.cookie_jar if cookie.name == CSRF_COOKIE]
    return nonce


@pytest.mark.parametrize("attacker", ["without a session", "logged in as bob"])
@pytest.mark.parametrize(
    ("path", "form"),
    [("/logout", {}), ("/cart/add", {"product_id": "kettle"}), ("/sessions/revoke-others", {})],
)
async def test_a_planted_csrf_cookie_does_not_let_its_token_act_in_the_victims_session(
    tmp_path: Path, path: str, form: dict[str, str], attacker: str
) -> None:
    """A page that can set cookies for the site (a sibling subdomain, plain http) puts its
    own nonce into the victim's browser, then posts the token it was given for that nonce."""
    async with build_app(tmp_path).test_app() as test_app:
        victim = Device(test_app, FIREFOX_ON_WINDOWS, "203.0.113.7")
        phone = Device(test_app, SAFARI_ON_IPHONE, "198.51.100.20")
        await victim.log_in()
        await phone.log_in()
        mallory = new_client(test_app)
        if attacker == "logged in as bob":
            await log_in(mallory, "bob", "builder")
        token = await form_token(mallory, "/cart/")
        victim.client.set_cookie("localhost", CSRF_COOKIE, csrf_nonce(mallory))

        response = await victim.post(path, {"csrf_token": token, **form})
        assert response.status_code == 400
        assert "security token" in await text_of(response)
        assert await victim.is_logged_in() and await phone.is_logged_in()
        assert "Your cart is empty." in await text_of(await victim.get("/cart/"))


async def test_a_planted_csrf_cookie_does_not_act_in_an_anonymous_session_either(
    tmp_path: Path,
) -> None:
    async with build_app(tmp_path).test_app() as test_app:
        victim, mallory = new_client(test_app), new_client(test_app)
        await victim.get("/visits")  # a stored session, made with the victim's own nonce
        token = await form_token(mallory, "/cart/")
        victim.set_cookie("localhost", CSRF_COOKIE, csrf_nonce(mallory))
        response = await victim.post("/cart/add", form={"product_id": "tea", "csrf_token": token})
        assert response.status_code == 400
        assert "Your cart is empty." in await text_of(await victim.get("/cart/"))


async def test_forms_shown_before_the_browser_had_a_session_still_work_in_that_browser(
    client: QuartClient,
) -> None:
    """Two tabs opened on a first visit: the first one's action stores a session, the
    second one's forms, made before that, keep working (and the login form too)."""
    cart = await form_token(client, "/cart/")
    login = await form_token(client, "/login")
    assert session_cookie(client) is None
    added = await client.post("/cart/add", form={"product_id": "tea", "csrf_token": cart})
    assert added.status_code == 302 and session_cookie(client) is not None
    again = await client.post("/cart/add", form={"product_id": "mug", "csrf_token": cart})
    assert again.status_code == 302
    response = await client.post(
        "/login", form={"username": "alice", "password": "wonderland", "csrf_token": login}
    )
    assert response.status_code == 302
    assert '<span class="badge" id="cart-count">2</span>' in await text_of(
        await client.get("/cart/")
    )


async def test_forms_still_work_after_their_session_ended(tmp_path: Path, clock: FakeClock) -> None:
    async with build_app(tmp_path, CLOCK=clock).test_app() as test_app:
        user = new_client(test_app)
        await log_in(user)
        logout = await form_token(user, "/dashboard")
        clock.advance(121 * 60)  # the session expired while the page was open
        response = await user.post("/logout", form={"csrf_token": logout})
        assert response.status_code == 302
        assert response.headers["Location"] == "/?logged_out=1"

        visitor = new_client(test_app)
        await visitor.get("/visits")
        login = await form_token(visitor, "/login")
        clock.advance(31 * 60)  # a visitor's session: forgotten after 30 idle minutes
        response = await visitor.post(
            "/login", form={"username": "bob", "password": "builder", "csrf_token": login}
        )
        assert response.status_code == 302
        assert (await visitor.get("/dashboard")).status_code == 200


async def test_csrf_tokens_of_a_session_keep_working_across_its_login(client: QuartClient) -> None:
    await client.get("/visits")
    token = await form_token(client, "/login")  # bound to the stored session's handle
    response = await client.post(
        "/login", form={"username": "alice", "password": "wonderland", "csrf_token": token}
    )
    assert response.status_code == 302
    assert await socket_call(client, {"action": "read", "csrf_token": token}) == {
        "error": "missing or wrong csrf_token"  # the login gave the browser a new nonce
    }
    fresh = await visits_token(client)
    assert await socket_call(client, {"action": "read", "csrf_token": fresh}) == {"visits": 2}


async def test_a_nonce_planted_before_the_session_was_made_loses_its_power_at_login(
    tmp_path: Path,
) -> None:
    """The session remembers the nonce that made it, so a nonce planted before the first
    visit is that nonce; login gives the browser a new one and the session forgets it."""
    async with build_app(tmp_path).test_app() as test_app:
        victim, mallory = new_client(test_app), new_client(test_app)
        token = await form_token(mallory, "/cart/")
        victim.set_cookie("localhost", CSRF_COOKIE, csrf_nonce(mallory))
        await victim.get("/visits")
        await log_in(victim)
        victim.set_cookie("localhost", CSRF_COOKIE, csrf_nonce(mallory))  # planted again
        for path, form in (("/logout", {}), ("/cart/add", {"product_id": "tea"})):
            response = await victim.post(path, form={"csrf_token": token, **form})
            assert response.status_code == 400, path
        assert (await victim.get("/dashboard")).status_code == 200


# -- the throttle's file: private, keyed by the secret key ---------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def throttle_keys(path: Path) -> set[str]:
    connection = sqlite3.connect(path)
    try:
        return {key for (key,) in connection.execute("SELECT key FROM login_attempts")}
    finally:
        connection.close()


def test_the_throttle_file_is_private_also_when_workers_race_to_make_it(tmp_path: Path) -> None:
    """Two workers' first logins on a new file, under a umask that takes nothing away:
    SQLite alone makes the file 0644, and its journal files take the file's mode."""
    previous = os.umask(0)
    try:
        for pair in range(10):
            path = tmp_path / f"throttle-{pair}.sqlite3"
            throttles = [
                build_app(tmp_path, LOGIN_THROTTLE_DB=str(path)).extensions["login_throttle"]
                for _ in range(2)
            ]
            errors = first_attempts_at_once(throttles)
            assert errors == [], f"pair {pair}"
            assert mode_of(path) == 0o600, f"pair {pair}"
    finally:
        os.umask(previous)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("DELETE FROM login_attempts")
        journals = [path.with_name(path.name + suffix) for suffix in ("-journal", "-wal")]
        assert [mode_of(journal) for journal in journals if journal.exists()] == [0o600]
        connection.execute("ROLLBACK")
    finally:
        connection.close()


async def test_a_throttle_file_made_readable_by_an_older_version_is_made_private(
    tmp_path: Path,
) -> None:
    path = tmp_path / "instance" / "login_throttle.sqlite3"
    path.parent.mkdir()
    sqlite3.connect(path).close()
    os.chmod(path, 0o644)
    async with build_app(tmp_path).test_app() as test_app:
        assert (await attempt(new_client(test_app), "alice", "guess")).status_code == 200
    assert mode_of(path) == 0o600


async def test_the_throttle_keys_are_hmacs_under_the_secret_key(tmp_path: Path) -> None:
    """Unsalted hashes of ``account\\0alice`` or of an address are undone by a dictionary
    of usernames and of the 2**32 IPv4 addresses."""
    keys: list[set[str]] = []
    for secret in (SECRET, "another-secret-key-for-the-sample-app"):
        instance = tmp_path / secret
        async with build_app(
            tmp_path, SECRET_KEY=secret, INSTANCE_PATH=str(instance)
        ).test_app() as test_app:
            device = Device(test_app, FIREFOX_ON_WINDOWS, "203.0.113.7")
            response = await device.post(
                "/login",
                {
                    "username": "alice",
                    "password": "guess",
                    "csrf_token": await device.token("/login"),
                },
            )
            assert response.status_code == 200
        keys.append(throttle_keys(instance / "login_throttle.sqlite3"))
    dictionary = {
        hashlib.sha256(f"{kind}\0{value}".encode()).hexdigest()
        for kind, value in (("account", "alice"), ("client", "203.0.113.7"))
    }
    assert len(keys[0]) == len(keys[1]) == 2
    assert not (keys[0] | keys[1]) & dictionary
    assert not keys[0] & keys[1]  # another secret key, other keys


# -- step-up: sensitive actions need a recent login -----------------------------------------


async def test_changing_the_password_needs_a_recent_login_and_logs_out_the_others(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    async with build_app(tmp_path, CLOCK=clock).test_app() as test_app:
        laptop = Device(test_app, FIREFOX_ON_WINDOWS, "203.0.113.7")
        phone = Device(test_app, SAFARI_ON_IPHONE, "198.51.100.20")
        await laptop.log_in()
        await phone.log_in()
        assert (await laptop.get("/account/password")).status_code == 200  # just logged in

        clock.now += 11 * 60  # the login is now too old for a sensitive action
        sent = await laptop.get("/account/password")
        assert sent.status_code == 302
        assert sent.headers["Location"] == "/account/confirm?next=/account/password"
        token = await laptop.token("/account/confirm?next=/account/password")
        wrong = await laptop.post(
            "/account/confirm",
            {"password": "guess", "next": "/account/password", "csrf_token": token},
        )
        assert wrong.status_code == 200
        assert "That is not your password." in await text_of(wrong)
        assert (await laptop.get("/account/password")).status_code == 302  # still not
        confirmed = await laptop.post(
            "/account/confirm",
            {"password": "wonderland", "next": "/account/password", "csrf_token": token},
        )
        assert confirmed.status_code == 302
        assert confirmed.headers["Location"] == "/account/password"

        token = await laptop.token("/account/password")
        short = await laptop.post(
            "/account/password",
            {"new_password": "short", "new_password_again": "short", "csrf_token": token},
        )
        assert "Use at least 8 characters." in await text_of(short)
        changed = await laptop.post(
            "/account/password",
            {
                "new_password": "looking-glass",
                "new_password_again": "looking-glass",
                "csrf_token": token,
            },
        )
        assert changed.status_code == 302
        dashboard = await text_of(await laptop.get("/dashboard"))
        assert "Password changed. Logged out 1 other device." in dashboard
        assert (await phone.get("/dashboard")).status_code == 302  # logged out

    # The new password is the one that works now, in every worker (a file they share).
    async with build_app(tmp_path, CLOCK=clock).test_app() as test_app:
        tablet = Device(test_app, CHROME_ON_ANDROID, "192.0.2.99")
        form = {"username": "alice", "password": "wonderland"}
        refused = await tablet.post("/login", {**form, "csrf_token": await tablet.token("/login")})
        assert refused.status_code == 200
        await tablet.log_in("alice", "looking-glass")
    assert (tmp_path / "instance" / "passwords.sqlite3").stat().st_mode & 0o777 == 0o600


async def test_logging_out_all_other_devices_needs_a_recent_login(tmp_path: Path) -> None:
    clock = FakeClock()
    async with build_app(tmp_path, CLOCK=clock).test_app() as test_app:
        laptop = Device(test_app, FIREFOX_ON_WINDOWS, "203.0.113.7")
        phone = Device(test_app, SAFARI_ON_IPHONE, "198.51.100.20")
        await laptop.log_in()
        await phone.log_in()
        clock.now += 11 * 60
        token = await laptop.token("/sessions/")
        sent = await laptop.client.post(
            "/sessions/revoke-others",
            form={"csrf_token": token},
            headers={"User-Agent": laptop.user_agent, "Referer": "http://localhost/sessions/"},
            scope_base={"client": laptop._client},
        )
        assert sent.status_code == 302
        assert sent.headers["Location"] == "/account/confirm?next=/sessions/"
        assert len(await laptop.rows()) == 2  # nothing was done
        token = await laptop.token("/account/confirm?next=/sessions/")
        back = await laptop.post(
            "/account/confirm",
            {"password": "wonderland", "next": "/sessions/", "csrf_token": token},
        )
        assert back.headers["Location"] == "/sessions/"
        done = await laptop.post("/sessions/revoke-others", {"csrf_token": token})
        assert done.status_code == 302
        assert len(await laptop.rows()) == 1


async def test_password_confirmations_are_throttled_as_logins_are(tmp_path: Path) -> None:
    async with build_app(
        tmp_path, LOGIN_LIMIT_PER_ACCOUNT=Limit(failures=2, window=900)
    ).test_app() as test_app:
        laptop = Device(test_app, FIREFOX_ON_WINDOWS, "203.0.113.7")
        await laptop.log_in()
        token = await laptop.token("/account/confirm")
        answers = [
            (await laptop.post("/account/confirm", {"password": "guess", "csrf_token": token}))
            for _ in range(3)
        ]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].headers["Retry-After"]
        right = await laptop.post(
            "/account/confirm", {"password": "wonderland", "csrf_token": token}
        )
        assert right.status_code == 429  # refused before the password is checked
