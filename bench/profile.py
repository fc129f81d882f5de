"""Profile the server's hot path under load with py-spy (``pip install py-spy``).

    .venv/bin/python -m bench.profile --target sqlite --pattern rmw [--seconds 15]
    .venv/bin/python -m bench.profile --summarize docs/profile-sqlite-rmw.speedscope.json

Serves ``bench/app.py`` for one target exactly as ``bench.run`` does (hypercorn, one
worker), drives it with wrk, records the worker with ``py-spy record --format speedscope``
into ``docs/profile-<target>-<pattern>.speedscope.json`` (open it at speedscope.app), and
prints where the worker's CPU time goes: the share of samples inside the main stages of a
request, and the functions with the most samples of their own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from bench import run as bench_run

DOCS = bench_run.ROOT / "docs"
# Where a request's CPU time goes, inclusive: (label, function name, file name fragment).
STAGES = [
    ("Quart: the app (context, dispatch, handler, response)", "Quart.handle_request", ""),
    ("session: open_session", "open_session", ""),
    ("  store.load (statement)", "SqlStore.load", "quartsess/stores/sql"),
    ("  codec.open (decrypt + deserialize)", "PayloadCodec.open", "quartsess/codec"),
    ("session: save_session (deciding; writes run in the save task below)", "save_session", ""),
    ("session: the save task (write, cookie)", "_save_and_send", ""),
    ("  serialize (change detection)", "PayloadCodec.serialize", "quartsess/codec"),
    ("  codec.seal (encrypt)", "PayloadCodec.seal", "quartsess/codec"),
    ("  store statements (update/insert/touch/delete)", "SqlStore._hot_rowcount", ""),
    ("  cookies (set_cookie)", "ServerSessionInterface._set_cookie", ""),
]
# Own (leaf) samples by the package they are spent in.
PACKAGES = [
    ("asyncio (event loop, tasks, transports)", "asyncio/"),
    ("hypercorn + h11 (HTTP)", "hypercorn/"),
    ("hypercorn + h11 (HTTP)", "h11/"),
    ("quart", "quart/"),
    ("werkzeug (headers, cookies, datastructures)", "werkzeug/"),
    ("cryptography (Fernet)", "cryptography/"),
    ("itsdangerous (cookie signing)", "itsdangerous/"),
    ("flask tagged JSON + json", "flask/json/"),
    ("flask tagged JSON + json", "json/"),
    ("quartsess", "quartsess/"),
    ("asyncpg", "asyncpg/"),
]


def record(target: str, pattern: str, seconds: float, out: Path, rate: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="quartsess-profile-"))
    pg_url = bench_run.DEFAULT_PG_URLS.get(target, "")
    if pg_url and not bench_run._postgres_ready(pg_url, bench_run.PG_TABLES[target]):
        raise SystemExit(f"PostgreSQL at {pg_url} is not reachable")
    server = bench_run._start(target, work, pg_url)
    try:
        bench_run._wait_ready(server)
        server.cookie_file = bench_run._seed_cookies(server, work)
        bench_run._wrk(server, pattern, 2, 32)  # warm-up
        load = threading.Thread(target=bench_run._wrk, args=(server, pattern, seconds + 2, 32))
        load.start()
        subprocess.run(  # noqa: S603 - fixed command line
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(server.process.pid),
                "--subprocesses",
                "--rate",
                str(rate),
                "--duration",
                str(int(seconds)),
                "--format",
                "speedscope",
                "--output",
                str(out),
            ],
            check=True,
        )
        load.join()
    finally:
        bench_run._stop(server)
        shutil.rmtree(work, ignore_errors=True)


def summarize(path: Path, top: int = 25) -> str:
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    inclusive: Counter[int] = Counter()
    own: Counter[int] = Counter()
    total = 0.0
    # The busiest profile is the worker's event-loop thread (others: the master, idle).
    profile = max(data["profiles"], key=lambda p: sum(p["weights"]))
    for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
        total += weight
        for index in set(stack):
            inclusive[index] += weight
        if stack:
            own[stack[-1]] += weight
    lines = [f"{path.name}: {total:.1f} s of samples of the worker's event-loop thread", ""]
    lines.append("| inside | share of samples |")
    lines.append("|---|---:|")
    for label, name, file_part in STAGES:
        matching = {
            i
            for i, f in enumerate(frames)
            if (f["name"] == name or f["name"].endswith("." + name))
            and file_part in (f.get("file") or "")
        }
        share = _share_of_any(profile, matching, total)
        lines.append(f"| {label} | {share:.1%} |")
    by_package: Counter[str] = Counter()
    for index, weight in own.items():
        file = frames[index].get("file") or ""
        label = next((lab for lab, part in PACKAGES if part in file), "other")
        by_package[label] += weight
    lines += ["", "| own samples in | share |", "|---|---:|"]
    lines += [f"| {label} | {w / total:.1%} |" for label, w in by_package.most_common()]
    lines += ["", f"Top {top} functions by own samples:", ""]
    lines.append("| own | incl. | function | file:line |")
    lines.append("|---:|---:|---|---|")
    for index, weight in own.most_common(top):
        frame = frames[index]
        file = _short(frame.get("file") or "?")
        lines.append(
            f"| {weight / total:.1%} | {inclusive[index] / total:.1%} | {frame['name']} "
            f"| {file}:{frame.get('line', '?')} |"
        )
    return "\n".join(lines) + "\n"


def _share_of_any(profile: dict[str, list[Any]], indexes: set[int], total: float) -> float:
    if not indexes or not total:
        return 0.0
    hit = 0.0
    for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
        if indexes.intersection(stack):
            hit += weight
    return hit / total


def _short(file: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--target", choices=bench_run.TARGETS, default="sqlite")
    parser.add_argument("--pattern", choices=list(bench_run.PATTERNS), default="rmw")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--summarize", type=Path, help="only summarize an existing profile")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    if not 1 <= args.seconds <= 120:
        parser.error("--seconds must be between 1 and 120")
    DOCS.mkdir(exist_ok=True)
    out = DOCS / f"profile-{args.target}-{args.pattern}.speedscope.json"
    record(args.target, args.pattern, args.seconds, out, args.rate)
    print(summarize(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
