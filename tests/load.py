"""A bounded load generator of simulated users, each with a model of what its session
must hold; used by the reliability tests (short) and ``bench/reliability.py`` (long).

Every user runs one action at a time (sometimes two in parallel on different keys), keeps
its own cookie, and updates its model only on success. An action whose outcome is unknown
(a 503 or a dropped connection while the store may have written) puts the user into
re-sync: it reads its state back, which must equal the model either without or with the
action applied. At the end every user's state is read and compared with its model.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

COOKIE = "session"
ITEMS = ("tea", "mug", "kettle", "pot", "cup")
REQUEST_TIMEOUT = 15.0


@dataclass
class LoadReport:
    clients: int
    duration: float
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    transport_error_kinds: Counter[str] = field(default_factory=Counter)
    slowest_503: float = 0.0
    slowest: float = 0.0  # any response or transport error
    sessions_checked: int = 0
    sessions_lost: int = 0
    mismatches: list[str] = field(default_factory=list)
    resyncs: int = 0

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    def summary(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "duration_s": round(self.duration, 1),
            "requests": self.requests,
            "statuses": dict(sorted(self.statuses.items())),
            "transport_errors": self.transport_errors,
            "transport_error_kinds": dict(self.transport_error_kinds),
            "slowest_503_s": round(self.slowest_503, 3),
            "slowest_s": round(self.slowest, 3),
            "sessions_checked": self.sessions_checked,
            "sessions_lost": self.sessions_lost,
            "resyncs": self.resyncs,
        }


class Unknown(Exception):
    """The action's outcome is unknown (503 or a dropped connection)."""


class User:
    def __init__(
        self,
        number: int,
        base_url: str,
        report: LoadReport,
        rng: random.Random,
        verify: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        settled: asyncio.Event | None = None,
    ):
        self.verify = verify
        self.settled = settled
        self.number = number
        self.name = f"user{number}"
        self.report = report
        self.rng = rng
        self.model: dict[str, Any] = {}
        # Idle connections are dropped before hypercorn's keep-alive timeout (5 s) closes
        # them, so a request never races the server's close of a connection it reuses.
        self.client = httpx.AsyncClient(
            base_url=base_url,
            timeout=REQUEST_TIMEOUT,
            limits=httpx.Limits(keepalive_expiry=2.0),
            transport=transport,
        )

    async def request(self, method: str, path: str) -> dict[str, Any]:
        started = time.monotonic()
        self.report.requests += 1
        try:
            response = await self.client.request(method, path)
        except httpx.TransportError as error:
            self.report.slowest = max(self.report.slowest, time.monotonic() - started)
            self.report.transport_errors += 1
            self.report.transport_error_kinds[type(error).__name__] += 1
            raise Unknown(str(error)) from error
        self.report.statuses[response.status_code] += 1
        self.report.slowest = max(self.report.slowest, time.monotonic() - started)
        if response.status_code == 503:
            self.report.slowest_503 = max(self.report.slowest_503, time.monotonic() - started)
            raise Unknown("503")
        if response.status_code != 200:
            raise AssertionError(f"{self.name}: {method} {path} -> {response.status_code}")
        result: dict[str, Any] = response.json()
        return result

    # Each action: (method, path, how the model changes when it succeeds).
    def pick(self) -> tuple[str, str, Callable[[dict[str, Any]], dict[str, Any]]]:
        roll = self.rng.random()
        item = self.rng.choice(ITEMS)
        if roll < 0.40:
            return "POST", "/visit", lambda m: {**m, "visits": m.get("visits", 0) + 1}
        if roll < 0.62:
            return "POST", f"/cart/{item}/add", lambda m: _cart(m, item, +1)
        if roll < 0.72:
            return "POST", f"/cart/{item}/remove", lambda m: _cart(m, item, None)
        if roll < 0.80:
            return "POST", f"/login/{self.name}", lambda m: {**m, "user": self.name}
        if roll < 0.85:
            return "POST", "/logout", lambda m: {}
        return "GET", "/state", lambda m: m

    async def step(self) -> None:
        if self.rng.random() < 0.02:  # this visitor leaves; a new one takes the slot
            self.client.cookies.clear()
            self.model = {}
        if self.rng.random() < 0.05 and self.model:
            await self.parallel_step()
            return
        method, path, change = self.pick()
        try:
            await self.request(method, path)
        except Unknown:
            # A lost login/logout leaves either the old session or none (old row first).
            after = change(self.model) if "log" not in path else {}
            await self.resync([self.model, after])
            return
        self.model = change(self.model)

    async def parallel_step(self) -> None:
        """A visit and a cart change at once: different keys, both must survive."""
        item = self.rng.choice(ITEMS)
        results = await asyncio.gather(
            self.request("POST", "/visit"),
            self.request("POST", f"/cart/{item}/add"),
            return_exceptions=True,
        )
        visit_ok, add_ok = (not isinstance(result, BaseException) for result in results)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Unknown):
                raise result
        visited = {**self.model, "visits": self.model.get("visits", 0) + 1}
        both = _cart(visited, item, +1)
        if visit_ok and add_ok:
            self.model = both
            return
        candidates = [both]
        if visit_ok:
            candidates.append(visited)
        elif add_ok:
            candidates.append(_cart(self.model, item, +1))
        else:
            candidates += [visited, _cart(self.model, item, +1), self.model]
        await self.resync(candidates)

    async def resync(self, candidates: list[dict[str, Any]], deadline: float = 60.0) -> None:
        """Read the state back (retrying through an outage) and check it is a candidate."""
        self.report.resyncs += 1
        if not self.verify:
            self.model = {}
            self.client.cookies.clear()
            return
        give_up = time.monotonic() + deadline
        if self.settled is not None:
            # A lost write may still land (a killed worker's statement can commit after
            # its client is gone): read back only once the fault says none can.
            try:
                await asyncio.wait_for(self.settled.wait(), deadline)
            except TimeoutError:
                self.report.mismatches.append(f"{self.name}: the fault never settled")
                return
        while time.monotonic() < give_up:
            try:
                state = await self.request("GET", "/state")
            except Unknown:
                await asyncio.sleep(0.2)  # the outage is still on: poll, bounded
                continue
            if state not in candidates:
                self.report.mismatches.append(f"{self.name}: {state} not in {candidates}")
            self.model = state
            return
        self.report.mismatches.append(f"{self.name}: could not read its session back")

    async def check(self) -> None:
        self.report.sessions_checked += 1
        try:
            state = await self.request("GET", "/state")
        except Unknown:
            await self.resync([self.model])
            return
        if state != self.model:
            self.report.sessions_lost += 1
            self.report.mismatches.append(f"{self.name}: expected {self.model}, got {state}")

    async def close(self) -> None:
        await self.client.aclose()


