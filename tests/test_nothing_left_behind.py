"""Nothing left behind: an app used through ``test_client()`` alone (no ``test_app()``,
so no shutdown) leaves no connection for the garbage collector."""

from __future__ import annotations

import gc
import warnings

from quart import Quart, session

from quartsess import Session
from tests.conftest import SECRET


async def test_test_client_without_test_app_leaves_no_connection(
    db_url: str, table_name: str
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(10):
            app = Quart(__name__)
            app.config.update(
                SECRET_KEY=SECRET, SESSION_DB_URL=db_url, SESSION_TABLE=table_name, TESTING=True
            )
            Session(app)

            @app.get("/visits")
            async def visits() -> str:
                session["n"] = session.get("n", 0) + 1
                return str(session["n"])

            client = app.test_client()
            assert await (await client.get("/visits")).get_data(as_text=True) == "1"
            assert await (await client.get("/visits")).get_data(as_text=True) == "2"
            await app.extensions["quartsess"].prune()
            del app, client, visits
            gc.collect()
    assert [str(w.message) for w in caught] == []
