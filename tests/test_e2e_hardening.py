"""The sample app's defences in a real hypercorn (hypercorn.toml, two workers, SQLite in a
temporary instance folder): the login throttle shared by the workers,
redirects with control characters, and the log lines a person reads."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import Server, hypercorn_server, server_env
from tests.test_e2e import TOKEN_FIELD, new_client

ACCESS_LINE = r'<(\d+)> "POST /login [\d.]+" ({status}) '
LOG_WAIT = 10.0  # seconds for a worker's line to reach the log file


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("hardening")
    with hypercorn_server(server_env(folder / "instance"), folder / "server.log") as running:
        yield running


async def token(client: httpx.AsyncClient) -> str:
    page = await client.get("/login")
    match = TOKEN_FIELD.search(page.text)
    assert match is not None
    return match.group(1)


async def login(
    client: httpx.AsyncClient, username: str, password: str, next_target: str = ""
) -> httpx.Response:
    form = {"username": username, "password": password, "csrf_token": await token(client)}
    if next_target:
        form["next"] = next_target
    return await client.post("/login", data=form)


def logged_logins(server: Server, status: int) -> list[int]:
    """The worker pids that answered POST /login with ``status``, from the access log."""
    return [int(pid) for pid, _ in re.findall(ACCESS_LINE.format(status=status), server.output())]


def wait_for_log(server: Server, pattern: str, count: int = 1) -> str:
    """The server's output once ``pattern`` matches ``count`` lines of it (bounded)."""
    deadline = time.monotonic() + LOG_WAIT
    while time.monotonic() < deadline:
        output = server.output()
        found = len(re.findall(pattern, output, re.MULTILINE))
        if found >= count:
            return output
        time.sleep(0.05)
    pytest.fail(f"{pattern!r} not logged {count} times within {LOG_WAIT} s:\n{server.output()}")


async def test_failed_logins_are_limited_across_both_workers(server: Server) -> None:
    """Five failures for bob, then his right password: refused by whichever worker
    answers. A limit kept per worker would let the worker that saw fewer than five
    failures check the password (302); so the refusals must come from both workers."""
    for guess in range(5):
        async with new_client(server) as client:
            response = await login(client, "bob", f"guess-{guess}")
            assert response.status_code == 200
    refusals: list[httpx.Response] = []
    for _ in range(15):  # bounded: until both workers have refused at least once
        async with new_client(server) as client:
            form = {"username": "bob", "password": "builder", "csrf_token": await token(client)}
            batch = await asyncio.gather(*(client.post("/login", data=form) for _ in range(4)))
        refusals.extend(batch)
        wait_for_log(server, ACCESS_LINE.format(status=r"\d{3}"), 5 + len(refusals))
        assert [response.status_code for response in refusals] == [429] * len(refusals)
        if len(set(logged_logins(server, 429))) == 2:
            break
    assert all(0 < int(response.headers["Retry-After"]) <= 900 for response in refusals)
    assert "Too many failed logins." in refusals[0].text
    assert len(set(logged_logins(server, 429))) == 2, server.output()


@pytest.mark.parametrize("target", ["/\x0bcart/", "/\x00", "/\x0c", "/\r", "/\n/evil.example"])
async def test_control_characters_in_next_lead_to_the_dashboard(
    server: Server, target: str
) -> None:
    async with new_client(server) as client:
        response = await login(client, "alice", "wonderland", next_target=target)
        assert response.status_code == 302
        assert response.headers["location"] == "/dashboard"
        assert (await client.get("/dashboard")).status_code == 200


# Hypercorn's own lines and, through hypercorn.toml's logconfig_dict, the app's and
# quartsess's: "[2026-12-01 19:30:00 +0000] [1234] [INFO] quartsess: ..."
LOG_LINE = (
    r"^\[\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{{4}}\] \[(\d+)\] \[{level}\] {logger}: {message}"
)


async def test_logs_have_time_level_logger_and_worker_pid(server: Server) -> None:
    async with new_client(server) as client:
        client.cookies.set("quartsess_demo", "not-a-session-id", domain="127.0.0.1")
        assert (await client.get("/")).status_code == 200
        assert (await login(client, "mallory", "guess")).status_code == 200
    wait_for_log(
        server,
        LOG_LINE.format(
            level="INFO", logger="quartsess", message="a malformed session cookie was ignored"
        ),
    )
    output = wait_for_log(
        server,
        LOG_LINE.format(level="INFO", logger="app.auth", message="failed login for 'mallory'"),
    )
    ours = LOG_LINE.format(level=r"\w+", logger=r"(?:app|quartsess)[\w.]*", message="")
    pids = {int(pid) for pid in re.findall(ours, output, re.MULTILINE)}
    assert pids and pids <= set(server.worker_pids()), output
    # Nothing of ours went through Python's last-resort handler (a bare message).
    assert "\nSESSION_COOKIE_SECURE is False" not in output


async def test_what_the_client_sent_reaches_the_log_capped_and_escaped(server: Server) -> None:
    """A User-Agent near hypercorn's 16 KiB limit for a request head, and a path whose %0A
    hypercorn decodes to a line break: no long line, no forged one."""
    forged = "[2026-01-01 00:00:00 +0000] [1] [INFO] app.auth: login ok"
    async with new_client(server) as client:
        response = await client.get(
            "/%0A" + forged.replace(" ", "%20") + "/" + "p" * 200,
            headers={"User-Agent": "Mozilla/5.0 " + "x" * 15_000},
        )
        assert response.status_code == 404
    output = wait_for_log(server, r'"GET /\\n\[2026-01-01 .* 404 ')
    assert max(len(line) for line in output.splitlines()) < 1000
    assert not any(line.startswith(forged) for line in output.splitlines())
