"""Short versions of the reliability scenarios (the long ones: ``bench/reliability.py``).

Real hypercorn workers on one SQLite file or on PostgreSQL, simulated users mixing new
visitors, counters, carts, logins and logouts, with faults injected mid-load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import IN_CI, require_server
from tests.reliability import (
    MARIADBD,
    mariadb_answers,
    mariadb_restart,
    mixed_load,
    postgres_outage,
    shutdown_under_load,
    worker_killed,
)

SECONDS = 10.0

# Each scenario runs real workers under load for 6-12 s (~13 s in all on an idle
# machine): more than the suite's default bound, still a bound.
pytestmark = pytest.mark.timeout(180)


def assert_nothing_lost(outcome: object) -> None:
    report = outcome.report  # type: ignore[attr-defined]
    assert report.mismatches == []
    assert report.sessions_lost == 0
    assert report.sessions_checked == report.clients


async def test_many_users_on_two_sqlite_workers(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'load.sqlite3'}"
    outcome = await mixed_load(
        tmp_path, url, workers=2, clients=24, duration=SECONDS, name="sqlite"
    )
    assert outcome.report.requests > 200
    assert outcome.report.server_errors == 0
    assert outcome.report.transport_errors == 0
    assert_nothing_lost(outcome)
    assert outcome.problems == []  # no "database is locked", no traceback


async def test_many_users_on_four_postgresql_workers(tmp_path: Path) -> None:
    url = await require_server("postgresql")
    outcome = await mixed_load(
        tmp_path, url, workers=4, clients=32, duration=SECONDS, name="postgresql"
    )
    assert outcome.report.requests > 200
    assert outcome.report.server_errors == 0
    assert outcome.report.transport_errors == 0
    assert_nothing_lost(outcome)
    assert outcome.problems == []


async def test_postgresql_outage_gives_fast_503s_and_recovers(tmp_path: Path) -> None:
    url = await require_server("postgresql")
    outcome = await postgres_outage(tmp_path, url, workers=2, clients=16, duration=12.0, outage=3.0)
    report = outcome.report
    assert report.statuses[503] > 0  # the outage was seen...
    assert set(report.statuses) <= {200, 503}  # ...as 503s only
    assert report.slowest_503 < 6.0  # fast: no request hangs on the dead database
    assert_nothing_lost(outcome)  # sessions written before (and after) are intact
    assert outcome.problems == []


async def test_a_killed_worker_leaves_no_corrupt_rows(tmp_path: Path) -> None:
    outcome = await worker_killed(tmp_path, clients=16, duration=12.0)
    assert outcome.notes["integrity_ok"] is True
    assert outcome.notes["unreadable_rows"] == 0
    assert outcome.notes["rows"] > 0
    assert outcome.report.transport_errors > 0  # the kill was felt: requests were cut
    assert outcome.report.server_errors == 0
    assert_nothing_lost(outcome)


async def test_shutdown_under_load_is_clean(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shutdown.sqlite3'}"
    outcome = await shutdown_under_load(tmp_path, url, workers=2, clients=16, duration=6.0)
    assert outcome.notes["exit_code"] == 0
    assert outcome.notes["stop_s"] < 12  # within hypercorn's graceful timeout (10 s)
    assert outcome.problems == []
    assert outcome.report.server_errors == 0


# Restarting the machine's MariaDB disrupts everyone else using it: CI runs alone on its
# machine; on a shared one, ask for it.
RESTARTS_ALLOWED = IN_CI or os.environ.get("QUARTSESS_TEST_RESTART_SERVERS") == "1"
MARIADBD_HERE = Path(MARIADBD).exists()


async def test_mariadb_restarted_mid_load_gives_503s_and_recovers(tmp_path: Path) -> None:
    url = await require_server("mariadb")
    if not RESTARTS_ALLOWED:
        pytest.skip("restarts the shared MariaDB server: set QUARTSESS_TEST_RESTART_SERVERS=1")
    problem = None
    if make_url(url).host not in ("127.0.0.1", "localhost"):
        problem = f"the MariaDB under test ({make_url(url).host}) is not this machine's"
    elif os.geteuid() != 0 or not MARIADBD_HERE:
        problem = f"restarting {MARIADBD} needs root and the server on this machine"
    if problem is not None:
        if IN_CI:
            pytest.fail(f"{problem}; required when CI=true")
        pytest.skip(problem)
    outcome = await mariadb_restart(tmp_path, url, workers=2, clients=16, duration=12.0)
    report = outcome.report
    assert mariadb_answers()  # running again, whatever happened
    assert report.statuses[503] > 0  # the restart was felt...
    assert set(report.statuses) <= {200, 503}  # ...as 503s only
    assert report.transport_errors == 0
    assert report.slowest_503 < 6.0
    assert_nothing_lost(outcome)
    assert outcome.problems == []
