"""PgBouncer in transaction pooling mode in front of a PostgreSQL server, started by the
tests on a free port with its own configuration in a temporary directory.

``python -m tests.pgbouncer`` starts one in front of the loopback PostgreSQL and prints
the URL to run the suite through it (``QUARTSESS_TEST_POSTGRES_URL=<url> pytest``); it
stops on Ctrl-C.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

PGBOUNCER = Path("/usr/sbin/pgbouncer")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


@dataclass
class PgBouncer:
    """A running PgBouncer: where it listens and where its log goes."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log: Path

    def url_for(self, server_url: str) -> str:
        """``server_url`` (user, database, driver) pointed at this PgBouncer."""
        return make_url(server_url).set(host=self.host, port=self.port).render_as_string(False)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def unavailable() -> str | None:
    """Why PgBouncer cannot be started here, or None."""
    if not PGBOUNCER.exists():
        return f"{PGBOUNCER} is not installed (Debian package pgbouncer)"
    if os.geteuid() == 0 and _unprivileged_user() is None:
        return "PgBouncer refuses to run as root and there is no postgres/nobody user"
    return None


def _unprivileged_user() -> str | None:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    return None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _config(
    host: str, port: int, server_host: str, server_port: int, pool_size: int, users: Path
) -> str:
    return "\n".join(
        [
            "[databases]",
            f"* = host={server_host} port={server_port}",
            "[pgbouncer]",
            f"listen_addr = {host}",
            f"listen_port = {port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {users}",
            "pool_mode = transaction",
            "max_client_conn = 1000",
            f"default_pool_size = {pool_size}",
            # Fail fast rather than queue forever when the server is unreachable.
            "query_wait_timeout = 20",
            "server_connect_timeout = 5",
            "server_login_retry = 1",
            "",
        ]
    )


@contextmanager
def pgbouncer(
    server_url: str, *, host: str = "127.0.0.1", pool_size: int = 10
) -> Iterator[PgBouncer]:
    """Run PgBouncer (transaction pooling, trust auth) in front of ``server_url``'s server,
    listening on a free port of ``host``; stopped on the way out, whatever happened."""
    problem = unavailable()
    if problem is not None:
        raise RuntimeError(problem)
    url = make_url(server_url)
    workdir = Path(tempfile.mkdtemp(prefix="qs-pgbouncer-"))
    # Readable by the unprivileged user PgBouncer switches to when started as root.
    workdir.chmod(0o755)
    users = workdir / "userlist.txt"
    users.write_text(f'"{url.username or "postgres"}" ""\n')
    log = workdir / "pgbouncer.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        for _attempt in range(5):  # another process may take the free port first
            port = _free_port(host)
            ini = workdir / "pgbouncer.ini"
            ini.write_text(
                _config(host, port, url.host or "127.0.0.1", url.port or 5432, pool_size, users)
            )
            for path in (ini, users):
                path.chmod(0o644)
            command = [str(PGBOUNCER), "-q", str(ini)]
            if os.geteuid() == 0:
                command[1:1] = ["-u", _unprivileged_user() or "nobody"]
            with log.open("ab") as sink:
                process = subprocess.Popen(  # noqa: S603 - fixed arguments
                    command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
                )
            if _wait_listening(process, host, port):
                yield PgBouncer(process, host, port, log)
                return
            _stop(process)
        raise RuntimeError(f"PgBouncer did not start:\n{log.read_text(errors='replace')}")
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_listening(process: subprocess.Popen[bytes], host: str, port: int) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


def main() -> None:
    server = os.environ.get(
        "QUARTSESS_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    )
    with pgbouncer(server) as bouncer:
        print(bouncer.url_for(server), flush=True)
        try:
            bouncer.process.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
