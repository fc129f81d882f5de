"""``bench/run.py``'s report: the tables, the ratios, the GC log parsing and the README
section it writes, from made-up runs (the benchmark itself is not run here)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import run as bench

META: dict[str, Any] = {
    "date": "2030-01-01 00:00 UTC",
    "commit": "abc1234",
    "cpus": 2,
    "python": "3.11.7",
    "duration": 5.0,
    "warmup": 1.0,
    "reps": 2,
    "connections": 32,
    "quick": False,
    "gc_freeze": False,
    "tracked_objects": {"none": 40_000, "cookie": 42_000, "sqlite": 77_000, "postgresql": 86_000},
    "elapsed": 700,
}


def _run(rep: int, rps: float, p99_us: float, cpu_us: float, **extra: Any) -> dict[str, Any]:
    return {
        "rep": rep,
        "rps": rps,
        "p50_us": p99_us / 4,
        "p99_us": p99_us,
        "cpu_us": cpu_us,
        "db_cpu_us": None,
        "errors": 0,
        "gc_full": 0,
        "gc_full_max_ms": 0.0,
        "gc_full_total_ms": 0.0,
        "gc_pauses_ms": [],
        **extra,
    }


def _cells() -> dict[tuple[str, str], bench.Cell]:
    cells: dict[tuple[str, str], bench.Cell] = {}
    for pattern in bench.PATTERNS:
        cells[(pattern, "none")] = bench.Cell(
            pattern, "none", [_run(0, 3000, 20_000, 250), _run(1, 3100, 20_000, 250)]
        )
        cells[(pattern, "cookie")] = bench.Cell(
            pattern,
            "cookie",
            [
                _run(0, 2000, 30_000, 400, gc_full=2, gc_pauses_ms=[15.0, 17.0]),
                _run(1, 2000, 30_000, 400, gc_full=1, gc_pauses_ms=[13.0]),
            ],
        )
        cells[(pattern, "sqlite")] = bench.Cell(
            pattern,
            "sqlite",
            [
                _run(0, 1900, 40_000, 500, gc_full=4, gc_pauses_ms=[36.0, 40.0, 44.0, 38.0]),
                _run(1, 1800, 60_000, 500, gc_full=5, gc_pauses_ms=[40.0] * 5),
            ],
        )
        cells[(pattern, "floor-sqlite")] = bench.Cell(
            pattern, "floor-sqlite", [_run(0, 1900, 40_000, 450), _run(1, 1800, 50_000, 450)]
        )
        cells[(pattern, "postgresql")] = bench.Cell(
            pattern,
            "postgresql",
            [_run(0, 1700, 45_000, 400, db_cpu_us=400), _run(1, 1600, 45_000, 400, db_cpu_us=100)],
            discarded=[_run(2, 10, 5_000_000, 9999, db_cpu_us=1, errors=3)],
        )
    return cells


def _row(table: str, pattern: str, target: str) -> list[str]:
    start = f"| {bench.PATTERNS[pattern][1]} | {bench.LABELS[target]} |"
    (line,) = [line for line in table.splitlines() if line.startswith(start)]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_goals_are_the_issues() -> None:
    assert bench.GOALS == {
        ("read", "sqlite"): 0.95,
        ("rmw", "sqlite"): 0.90,
        ("new", "sqlite"): 0.85,
        ("read", "postgresql"): 0.85,
        ("rmw", "postgresql"): 0.70,
        ("new", "postgresql"): 0.75,
    } | {  # the same server over its Unix socket: the same goals
        (pattern, "postgresql-socket"): bench.GOALS[pattern, "postgresql"]
        for pattern in ("read", "rmw", "new")
    }
    assert bench.P99_FACTOR == 1.5
    # Against the bare SQL floor on the same database, in every cell.
    assert (bench.FLOOR_GOAL, bench.FLOOR_P99_FACTOR) == (0.95, 1.3)
    assert bench.FLOORS == {"sqlite": "floor-sqlite", "postgresql": "floor-postgresql"}


def test_gc_freeze_is_off_unless_asked_for() -> None:
    assert bench._parse(["--quick"]).gc_freeze is False
    assert bench._parse(["--quick", "--gc-freeze"]).gc_freeze is True


def test_the_main_table() -> None:
    table = bench.render(_cells(), list(bench.TARGETS), META)
    header = next(line for line in table.splitlines() if line.startswith("| pattern |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert columns == [
        "pattern",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "worker CPU us/req",
        "DB server CPU us/req",
        "req/s ratio (goal)",
        f"p99 ratio (goal <= {bench.P99_FACTOR:g})",
        "CPU cost ratio",
        "req/s / floor (goal >= 0.95)",
        "p99 / floor (goal <= 1.3)",
        "runs kept",
    ]
    assert "p99 ratio (goal <= 1.5)" in header
    assert "no app calls gc.freeze()" in table
    assert "SQLite runs inside the worker" in table

    sqlite = _row(table, "read", "sqlite")
    assert sqlite[5:] == [
        "500",
        "n/a",  # SQLite's cost is in the worker's column
        "0.93 [0.90-0.95] (>= 0.95 MISSED)",
        "1.67 [1.33-2.00] (<= 1.5 MISSED)",
        "0.80 [0.80-0.80]",  # 400 / 500
        "1.00 [1.00-1.00] (>= 0.95 met)",  # the floor's runs of the same repetitions
        "1.10 [1.00-1.20] (<= 1.3 met)",  # 40 / 40 and 60 / 50
        "2/2",
    ]
    postgresql = _row(table, "new", "postgresql")
    assert postgresql[5:] == [
        "400",
        "250",  # median of 400 and 100 (the discarded run left out)
        "0.82 [0.80-0.85] (>= 0.75 met)",
        "1.50 [1.50-1.50] (<= 1.5 met)",
        # 400 / (400 + 400) and 400 / (400 + 100), per repetition
        "0.65 [0.50-0.80]",
        "",  # no floor measured for PostgreSQL in these runs
        "",
        "2/3",
    ]
    # The floor is a row of its own, without ratios.
    assert _row(table, "read", "floor-sqlite")[7:12] == ["", "", "", "", ""]
    # No ratios for the rows that are not quartsess; no DB server column either.
    assert _row(table, "rmw", "cookie")[6:10] == ["n/a", "", "", ""]
    assert _row(table, "rmw", "none")[6:10] == ["n/a", "", "", ""]


def test_the_cost_ratio_needs_the_database_servers_cpu() -> None:
    cells = _cells()
    for run in cells[("read", "postgresql")].runs:
        run["db_cpu_us"] = None  # PostgreSQL on another machine: its processes not seen
    table = bench.render(cells, list(bench.TARGETS), META)
    assert _row(table, "read", "postgresql")[6] == "n/a"
    assert _row(table, "read", "postgresql")[9] == "n/a"


def test_the_gc_table() -> None:
    table = bench.render(_cells(), list(bench.TARGETS), META)
    main, gc_table = table.split("\nGarbage collection per target", 1)
    assert "| pattern | target |" in main  # below the main table
    assert "| pattern | target |" not in gc_table
    assert "| target | tracked objects at start | full collections per run" in gc_table
    rows = {
        cells[0]: cells[1:]
        for line in gc_table.splitlines()
        if line.startswith("| ") and not line.startswith("| target")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    assert rows == {
        "no session": ["40,000", "0 (0-0)", "n/a", "n/a"],
        "Quart cookie session": ["42,000", "1.5 (1-2)", "15.0", "17.0"],
        "bare SQL floor, SQLite": ["n/a", "0 (0-0)", "n/a", "n/a"],
        "quartsess SQLite": ["77,000", "4.5 (4-5)", "40.0", "44.0"],
        # the discarded run's collections are not counted
        "quartsess PostgreSQL": ["86,000", "0 (0-0)", "n/a", "n/a"],
    }
    frozen = bench.render(_cells(), list(bench.TARGETS), META | {"gc_freeze": True})
    assert "every app calls gc.freeze()" in frozen
    assert "before gc.freeze()" in frozen


def test_the_gc_log_is_read_from_where_the_run_started(tmp_path: Path) -> None:
    log = tmp_path / "sqlite.log"
    log.write_text(
        "[INFO] Running on http://127.0.0.1:1234\n"
        "gc sqlite: tracked objects 77123\n"
        "gc sqlite: full collection 40.5 ms\n"
    )
    process = subprocess.Popen(["true"])  # noqa: S607 - a stand-in, never signalled
    process.wait()
    server = bench.Server("sqlite", 1234, process, log)
    assert bench._tracked_objects(server) == 77123
    offset = bench._log_size(server)
    with log.open("a") as out:
        out.write(
            "gc sqlite: full collection 36.0 ms\n"
            "gc sqlite: gen 0: 500 runs 20.0 ms, gen 1: 40 runs 8.0 ms, gen 2: 3 runs 110.0 ms\n"
            "gc sqlite: full collection 44.2 ms\n"
        )
    assert bench._full_collections(server, offset) == [36.0, 44.2]
    assert bench._full_collections(server, bench._log_size(server)) == []
    other = bench.Server("cookie", 1235, process, log)
    assert bench._tracked_objects(other) is None


def test_database_cpu_is_summed_over_the_processes_alive_at_the_end() -> None:
    before = {10: 1.0, 11: 2.0, 12: 5.0}  # 12 exits during the run
    after = {10: 1.5, 11: 2.25, 13: 0.5}  # 13 starts during it
    assert bench._cpu_spent(before, after) == pytest.approx(1.25)
    assert all(isinstance(pid, int) for pid in bench._postgres_pids())


@pytest.mark.parametrize("gc_freeze", [False, True])
def test_the_readme_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gc_freeze: bool
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# quartsess\n\nIntro.\n\n## Benchmarks\n\nold table\n")
    monkeypatch.setattr(bench, "README", readme)
    meta = META | {"gc_freeze": gc_freeze}
    table = bench.render(_cells(), list(bench.TARGETS), meta)
    bench.update_readme(table, meta)
    text = readme.read_text()
    assert text.startswith("# quartsess\n\nIntro.\n\n## Benchmarks\n")
    assert "old table" not in text
    assert table in text
    assert "docs/performance.md#garbage-collection" in text
    if gc_freeze:
        assert "Every app in this run calls `gc.freeze()`" in text
        assert "No app" not in text
    else:
        assert "No app in the benchmark calls `gc.freeze()`" in text
        assert "Every app" not in text
    # Rewriting it again changes nothing but the table.
    bench.update_readme(table, meta)
    assert readme.read_text() == text


def test_the_readme_states_the_heap_share_this_run_measured() -> None:
    assert bench._heap_added(META) == "83-105 %"  # 77,000 and 86,000 over 42,000
    one_target = {**META, "tracked_objects": {"cookie": 40_000, "sqlite": 60_000}}
    assert bench._heap_added(one_target) == "50 %"
    assert bench._heap_added({**META, "tracked_objects": {}}) == "a large share"
