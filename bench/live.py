"""Websocket enforcement at scale: one hypercorn worker holding 1,000 open websockets.

    .venv/bin/python -m bench.live [--backends sqlite postgresql] [--sockets 1000]

For each database, two servers side by side (one worker each, ``bench/liveapp.py``): one
checking its websockets' sessions every second (``SESSION_WEBSOCKET_CHECK_INTERVAL=1``),
one with the checks off. Each gets ``--sockets`` logged-in sessions, each with an open,
idle websocket. Then:

- CPU per check: the worker's CPU time (user + system, from /proc) over ``--window``
  seconds of idle sockets, checks on minus checks off, over the number of checks; on
  PostgreSQL also the database server's CPU (all its processes) in the same windows.
- Time from a revocation to the close: ``--revocations`` times, a random session is
  revoked by a request and the time until its socket receives the close frame (1008) is
  taken; p50, p99 and max. Expected: up to one interval, plus a statement.

Results: printed, and written to ``bench/results/live.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import wsproto
import wsproto.events as ws_events

from bench.run import (
    DEFAULT_PG_URL,
    RESULTS,
    ROOT,
    Server,
    _cpu_seconds,
    _cpu_spent,
    _free_port,
    _postgres_cpu,
    _postgres_ready,
    _stop,
    _wait_ready,
    _worker_pid,
)

TABLE = "quartsess_bench_live"


def _start(name: str, db_url: str, interval: str, work: Path) -> Server:
    import subprocess

    port = _free_port()
    env = dict(
        os.environ,
        BENCH_DB_URL=db_url,
        BENCH_TABLE=f"{TABLE}_{name.replace('-', '_')}",
        BENCH_CHECK_INTERVAL=interval,
        PYTHONPATH=str(ROOT),
    )
    log = work / f"{name}.log"
    command = [
        sys.executable, "-m", "hypercorn", "--workers", "1", "--worker-class", "asyncio",
        "--bind", f"127.0.0.1:{port}", "--error-logfile", "-", "bench.liveapp:create_app()",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - fixed command line
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return Server(name, port, process, log)


def _log_in(port: int, count: int) -> list[str]:
    """``count`` logins (users u0, u1, ...); their cookies."""
    cookies = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for n in range(count):
            connection.request("POST", f"/login/u{n}")
            response = connection.getresponse()
            response.read()
            cookies.append((response.headers["Set-Cookie"] or "").split(";", 1)[0])
    finally:
        connection.close()
    return cookies


class Socket:
    """An open websocket; ``closed`` is set with the time its close frame arrived."""

    def __init__(self) -> None:
        self.closed_at: float | None = None
        self.closed = asyncio.Event()
        self.code: int | None = None

    async def run(self, port: int, cookie: str, opened: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        request = ws_events.Request(
            host=f"127.0.0.1:{port}", target="/ws", extra_headers=[(b"cookie", cookie.encode())]
        )
        writer.write(connection.send(request))
        try:
            while data := await reader.read(65536):
                connection.receive_data(data)
                for event in connection.events():
                    if isinstance(event, ws_events.AcceptConnection):
                        opened.set()
                    elif isinstance(event, ws_events.CloseConnection):
                        self.closed_at = time.monotonic()
                        self.code = event.code
                        self.closed.set()
                        writer.write(connection.send(event.response()))
                        return
        finally:
            writer.close()


async def _open_all(port: int, cookies: list[str]) -> tuple[list[Socket], list[asyncio.Task[None]]]:
    sockets, tasks = [], []
    for cookie in cookies:
        socket, opened = Socket(), asyncio.Event()
        tasks.append(asyncio.create_task(socket.run(port, cookie, opened)))
        sockets.append(socket)
        async with asyncio.timeout(10):
            await opened.wait()
    return sockets, tasks


async def _revoke(port: int, user: str) -> None:
    def post() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("POST", f"/revoke/{user}")
            connection.getresponse().read()
        finally:
            connection.close()

    await asyncio.to_thread(post)


async def measure(backend: str, url: str, args: argparse.Namespace, work: Path) -> dict[str, float]:
    servers = {
        "on": _start(f"{backend}-on", url, "1", work),
        "off": _start(f"{backend}-off", url, "off", work),
    }
    results: dict[str, float] = {}
    try:
        for server in servers.values():
            _wait_ready(server)
            server.worker_pid = _worker_pid(server)
        opened = {}
        for key, server in servers.items():
            cookies = _log_in(server.port, args.sockets)
            opened[key] = await _open_all(server.port, cookies)
        # Idle windows, one server after the other, the same length.
        for key, server in servers.items():
            db_before = _postgres_cpu() if backend == "postgresql" else {}
            cpu_before = _cpu_seconds(server.worker_pid)
            await asyncio.sleep(args.window)
            results[f"cpu_{key}"] = _cpu_seconds(server.worker_pid) - cpu_before
            if backend == "postgresql":
                results[f"db_{key}"] = _cpu_spent(db_before, _postgres_cpu())
        checks = args.window / 1.0
        results["cpu_per_check_us"] = (results["cpu_on"] - results["cpu_off"]) / checks * 1e6
        if backend == "postgresql":
            results["db_per_check_us"] = (results["db_on"] - results["db_off"]) / checks * 1e6
        sockets, _ = opened["on"]
        chosen = random.sample(range(args.sockets), args.revocations)
        latencies = []
        for n in chosen:
            await asyncio.sleep(random.uniform(0, 0.2))
            started = time.monotonic()
            await _revoke(servers["on"].port, f"u{n}")
            async with asyncio.timeout(10):
                await sockets[n].closed.wait()
            assert sockets[n].code == 1008, sockets[n].code
            latencies.append((sockets[n].closed_at or started) - started)
        latencies.sort()
        results["close_p50_ms"] = statistics.median(latencies) * 1e3
        results["close_p99_ms"] = latencies[max(0, round(len(latencies) * 0.99) - 1)] * 1e3
        results["close_max_ms"] = latencies[-1] * 1e3
        for _, tasks in opened.values():
            for task in tasks:
                task.cancel()
    finally:
        for server in servers.values():
            _stop(server)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.live", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--window", type=float, default=20.0, help="seconds of idle sockets")
    parser.add_argument("--revocations", type=int, default=100)
    parser.add_argument(
        "--pg-url", default=os.environ.get("QUARTSESS_BENCH_PG_URL", DEFAULT_PG_URL)
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="quartsess-live-"))
    lines = [
        f"{args.sockets} open websockets in one hypercorn worker, checks every 1 s; CPU over "
        f"{args.window:g} s idle windows (checks on minus off, per check); {args.revocations} "
        "revocations, time from the revoking request to the close frame.",
        "",
        "| database | worker CPU per check us | DB server CPU per check us "
        "| close p50 ms | close p99 ms | close max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for backend in args.backends:
        if backend == "postgresql":
            for suffix in ("on", "off"):
                _postgres_ready(args.pg_url, f"{TABLE}_postgresql_{suffix}")
            url = args.pg_url
        else:
            url = f"sqlite+aiosqlite:///{work / 'live.sqlite3'}"
        result = asyncio.run(measure(backend, url, args, work))
        db = f"{result['db_per_check_us']:.0f}" if "db_per_check_us" in result else "n/a"
        lines.append(
            f"| {backend} | {result['cpu_per_check_us']:.0f} | {db} | "
            f"{result['close_p50_ms']:.0f} | {result['close_p99_ms']:.0f} | "
            f"{result['close_max_ms']:.0f} |"
        )
        print(lines[-1], flush=True)
    if "postgresql" in args.backends:
        for suffix in ("on", "off"):
            _postgres_ready(args.pg_url, f"{TABLE}_postgresql_{suffix}")  # drops them
    table = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "live.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
