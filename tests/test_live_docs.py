"""docs/live.md's Prometheus recipe, run as written: signals become counters."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from tests.conftest import AppFactory, FakeClock
from tests.test_user_sessions import app_of

LIVE = Path(__file__).resolve().parent.parent / "docs" / "live.md"


def recipe() -> dict[str, Any]:
    """The Python block under "## Recipe: Prometheus counters", executed as a module."""
    text = LIVE.read_text()
    section = text.split("## Recipe: Prometheus counters", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)
    namespace: dict[str, Any] = {"__name__": "live_recipe"}
    exec(compile(code, str(LIVE), "exec"), namespace)  # noqa: S102 - the docs' own code
    return namespace


NAMESPACE = recipe()  # once: the recipe registers its counters in the default registry


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_prometheus_recipe_counts_sessions(
    make_app: AppFactory, clock: FakeClock
) -> None:
    app = app_of(make_app, SESSION_PRUNE_INTERVAL=0)
    NAMESPACE["count_sessions"](app)
    before = {
        "created": value("quartsess_sessions_created_total"),
        "logins": value("quartsess_logins_total"),
        "logout": value("quartsess_sessions_ended_total", reason="logout"),
        "revoked": value("quartsess_sessions_ended_total", reason="revoked"),
        "expired": value("quartsess_sessions_ended_total", reason="expired"),
    }
    async with app.test_app() as test_app:
        visitor = test_app.test_client()
        await visitor.post("/set", json={"cart": {}})  # created
        await visitor.post("/seed-login/ada")  # a login
        await test_app.test_client().post("/seed-login/bob")  # created, logged in
        await visitor.post("/clear")  # a logout
        assert await app.extensions["quartsess"].revoke_user_sessions("bob") == 1
        for _ in range(2):
            await test_app.test_client().post("/set", json={"a": 1})
        clock.advance(40 * 24 * 3600)
        assert await app.extensions["quartsess"].prune() == 2
    assert value("quartsess_sessions_created_total") - before["created"] == 4
    assert value("quartsess_logins_total") - before["logins"] == 2
    ended = {
        reason: value("quartsess_sessions_ended_total", reason=reason) - before[reason]
        for reason in ("logout", "revoked", "expired")
    }
    assert ended == {"logout": 1, "revoked": 1, "expired": 2}
