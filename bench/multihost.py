"""Long multi-host runs: app hosts in network namespaces on one PostgreSQL, users moving
between them at random, with a partition, a slow and lossy path, and a killed host
(``tests/multihost.py``). Writes its section of docs/reliability.md. As root:

    .venv/bin/python -m bench.multihost --seconds 30 --hosts 3 --clients 36 [--pgbouncer]

Traffic goes only to loopback and to the namespaces the run creates (all removed at the
end); every run is bounded by --seconds (plus start-up, re-sync and check time).
PostgreSQL: QUARTSESS_TEST_POSTGRES_URL or the loopback default. With --pgbouncer the
hosts' forwarders lead to a PgBouncer in transaction pooling mode in front of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from tests.multihost import Scenario, all_scenarios, cluster, drop_cluster_table
from tests.netns import unavailable
from tests.pgbouncer import pgbouncer

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get(
    "QUARTSESS_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
START = "<!-- bench/multihost.py: start -->"
END = "<!-- bench/multihost.py: end -->"


async def run(seconds: float, hosts: int, clients: int, through_pgbouncer: bool) -> list[Scenario]:
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        url = PG_URL
        if through_pgbouncer:
            url = stack.enter_context(pgbouncer(PG_URL, pool_size=20)).url_for(PG_URL)
        group = stack.enter_context(cluster(Path(scratch), url, count=hosts))
        try:
            return await all_scenarios(group, clients=clients, duration=seconds, cut=10.0)
        finally:
            await drop_cluster_table(PG_URL, group.table)


def section(results: dict[str, list[Scenario]], command: str) -> str:
    lines = [
        START,
        "## Several app hosts on one PostgreSQL",
        "",
        "Each app host is a network namespace with two veth links to the machine's own",
        "namespace: one for users, one for the database. In each, hypercorn runs the load",
        "app with two workers; PostgreSQL is reached through a forwarder of the run's own",
        "on the host's database link (so the system PostgreSQL is not reconfigured). Every",
        "request of every simulated user goes to a host picked at random (one cookie jar",
        "per user, as behind a load balancer). Faults: host 0's database link set down",
        "(`ip link set ... down`) for 10 s while the others keep serving; 50 ms added to",
        "each direction of host 1's database path (+100 ms a round trip) with one of its",
        "database connections aborted about every second; host 0's hypercorn SIGKILLed",
        "(master and workers) and started again. *Recovery* is from the end of the fault",
        "(for the kill: the start of the restart) to the affected host's first success.",
        "",
        f"Command: `{command}` on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} cores), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
    ]
    for title, scenarios in results.items():
        lines += [
            f"### {title}",
            "",
            "| scenario | hosts | users | seconds | requests | 503 | other 5xx "
            "| dropped HTTP connections | slowest response (s) | sessions checked "
            "| sessions lost | sessions mixed up | recovery (s) | log problems | notes |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for scenario in scenarios:
            report = scenario.report
            keep = ("cut_s", "db_connections_dropped", "restart_s")
            notes = ", ".join(f"{k}={v}" for k, v in scenario.notes.items() if k in keep) or "-"
            recovery = "-" if scenario.recovery_s is None else f"{scenario.recovery_s:.2f}"
            lines.append(
                f"| {scenario.name} | {scenario.hosts} | {report.clients} "
                f"| {report.duration:.0f} | {report.requests} "
                f"| {report.statuses.get(503, 0)} | {scenario.other_5xx} "
                f"| {report.transport_errors} | {report.slowest:.2f} "
                f"| {report.sessions_checked} | {report.sessions_lost} "
                f"| {len(report.mismatches)} | {recovery} | {len(scenario.problems)} "
                f"| {notes} |"
            )
        lines.append("")
    lines += [
        "Before this run's fix, requests on the cut-off host hung until the link came back",
        "(no 503 at all, slowest 13.9 s in the short run; up to asyncpg's 30 s",
        "command_timeout in a longer partition): no reset ever arrives in a partition.",
        "Per-request statements are now bounded by the connect timeout (5 s), so that host",
        "answers 503 within seconds while the others serve on: a statement gives up after",
        "5 s; the slowest responses are requests that first waited for a free connection",
        "(up to 5 s) and then had to open one across the cut link (up to 5 s more).",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(output: Path, text: str) -> None:
    current = output.read_text() if output.exists() else ""
    if START in current and END in current:
        before, rest = current.split(START, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        current = before + text + ("\n" + after if after else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    output.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--clients", type=int, default=36)
    parser.add_argument("--pgbouncer", action="store_true", help="also run through PgBouncer")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "reliability.md")
    args = parser.parse_args()
    problem = unavailable()
    if problem is not None:
        raise SystemExit(problem)
    results = {
        "Straight to PostgreSQL": asyncio.run(
            run(args.seconds, args.hosts, args.clients, through_pgbouncer=False)
        )
    }
    if args.pgbouncer:
        results["Through PgBouncer (transaction pooling)"] = asyncio.run(
            run(args.seconds, args.hosts, args.clients, through_pgbouncer=True)
        )
    command = (
        f"python -m bench.multihost --seconds {args.seconds:g} --hosts {args.hosts} "
        f"--clients {args.clients}" + (" --pgbouncer" if args.pgbouncer else "")
    )
    write_section(args.output, section(results, command))
    print(json.dumps({k: [s.row() for s in v] for k, v in results.items()}, indent=2))
    failed = [
        scenario.name
        for scenarios in results.values()
        for scenario in scenarios
        if scenario.report.mismatches or scenario.report.sessions_lost or scenario.other_5xx
    ]
    if failed:
        raise SystemExit(f"sessions lost or mixed up, or 5xx other than 503, in: {failed}")


if __name__ == "__main__":
    main()
