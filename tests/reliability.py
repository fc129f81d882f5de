"""Reliability scenarios: real hypercorn workers, real databases, simulated users, faults.

Each scenario returns a :class:`Outcome`; ``tests/test_reliability.py`` runs short versions
and asserts on them, ``bench/reliability.py`` runs long versions and writes
``docs/reliability.md``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from quartsess.codec import PayloadCodec
from quartsess.errors import InvalidPayload
from quartsess.keys import derive_fernet_key
from tests.load import LoadReport, run_load
from tests.proxy import ThreadedProxy
from tests.servers import Server, hypercorn_server, server_env, stop
from tests.tables import drop_tables_of, unique_table

SECRET = "reliability-secret-key-0123456789"
APPLICATION = "tests.loadapp:create_app()"
PROBLEMS = (
    "database is locked",
    "Traceback",
    "Task was destroyed",
    "never retrieved",
    "ResourceWarning",
    "Unclosed",
    "unclosed",
)


@dataclass
class Outcome:
    name: str
    workers: int
    report: LoadReport
    notes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "workers": self.workers,
            **self.report.summary(),
            **self.notes,
            "log_problems": len(self.problems),
        }


def log_problems(output: str) -> list[str]:
    return [line for line in output.splitlines() if any(p in line for p in PROBLEMS)]


@contextmanager
def load_server(
    workdir: Path, db_url: str, table: str, workers: int, name: str, port: int = 0
) -> Iterator[Server]:
    env = server_env(
        workdir / "instance",
        QUARTSESS_SECRET_KEY=SECRET,
        QUARTSESS_DB_URL=db_url,
        QUARTSESS_TABLE=table,
        PYTHONWARNINGS="always::ResourceWarning",
    )
    with hypercorn_server(
        env,
        workdir / f"{name}.log",
        arguments=("--graceful-timeout", "10"),
        application=APPLICATION,
        workers=workers,
        ready_path="/health",
        port=port,
    ) as server:
        yield server


# The 503s of an outage log this on purpose; it is not a problem there.
OUTAGE_LINE = "session store unavailable"


async def serve_and_load(
    workdir: Path,
    db_url: str,
    table: str,
    *,
    workers: int,
    name: str,
    clients: int,
    duration: float,
    fault: Callable[[], Awaitable[None]] | None = None,
    expected_in_log: tuple[str, ...] = (),
) -> tuple[LoadReport, list[str]]:
    """Serve the load app, run the users (with ``fault`` part-way), stop the server, and
    return the report and the log's problem lines other than ``expected_in_log``."""
    with load_server(workdir, db_url, table, workers, name) as server:
        report = await run_load(server.url, clients=clients, duration=duration, fault=fault)
        stop(server)
        problems = [
            line
            for line in log_problems(server.output())
            if not any(expected in line for expected in expected_in_log)
        ]
    return report, problems


async def mixed_load(
    workdir: Path, db_url: str, *, workers: int, clients: int, duration: float, name: str
) -> Outcome:
    """Many users, several workers, no faults."""
    table = unique_table("qs_load")
    try:
        report, problems = await serve_and_load(
            workdir, db_url, table, workers=workers, name=name, clients=clients, duration=duration
        )
    finally:
        if not db_url.startswith("sqlite"):
            await drop_tables_of(db_url, table)
    return Outcome(name, workers, report, problems=problems)


async def postgres_outage(
    workdir: Path, pg_url: str, *, workers: int, clients: int, duration: float, outage: float
) -> Outcome:
    """The database becomes unreachable mid-load (every connection dropped, new ones
    refused) for ``outage`` seconds, then comes back. Traffic goes through a loopback
    proxy so the real server keeps serving the rest of the test suite."""
    url = make_url(pg_url)
    proxy = ThreadedProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.start()
    through_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    table = unique_table("qs_outage")
    notes: dict[str, Any] = {}

    async def fault() -> None:
        await asyncio.to_thread(proxy.stop)
        notes["outage_s"] = outage
        await asyncio.sleep(outage)  # the outage's length, part of the scenario
        await asyncio.to_thread(proxy.start)

    try:
        report, problems = await serve_and_load(
            workdir,
            through_proxy,
            table,
            workers=workers,
            name="outage",
            clients=clients,
            duration=duration,
            fault=fault,
            expected_in_log=(OUTAGE_LINE,),
        )
    finally:
        proxy.close()
        await drop_tables_of(pg_url, table)
    return Outcome("PostgreSQL outage mid-load", workers, report, notes, problems)


async def postgres_restart(
    workdir: Path, pg_url: str, *, workers: int, clients: int, duration: float
) -> Outcome:
    """PostgreSQL itself restarted mid-load (``pg_ctlcluster ... restart``, as root on the
    machine that runs it). Disrupts every other user of that server: long runs only."""
    cluster = _local_cluster()
    table = unique_table("qs_restart")
    notes: dict[str, Any] = {}

    async def fault() -> None:
        started = time.monotonic()
        await asyncio.to_thread(
            subprocess.run,
            ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart"],
            check=True,
            timeout=120,
        )
        notes["restart_s"] = round(time.monotonic() - started, 2)

    try:
        report, problems = await serve_and_load(
            workdir,
            pg_url,
            table,
            workers=workers,
            name="restart",
            clients=clients,
            duration=duration,
            fault=fault,
            expected_in_log=(OUTAGE_LINE,),
        )
    finally:
        await drop_tables_of(pg_url, table)
    return Outcome("PostgreSQL restarted mid-load", workers, report, notes, problems)


MARIADBD = "/usr/sbin/mariadbd"
START_STOP_DAEMON = "/usr/sbin/start-stop-daemon"
MARIADB_READY_TIMEOUT = 60.0


