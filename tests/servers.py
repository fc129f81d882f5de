"""Real hypercorn processes for end-to-end, load and fault tests, on loopback only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
HYPERCORN = Path(sys.executable).with_name("hypercorn")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


@dataclass
class Server:
    """A running hypercorn: where it listens and where its output goes."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    stopped: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The worker processes: children of the hypercorn master started by
        multiprocessing's spawn (not its resource tracker, also a child)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            pids = [int(pid) for pid in children.read_text().split()]
        except FileNotFoundError:
            return []
        workers = []
        for pid in pids:
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in command:
                workers.append(pid)
        return workers


def server_env(instance: Path, **variables: str) -> dict[str, str]:
    """The test runner's environment without the app's own settings, plus ``variables``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUARTSESS_")}
    env.update(QUARTSESS_INSTANCE_PATH=str(instance), PYTHONUNBUFFERED="1", **variables)
    return env


@contextmanager
def hypercorn_server(
    env: dict[str, str],
    log: Path,
    *,
    arguments: Sequence[str] = ("--config", str(ROOT / "hypercorn.toml")),
    application: str = "app:create_app()",
    workers: int = 2,
    ready_path: str = "/",
    port: int = 0,
) -> Iterator[Server]:
    """Run hypercorn with ``arguments`` and ``application`` on a free loopback port.

    The test binds the listening socket itself and hands it over (``fd://``), so no other
    process can take the port in between. The server is stopped (SIGTERM, then SIGKILL
    of its process group) on the way out, whatever happened."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    port = listener.getsockname()[1]
    command = [
        str(HYPERCORN),
        *arguments,
        "--workers",
        str(workers),
        "--bind",
        f"fd://{listener.fileno()}",
        application,
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(  # noqa: S603 - fixed arguments
            command,
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),),
            start_new_session=True,
        )
    listener.close()  # the server holds its own copy
    server = Server(process, port, log)
    try:
        wait_until_serving(server, workers=workers, ready_path=ready_path)
        yield server
    finally:
        stop(server)


def wait_until_serving(server: Server, *, workers: int, ready_path: str = "/") -> None:
    """Poll until every worker has started and the app answers, within START_TIMEOUT."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"hypercorn exited with {server.process.returncode}:\n{server.output()}")
        if server.output().count("Running on") >= workers:
            try:
                if httpx.get(server.url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    pytest.fail(f"hypercorn did not serve within {START_TIMEOUT} s:\n{server.output()}")


def stop(server: Server, *, timeout: float = STOP_TIMEOUT) -> float:
    """SIGTERM (graceful), then SIGKILL whatever is left of its process group. Idempotent.

    Returns how long the graceful part took, in seconds."""
    if server.stopped:
        return 0.0
    server.stopped = True
    process = server.process
    started = time.monotonic()
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    took = time.monotonic() - started
    try:
        os.killpg(process.pid, signal.SIGKILL)  # workers too, if any were left behind
    except ProcessLookupError:
        pass
    if process.poll() is None:
        process.wait(timeout=STOP_TIMEOUT)
    return took
