"""Several app hosts on one PostgreSQL: network namespaces (``tests/netns.py``), each
running hypercorn with two workers, reaching the database through a forwarder of our
own on its database link (which can add latency and drop connections), and simulated
users whose every request goes to a host picked at random, as behind a load balancer.

``tests/test_multihost.py`` runs a short version; ``bench/multihost.py`` the long one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import bindparam, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.load import LoadReport, run_load
from tests.netns import Host, hosts, set_link
from tests.reliability import APPLICATION, OUTAGE_LINE, SECRET, log_problems
from tests.servers import HYPERCORN, ROOT, Server, server_env, stop
from tests.support import drop_table, helper_engine

T = TypeVar("T")
APP_PORT = 8000
FRONT_HOST = "app.test"  # the one name users know; the transport picks the host
START_TIMEOUT = 30.0
SETTLE_TIMEOUT = 20.0  # a killed host's backends end within it


class FaultyForwarder:
    """Forwards ``listen``:port to ``target``, with ``delay`` seconds added to each
    direction (in order) and, when ``drop_every`` is set, one live connection aborted at
    random about that often."""

    def __init__(self, listen: str, target: tuple[str, int], rng: random.Random) -> None:
        self.listen = listen
        self.target = target
        self.port = 0
        self.delay = 0.0
        self.drop_every = 0.0
        self.dropped = 0
        self._rng = rng
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._dropper: asyncio.Task[None] | None = None
        self._accepting: set[asyncio.StreamWriter] = set()
        self._closed = False
        # Local ports of the connections made to the target, in order: the database
        # server lists its backends by them (pg_stat_activity.client_port).
        self.upstream_ports: list[int] = []
        self.closed_upstream_ports: list[int] = []  # in the order their pairs closed

    def open_connections(self) -> int:
        """Connections accepted and not yet closed (or still connecting upstream)."""
        return len(self._pairs) + len(self._accepting)

    async def live_upstream_ports(self) -> tuple[set[int], int]:
        """The local ports of the connections to the target open now (run it on the
        forwarder's loop), and how many upstream connections were made until now."""
        ports = {upstream.get_extra_info("sockname")[1] for _, upstream in self._pairs}
        return ports, len(self.upstream_ports)

    async def client_ports(self) -> set[int]:
        """The app host's ports of the connections forwarded now (run it on the
        forwarder's loop)."""
        return {client.get_extra_info("peername")[1] for client, _ in self._pairs}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._dropper = asyncio.ensure_future(self._drop_now_and_then())

    async def close(self) -> None:
        self._closed = True
        for writer in list(self._accepting):
            writer.transport.abort()
        if self._dropper is not None:
            self._dropper.cancel()
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            for writer in pair:
                writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        async with asyncio.timeout(5):
            for _ in range(100):  # bounded; also connections accepted while closing
                await asyncio.sleep(0.02)  # late accepts start; aborted sockets close
                if not self._tasks:
                    break
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closed:  # accepted just before close(), started after it
            writer.transport.abort()
            return
        self._accepting.add(writer)  # close() aborts it even while upstream connects
        task = asyncio.current_task()
        if task is not None:  # close() waits for it
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except BaseException:  # refused, or cancelled by close()
            writer.transport.abort()
            return
        finally:
            self._accepting.discard(writer)
        self.upstream_ports.append(upstream_writer.get_extra_info("sockname")[1])
        if self._closed:
            upstream_writer.transport.abort()
            writer.transport.abort()
            return
        pair = (writer, upstream_writer)
        self._pairs.add(pair)
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.ensure_future(self._pipe(source, sink, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # the injected latency
                sink.write(data)
                await sink.drain()

        sender = asyncio.ensure_future(send())
        try:
            while data := await source.read(65536):
                queue.put_nowait((loop.time() + self.delay, data))
            queue.put_nowait((loop.time() + self.delay, b""))
            await sender
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sender.cancel()
            for writer in pair:
                with contextlib.suppress(Exception):
                    writer.transport.abort()
            if pair in self._pairs:  # each pair has two pipes
                self._pairs.discard(pair)
                self.closed_upstream_ports.append(pair[1].get_extra_info("sockname")[1])

    async def _drop_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            if self.drop_every and self._pairs and self._rng.random() < 0.25 / self.drop_every:
                victim = self._rng.choice(sorted(self._pairs, key=id))
                self.dropped += 1
                for writer in victim:
                    writer.transport.abort()


class BackgroundLoop:
    """An event loop on its own thread: the forwarders keep forwarding while the test's
    loop waits on processes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=15)

    @staticmethod
    async def _drain() -> None:
        """Let what is still running end (connections accepted late, their sockets'
        close callbacks), bounded, so nothing is left open when the loop stops."""
        me = asyncio.current_task()
        for _ in range(50):
            await asyncio.sleep(0.02)
            others = [task for task in asyncio.all_tasks() if task is not me]
            if not others:
                return
            await asyncio.wait(others, timeout=0.2)

    def call(self, function: Callable[[], None]) -> None:
        self.loop.call_soon_threadsafe(function)

    def close(self) -> None:
        self.run(self._drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass
class HostEvent:
    at: float  # monotonic seconds
    host: int
    status: int | None  # None: a transport error
    seconds: float


class SpreadingTransport(httpx.AsyncBaseTransport):
    """Sends each request to a host picked at random (the cookie stays the user's: the
    client only ever sees ``FRONT_HOST``), and records who answered what."""

    def __init__(self, addresses: list[str], rng: random.Random, events: list[HostEvent]):
        self._addresses = addresses
        self._rng = rng
        self._events = events
        self._inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(keepalive_expiry=2.0))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self._rng.randrange(len(self._addresses))
        # A request of its own: the client keeps the user's cookies by the original URL.
        forwarded = httpx.Request(
            request.method,
            request.url.copy_with(host=self._addresses[index], port=APP_PORT),
            headers=request.headers,
            stream=request.stream,
            extensions=request.extensions,
        )
        started = time.monotonic()
        try:
            response = await self._inner.handle_async_request(forwarded)
        except httpx.TransportError:
            self._events.append(HostEvent(started, index, None, time.monotonic() - started))
            raise
        self._events.append(
            HostEvent(started, index, response.status_code, time.monotonic() - started)
        )
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class AppHost:
    host: Host
    forwarder: FaultyForwarder
    db_url: str
    log_dir: Path
    server: Server | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    def start(self, table: str) -> None:
        env = server_env(
            self.log_dir / f"instance-{self.host.index}",
            QUARTSESS_SECRET_KEY=SECRET,
            QUARTSESS_DB_URL=self.db_url,
            QUARTSESS_TABLE=table,
            PYTHONWARNINGS="always::ResourceWarning",
        )
        self.starts += 1
        log = self.log_dir / f"host{self.host.index}-{self.starts}.log"
        self.logs.append(log)
        command = [
            "ip",
            "netns",
            "exec",
            self.host.namespace,
            str(HYPERCORN),
            "--workers",
            "2",
            "--graceful-timeout",
            "5",
            "--bind",
            f"{self.host.address}:{APP_PORT}",
            APPLICATION,
        ]
        with log.open("wb") as sink:
            process = subprocess.Popen(  # noqa: S603 - fixed arguments
                command,
                cwd=ROOT,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.server = Server(process, APP_PORT, log)
        self._wait_serving()

    def _wait_serving(self) -> None:
        assert self.server is not None
        url = f"http://{self.host.address}:{APP_PORT}/health"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.server.process.poll() is not None:
                raise RuntimeError(f"host {self.host.index} exited:\n{self.server.output()}")
            if self.server.output().count("Running on") >= 2:
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"host {self.host.index} did not serve:\n{self.server.output()}")

    def kill(self) -> None:
        """SIGKILL the host's hypercorn and its workers at once."""
        assert self.server is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait(timeout=20)
        self.server.stopped = True

    def stop(self) -> None:
        if self.server is not None:
            stop(self.server)

    def problems(self) -> list[str]:
        lines: list[str] = []
        for log in self.logs:
            text = log.read_text(errors="replace")
            lines += [line for line in log_problems(text) if OUTAGE_LINE not in line]
        return lines


@dataclass
class Cluster:
    hosts: list[AppHost]
    loop: BackgroundLoop
    table: str
    pg_url: str

    @property
    def addresses(self) -> list[str]:
        return [app_host.host.address for app_host in self.hosts]


@contextmanager
def cluster(workdir: Path, pg_url: str, *, count: int, seed: int = 1) -> Iterator[Cluster]:
    """``count`` app hosts serving one sessions table on ``pg_url``'s server, each through
    its own forwarder on its database link; all removed on the way out (the caller drops
    the table: :func:`drop_cluster_table`)."""
    url = make_url(pg_url)
    target = (url.host or "127.0.0.1", url.port or 5432)
    table = f"qs_hosts_{uuid.uuid4().hex[:10]}"
    rng = random.Random(seed)
    with ExitStack() as stack:
        made = stack.enter_context(hosts(count))
        loop = BackgroundLoop()
        stack.callback(loop.close)
        app_hosts = []
        for host in made:
            forwarder = FaultyForwarder(host.db_gateway, target, random.Random(rng.random()))
            loop.run(forwarder.start())
            stack.callback(lambda f=forwarder: loop.run(f.close()))
            db_url = url.set(host=host.db_gateway, port=forwarder.port).render_as_string(False)
            app_hosts.append(AppHost(host, forwarder, db_url, workdir))
        for app_host in app_hosts:
            stack.callback(app_host.stop)
            app_host.start(table)
        yield Cluster(app_hosts, loop, table, pg_url)


@dataclass
class Scenario:
    name: str
    report: LoadReport
    hosts: int
    affected: int | None = None
    fault_ended: float | None = None
    events: list[HostEvent] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def other_5xx(self) -> int:
        statuses = self.report.statuses.items()
        return sum(n for status, n in statuses if status >= 500 and status != 503)

    @property
    def recovery_s(self) -> float | None:
        """From the end of the fault to the affected host's first success after it."""
        if self.affected is None or self.fault_ended is None:
            return None
        after = [
            e.at + e.seconds
            for e in self.events
            if e.host == self.affected and e.status == 200 and e.at >= self.fault_ended
        ]
        return round(min(after) - self.fault_ended, 2) if after else None

    def row(self) -> dict[str, Any]:
        report = self.report
        return {
            "scenario": self.name,
            "hosts": self.hosts,
            "users": report.clients,
            "seconds": round(report.duration, 1),
            "requests": report.requests,
            "503": report.statuses.get(503, 0),
            "other_5xx": self.other_5xx,
            "dropped_connections": report.transport_errors,
            "slowest_s": round(report.slowest, 2),
            "sessions_checked": report.sessions_checked,
            "sessions_lost": report.sessions_lost,
            "mismatches": len(report.mismatches),
            "recovery_s": self.recovery_s,
            **self.notes,
            "log_problems": len(self.problems),
        }


async def run_scenario(
    group: Cluster,
    name: str,
    *,
    clients: int,
    duration: float,
    seed: int,
    fault: Callable[[Scenario], Awaitable[None]] | None = None,
    affected: int | None = None,
    settled: asyncio.Event | None = None,
) -> Scenario:
    events: list[HostEvent] = []
    scenario = Scenario(name, LoadReport(clients, duration), len(group.hosts), affected)
    before = [len(app_host.problems()) for app_host in group.hosts]

    def transport(rng: random.Random) -> httpx.AsyncBaseTransport:
        return SpreadingTransport(group.addresses, rng, events)

    async def inject() -> None:
        assert fault is not None
        await fault(scenario)

    scenario.report = await run_load(
        f"http://{FRONT_HOST}:{APP_PORT}",
        clients=clients,
        duration=duration,
        seed=seed,
        fault=inject if fault is not None else None,
        fault_at=0.2,
        transport=transport,
        settled=settled,
    )
    scenario.events = events
    for app_host, seen in zip(group.hosts, before, strict=True):
        scenario.problems += app_host.problems()[seen:]
    return scenario


async def all_scenarios(
    group: Cluster, *, clients: int, duration: float, cut: float = 10.0
) -> list[Scenario]:
    """Baseline; host 0's database link down for ``cut`` s; 100 ms of latency and
    dropped connections on host 1's path; host 0's hypercorn SIGKILLed and restarted."""
    results = [await run_scenario(group, "baseline", clients=clients, duration=duration, seed=1)]
    # A request given up on during the cut leaves its statement unsent in a closed socket,
    # which the kernel still delivers (and PostgreSQL commits) once the link is back:
    # users read back only once every such socket has been flushed and its backend ended.
    cut_settled = asyncio.Event()
    cut_settled.set()
    cut_host = group.hosts[0]

    async def cut_off(scenario: Scenario) -> None:
        cut_settled.clear()
        try:
            link = cut_host.host.db_link
            closed_before = len(cut_host.forwarder.closed_upstream_ports)
            await asyncio.to_thread(set_link, link, False)
            try:
                await asyncio.sleep(cut)  # the partition's length, part of the scenario
            finally:
                await asyncio.to_thread(set_link, link, True)
            scenario.fault_ended = time.monotonic()
            scenario.notes["cut_s"] = cut
            unflushed = await _wait_for_closed_sockets_to_flush(group, cut_host)
            scenario.notes["closed_sockets_unflushed_at_heal"] = unflushed
            closed = set(cut_host.forwarder.closed_upstream_ports[closed_before:])
            engine = helper_engine(group.pg_url)
            try:
                await _wait_for_pids_to_end(engine, await _backends_of(engine, closed))
            finally:
                await engine.dispose()
            scenario.notes["settle_s"] = round(time.monotonic() - scenario.fault_ended, 3)
        finally:
            cut_settled.set()

    results.append(
        await run_scenario(
            group,
            f"host 0 cut off from the database for {cut:g} s",
            clients=clients,
            duration=max(duration, cut + 8),
            seed=2,
            fault=cut_off,
            affected=0,
            settled=cut_settled,
        )
    )

    slow = group.hosts[1].forwarder

    async def degrade(scenario: Scenario) -> None:
        def worse() -> None:
            slow.delay, slow.drop_every = 0.05, 1.0

        def better() -> None:
            slow.delay, slow.drop_every = 0.0, 0.0

        dropped_before = slow.dropped
        group.loop.call(worse)
        try:
            await asyncio.sleep(duration * 0.6)
        finally:
            group.loop.call(better)
        scenario.fault_ended = time.monotonic()
        scenario.notes["db_connections_dropped"] = slow.dropped - dropped_before

    results.append(
        await run_scenario(
            group,
            "host 1: +100 ms round trip to the database, a connection dropped about every second",
            clients=clients,
            duration=duration,
            seed=3,
            fault=degrade,
            affected=1,
        )
    )

    victim = group.hosts[0]
    # A request the kill cut off may have sent its write, which PostgreSQL can still
    # commit after the worker is gone: users read back only once it cannot.
    settled = asyncio.Event()
    settled.set()

    async def kill_and_restart(scenario: Scenario) -> None:
        settled.clear()
        try:
            engine = helper_engine(group.pg_url)
            try:
                snapshot = victim.forwarder.live_upstream_ports()
                ports, opened_before = await asyncio.to_thread(group.loop.run, snapshot)
                seen = await _backends_of(engine, ports)  # none through a pooler
                await asyncio.to_thread(victim.kill)
                opened_since = set(victim.forwarder.upstream_ports[opened_before:])
                killed = time.monotonic()
                await _wait_for_backends_to_end(engine, victim.forwarder, seen, opened_since)
            finally:
                await engine.dispose()
            scenario.notes["backends_seen_at_kill"] = len(seen)
            scenario.notes["settle_s"] = round(time.monotonic() - killed, 3)
        finally:
            settled.set()
        started = time.monotonic()
        await asyncio.to_thread(victim.start, group.table)
        scenario.notes["restart_s"] = round(time.monotonic() - started, 2)
        scenario.fault_ended = started  # recovery counts from the restart's start

    results.append(
        await run_scenario(
            group,
            "host 0's hypercorn SIGKILLed and restarted",
            clients=clients,
            duration=max(duration, 10.0),
            seed=4,
            fault=kill_and_restart,
            affected=0,
            settled=settled,
        )
    )
    return results


async def _backends_of(
    engine: AsyncEngine, ports: set[int], started_before: Any | None = None
) -> set[int]:
    """The pids of PostgreSQL's backends for the connections from ``ports`` (started
    before ``started_before``, when given), never the asking connection's own."""
    sql = "SELECT pid FROM pg_stat_activity WHERE client_port IN :ports"
    sql += " AND pid <> pg_backend_pid()"
    params: dict[str, Any] = {"ports": sorted(ports)}
    if started_before is not None:
        sql += " AND backend_start < :before"
        params["before"] = started_before
    query = text(sql).bindparams(bindparam("ports", expanding=True))
    async with engine.connect() as connection:
        return {pid for (pid,) in await connection.execute(query, params)}


async def _wait_for_backends_to_end(
    engine: AsyncEngine, forwarder: FaultyForwarder, pids: set[int], opened_since: set[int]
) -> None:
    """Wait (bounded) until the forwarder has closed the dead host's connections and
    PostgreSQL has ended their backends: ``pids`` (seen before the kill) and those of
    the ports ``opened_since`` then (started before the kill ended). Then none of their
    statements is still running, so no write of theirs can commit later."""
    async with engine.connect() as connection:
        # The host is dead: its connections' backends all started before now.
        killed_by = (await connection.execute(text("SELECT now()"))).scalar_one()
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            # The forwarder runs on another thread's loop: poll it, bounded above.
            while forwarder.open_connections():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise RuntimeError(
            f"the killed host's forwarder kept connections for {SETTLE_TIMEOUT:g} s"
        ) from None
    await _wait_for_pids_to_end(engine, pids | await _backends_of(engine, opened_since, killed_by))


async def _wait_for_closed_sockets_to_flush(group: Cluster, app_host: AppHost) -> int:
    """Wait (bounded) until no socket of ``app_host`` to its forwarder still has a close
    unacknowledged (so whatever it had queued has arrived), and the forwarder has closed
    every pair whose app side is no longer established; returns how many such sockets
    the first look found."""
    namespace, gateway = app_host.host.namespace, app_host.host.db_gateway
    states = ["state", "established", "state", "fin-wait-1", "state", "closing"]
    command = ["ip", "netns", "exec", namespace, "ss", "-tnH", *states, "state", "last-ack"]
    command += ["dst", gateway]

    def sockets() -> list[tuple[str, int]]:
        listing = subprocess.run(  # noqa: S603 - fixed command, iproute2 from PATH
            command, capture_output=True, text=True, timeout=10, check=True
        ).stdout
        return [
            (fields[0], int(fields[3].rsplit(":", 1)[1]))
            for fields in (line.split() for line in listing.splitlines())
            if len(fields) >= 5
        ]

    listed: list[tuple[str, int]] = []
    first: int | None = None
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            while True:  # ss and the forwarder's loop are polled, bounded above
                listed = await asyncio.to_thread(sockets)
                established = {port for state, port in listed if state == "ESTAB"}
                if first is None:
                    first = len(listed) - len(established)
                ports = app_host.forwarder.client_ports()
                forwarded = await asyncio.to_thread(group.loop.run, ports)
                if len(established) == len(listed) and forwarded <= established:
                    return first
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise RuntimeError(
            f"the cut host's closed sockets did not flush within {SETTLE_TIMEOUT:g} s: {listed}"
        ) from None


async def _wait_for_pids_to_end(engine: AsyncEngine, pids: set[int]) -> None:
    """Wait (bounded) until none of PostgreSQL's backends ``pids`` is left."""
    remaining = text(
        "SELECT pid, state, left(query, 80) FROM pg_stat_activity WHERE pid IN :pids"
    ).bindparams(bindparam("pids", expanding=True))
    left: list[Any] = []
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            while pids:
                async with engine.connect() as connection:
                    left = list(await connection.execute(remaining, {"pids": sorted(pids)}))
                if not left:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise RuntimeError(f"backends did not end within {SETTLE_TIMEOUT:g} s: {left}") from None


async def drop_cluster_table(pg_url: str, table: str) -> None:
    await drop_table(pg_url, table)
