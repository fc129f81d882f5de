"""Long reliability runs: load, outage, killed worker and shutdown scenarios, written to
docs/reliability.md. One command:

    .venv/bin/python -m bench.reliability --seconds 60

Traffic goes to 127.0.0.1 only; every run is bounded by --seconds (plus start-up,
re-sync and check time). PostgreSQL: QUARTSESS_TEST_POSTGRES_URL or the loopback default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.pgbouncer import pgbouncer
from tests.pgbouncer import unavailable as pgbouncer_unavailable
from tests.reliability import (
    Outcome,
    mariadb_restart,
    mixed_load,
    postgres_outage,
    postgres_restart,
    shutdown_under_load,
    worker_killed,
)

ROOT = Path(__file__).resolve().parent.parent
KEEP = "<!-- bench/reliability.py keeps what follows -->"
PG_URL = os.environ.get(
    "QUARTSESS_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get(
    "QUARTSESS_TEST_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306/test"
)


async def run_all(
    seconds: float, clients: int, restart_postgres: bool, restart_mariadb: bool = False
) -> list[Outcome]:
    outcomes = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        sqlite_url = f"sqlite+aiosqlite:///{work / 'load.sqlite3'}"
        outcomes.append(
            await mixed_load(
                work,
                sqlite_url,
                workers=2,
                clients=clients,
                duration=seconds,
                name="Mixed load, SQLite",
            )
        )
        outcomes.append(
            await mixed_load(
                work,
                PG_URL,
                workers=4,
                clients=clients * 2,
                duration=seconds,
                name="Mixed load, PostgreSQL",
            )
        )
        if pgbouncer_unavailable() is None:
            with pgbouncer(PG_URL, pool_size=20) as bouncer:
                outcomes.append(
                    await mixed_load(
                        work,
                        bouncer.url_for(PG_URL),
                        workers=4,
                        clients=clients * 2,
                        duration=seconds,
                        name="Mixed load, PostgreSQL through PgBouncer (transaction mode)",
                    )
                )
        outcomes.append(
            await postgres_outage(
                work,
                PG_URL,
                workers=2,
                clients=clients,
                duration=seconds,
                outage=min(10.0, seconds / 4),
            )
        )
        if restart_postgres:
            outcomes.append(
                await postgres_restart(work, PG_URL, workers=2, clients=clients, duration=seconds)
            )
        if restart_mariadb:
            outcomes.append(
                await mariadb_restart(
                    work, MARIADB_URL, workers=2, clients=clients, duration=seconds
                )
            )
        outcomes.append(await worker_killed(work, clients=clients, duration=seconds))
        outcomes.append(
            await shutdown_under_load(
                work,
                f"sqlite+aiosqlite:///{work / 'shutdown.sqlite3'}",
                workers=2,
                clients=clients,
                duration=min(seconds, 20.0),
            )
        )
    return outcomes


def markdown(outcomes: list[Outcome], command: str) -> str:
    lines = [
        "# Reliability",
        "",
        "Real hypercorn workers, real databases, simulated users mixing new visitors,",
        "visit counters, carts, logins (with `session.regenerate()`) and logouts, each user",
        "checking at the end that its session holds exactly what it did. Faults are injected",
        "mid-load. Short versions of every scenario run in CI (`tests/test_reliability.py`).",
        "",
        f"Command: `{command}` on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} cores), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| scenario | workers | users | seconds | requests | 2xx | 503 | other 5xx "
        "| dropped connections | slowest 503 (s) | sessions checked | sessions lost "
        "| re-syncs | log problems | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        report = outcome.report
        ok = sum(n for status, n in report.statuses.items() if 200 <= status < 300)
        other = report.server_errors - report.statuses.get(503, 0)
        notes = ", ".join(f"{k}={v}" for k, v in outcome.notes.items()) or "-"
        lines.append(
            f"| {outcome.name} | {outcome.workers} | {report.clients} | "
            f"{report.duration:.0f} | {report.requests} | {ok} | "
            f"{report.statuses.get(503, 0)} | {other} | {report.transport_errors} | "
            f"{report.slowest_503:.2f} | {report.sessions_checked} | {report.sessions_lost} "
            f"| {report.resyncs} | {len(outcome.problems)} | {notes} |"
        )
    lines += [
        "",
        "Reading the table:",
        "",
        "- *sessions lost* counts users whose final session differs from what they did;",
        "  *re-syncs* are actions whose outcome the user could not know (a 503 or a dropped",
        "  connection), after which it read its session back and checked it equals its",
        "  model without or with that action. Any other result is listed as a mismatch and",
        "  fails the run.",
        "- *log problems* counts server log lines with `database is locked`, a traceback,",
        "  `Task was destroyed`, `never retrieved`, or an unclosed-resource warning (the",
        "  outage's own `session store unavailable` lines are expected and not counted).",
        "- The outage drops every connection to PostgreSQL and refuses new ones (through a",
        "  loopback proxy), then lets them through again; with `--restart-postgres` the",
        "  PostgreSQL cluster itself is restarted (`pg_ctlcluster ... restart`) mid-load; with",
        "  `--restart-mariadb` the MariaDB server is stopped and started again",
        "  (`start-stop-daemon --stop` / `--start`) mid-load;",
        "  the killed worker is SIGKILLed,",
        "  hypercorn then stops its sibling, and the server is started again on the same",
        "  port while users keep going; after it, the SQLite file passes",
        "  `PRAGMA integrity_check` and every row decrypts.",
        "- *Through PgBouncer*: a PgBouncer 1.18 (`pool_mode = transaction`, 20 server",
        "  connections) started by the run in front of the same PostgreSQL; quartsess has",
        "  no setting for it (`docs/deployment.md`).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument(
        "--restart-postgres",
        action="store_true",
        help="also restart the local PostgreSQL cluster mid-load (root; disrupts its other users)",
    )
    parser.add_argument(
        "--restart-mariadb",
        action="store_true",
        help="also stop and start the local MariaDB mid-load (root; disrupts its other users)",
    )
    args = parser.parse_args()
    outcomes = asyncio.run(
        run_all(args.seconds, args.clients, args.restart_postgres, args.restart_mariadb)
    )
    command = f"python -m bench.reliability --seconds {args.seconds:g} --clients {args.clients}"
    if args.restart_postgres:
        command += " --restart-postgres"
    if args.restart_mariadb:
        command += " --restart-mariadb"
    args.output.parent.mkdir(exist_ok=True)
    kept = ""  # the sections of other runs (bench/multihost.py) and prose after the table
    if args.output.exists() and KEEP in (current := args.output.read_text()):
        kept = "\n" + KEEP + current.split(KEEP, 1)[1]
    args.output.write_text(markdown(outcomes, command) + kept)
    rows: list[dict[str, Any]] = [outcome.row() for outcome in outcomes]
    print(json.dumps(rows, indent=2, default=str))
    failed = [o.name for o in outcomes if o.report.mismatches or o.report.sessions_lost]
    if failed:
        raise SystemExit(f"sessions lost or mixed up in: {', '.join(failed)}")


if __name__ == "__main__":
    main()