def _cart(model: dict[str, Any], item: str, change: int | None) -> dict[str, Any]:
    cart = dict(model.get("cart", {}))
    if change is None:
        cart.pop(item, None)
    else:
        cart[item] = cart.get(item, 0) + change
    return {**model, "cart": cart}


async def run_load(
    base_url: str,
    *,
    clients: int,
    duration: float,
    seed: int = 1,
    fault: Callable[[], Awaitable[None]] | None = None,
    fault_at: float = 0.4,
    verify: bool = True,
    transport: Callable[[random.Random], httpx.AsyncBaseTransport] | None = None,
    settled: asyncio.Event | None = None,
) -> LoadReport:
    """Run ``clients`` users for ``duration`` seconds (bounded), optionally running
    ``fault`` once ``fault_at`` of the way through; then check every session.
    ``transport(rng)`` gives each user its own HTTP transport (e.g. one spreading its
    requests over several hosts, as a load balancer does). While ``settled`` is clear,
    users whose request was lost wait before reading their session back."""
    report = LoadReport(clients=clients, duration=duration)
    rng = random.Random(seed)
    users = []
    for number in range(clients):
        user_rng = random.Random(rng.random())
        own = None if transport is None else transport(random.Random(rng.random()))
        users.append(User(number, base_url, report, user_rng, verify, own, settled))
    stop_at = time.monotonic() + duration

    async def drive(user: User) -> None:
        while time.monotonic() < stop_at:
            await user.step()

    async def inject() -> None:
        if fault is not None:
            await asyncio.sleep(duration * fault_at)  # when, in the scenario's own time
            await fault()

    started = time.monotonic()
    try:
        async with asyncio.timeout(duration + 120):
            await asyncio.gather(inject(), *(drive(user) for user in users))
            if verify:
                for user in users:
                    await user.check()
    finally:
        for user in users:
            await user.close()
    report.duration = time.monotonic() - started
    return report
