"""From the browser's point of view, quartsess behaves like Quart's own cookie session."""

from __future__ import annotations

from typing import Any

from quart import Quart, session

from tests.conftest import SECRET, AppFactory
from tests.support import add_routes

SCRIPT: list[tuple[str, str, Any]] = [
    ("get", "/get", None),
    ("get", "/visits", None),
    ("get", "/visits", None),
    ("post", "/set", {"name": "ada", "when": "now", "n": [1, 2, 3]}),
    ("get", "/get/name", None),
    ("post", "/basket/apple", None),
    ("post", "/basket/apple", None),
    ("post", "/basket/pear", None),
    ("post", "/pop/when", None),
    ("post", "/pop/missing", None),
    ("get", "/get", None),
    ("post", "/clear", None),
    ("get", "/get", None),
    ("get", "/visits", None),
]


def build(app: Quart) -> Quart:
    add_routes(app)

    @app.post("/basket/<item>")
    async def add_to_basket(item: str) -> dict[str, Any]:
        # Written for the cookie session, which must be told about nested changes.
        basket = session.setdefault("basket", {})
        basket[item] = basket.get(item, 0) + 1
        session.modified = True
        return {"basket": basket}

    return app


async def run_script(app: Quart) -> list[Any]:
    outputs = []
    async with app.test_app() as test_app:
        client = test_app.test_client()
        for method, path, body in SCRIPT:
            response = await getattr(client, method)(path, json=body)
            outputs.append((response.status_code, await response.get_json()))
    return outputs


async def test_same_responses_as_the_cookie_session(make_app: AppFactory) -> None:
    cookie_app = build(Quart(__name__))
    cookie_app.config.update(SECRET_KEY=SECRET, TESTING=True)
    # Login regenerates the ID, which the cookie session cannot do; the rest is common.
    expected = await run_script(cookie_app)
    actual = await run_script(build(make_app()))
    assert actual == expected
    assert expected[-1] == (200, {"visits": 1})  # the clear really cleared