def mariadb_answers() -> bool:
    """Whether the local MariaDB server answers (``mariadb-admin status``, bounded)."""
    try:
        completed = subprocess.run(
            ["mariadb-admin", "-h", "127.0.0.1", "-uroot", "status"],  # noqa: S607
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return completed.returncode == 0


def start_mariadb() -> float:
    """Start the local MariaDB server if it is not running (as ``.ci/run`` does) and wait,
    bounded, until it answers; returns how long that took."""
    started = time.monotonic()
    subprocess.run(  # noqa: S603 - fixed arguments
        [START_STOP_DAEMON, "--start", "--oknodo", "--background", "--exec", MARIADBD],
        check=True,
        timeout=30,
    )
    while time.monotonic() - started < MARIADB_READY_TIMEOUT:
        if mariadb_answers():
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"MariaDB did not answer within {MARIADB_READY_TIMEOUT:g} s of its start")


def stop_mariadb() -> None:
    """Stop the local MariaDB server (SIGTERM, waiting up to 60 s for it to exit)."""
    subprocess.run(  # noqa: S603 - fixed arguments
        [START_STOP_DAEMON, "--stop", "--oknodo", "--retry", "TERM/60/KILL/5", "--exec", MARIADBD],
        check=True,
        timeout=90,
    )


async def mariadb_restart(
    workdir: Path, db_url: str, *, workers: int, clients: int, duration: float
) -> Outcome:
    """The local MariaDB server itself stopped and started mid-load (``start-stop-daemon``,
    as root on the machine that runs it). Disrupts every other user of that server; it is
    running again at the end whatever happens."""
    table = unique_table("qs_restart")
    notes: dict[str, Any] = {}

    async def fault() -> None:
        started = time.monotonic()
        try:
            await asyncio.to_thread(stop_mariadb)
            notes["stop_s"] = round(time.monotonic() - started, 2)
        finally:
            await asyncio.to_thread(start_mariadb)
        notes["restart_s"] = round(time.monotonic() - started, 2)

    try:
        report, problems = await serve_and_load(
            workdir,
            db_url,
            table,
            workers=workers,
            name="mariadb-restart",
            clients=clients,
            duration=duration,
            fault=fault,
            expected_in_log=(OUTAGE_LINE,),
        )
    finally:
        if not mariadb_answers():
            await asyncio.to_thread(start_mariadb)
        await drop_tables_of(db_url, table)
    return Outcome("MariaDB restarted mid-load", workers, report, notes, problems)


def _local_cluster() -> list[str]:
    """``[version, name]`` of the one local PostgreSQL cluster (Debian's layout)."""
    versions = sorted(os.listdir("/etc/postgresql"))
    if len(versions) != 1:
        raise RuntimeError(f"expected one PostgreSQL version in /etc/postgresql, found {versions}")
    return [versions[0], "main"]


def check_sqlite_rows(database: Path, table: str) -> dict[str, int]:
    """Integrity of the file, and every row's payload opens with the app's key."""
    codec = PayloadCodec([derive_fernet_key(SECRET)], max_bytes=1 << 20)
    connection = sqlite3.connect(database)
    try:
        integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
        rows = connection.execute(f"SELECT id_hash, payload FROM {table}").fetchall()  # noqa: S608
    finally:
        connection.close()
    unreadable = 0
    for id_hash, payload in rows:
        try:
            codec.open(id_hash, bytes(payload))
        except InvalidPayload:
            unreadable += 1
    return {"rows": len(rows), "unreadable_rows": unreadable, "integrity_ok": integrity == "ok"}


async def worker_killed(workdir: Path, *, clients: int, duration: float) -> Outcome:
    """SIGKILL one of two SQLite workers mid-load. Hypercorn then stops the other; the
    server is started again on the same port and the users carry on."""
    database = workdir / "killed.sqlite3"
    db_url = f"sqlite+aiosqlite:///{database}"
    table = "quart_sessions"
    notes: dict[str, Any] = {}
    with ExitStack() as stack:
        first = stack.enter_context(load_server(workdir, db_url, table, 2, "before-kill"))
        port = first.port

        async def fault() -> None:
            workers = first.worker_pids()
            if len(workers) != 2:
                raise RuntimeError(f"expected 2 hypercorn workers, found {workers}")
            victim = workers[0]
            os.kill(victim, signal.SIGKILL)
            try:  # hypercorn stops the other worker itself; bounded wait for it
                await asyncio.to_thread(first.process.wait, 30)
            except subprocess.TimeoutExpired:
                pass
            stop(first)
            notes["killed_pid"] = victim
            stack.enter_context(load_server(workdir, db_url, table, 2, "after-kill", port))

        report = await run_load(first.url, clients=clients, duration=duration, fault=fault)
    notes.update(check_sqlite_rows(database, table))
    return Outcome("SQLite worker SIGKILLed mid-load", 2, report, notes)


async def shutdown_under_load(
    workdir: Path, db_url: str, *, workers: int, clients: int, duration: float
) -> Outcome:
    """SIGTERM the server while users keep sending requests: it must stop within the
    graceful timeout, with nothing left pending or unclosed."""
    table = unique_table("qs_shutdown")
    notes: dict[str, Any] = {}
    try:
        with load_server(workdir, db_url, table, workers, "shutdown") as server:

            async def fault() -> None:
                notes["stop_s"] = round(await asyncio.to_thread(stop, server), 2)
                notes["exit_code"] = server.process.returncode

            report = await run_load(
                server.url,
                clients=clients,
                duration=duration,
                fault=fault,
                fault_at=0.5,
                verify=False,
            )
            problems = log_problems(server.output())
    finally:
        if not db_url.startswith("sqlite"):
            await drop_tables_of(db_url, table)
    return Outcome("Shutdown under load", workers, report, notes, problems)
