"""What a serving app imports: every module left behind is walked by every full garbage
collection, which stalls every request in flight (docs/performance.md). A serving app, on
each database, loads neither SQLAlchemy's asyncio extension (which imports the ORM) nor
another database's driver or dialect."""

from __future__ import annotations

import json
import subprocess
import sys

from sqlalchemy.engine import make_url

from tests.conftest import SECRET

# Starts serving (schema check, pruner), saves and reads a session, prunes once, and
# prints which of the watched modules got imported. A fresh process: the test's own has
# imported half of SQLAlchemy.
SERVING_APP = """
import asyncio, json, sys
from quart import Quart, session
import quartsess

async def main(url, table, secret):
    app = Quart(__name__)
    app.config.update(SECRET_KEY=secret, SESSION_DB_URL=url, SESSION_TABLE=table)
    extension = quartsess.Session(app)

    @app.post("/visit")
    async def visit():
        session["visits"] = session.get("visits", 0) + 1
        return "ok"

    @app.get("/visits")
    async def visits():
        return str(session.get("visits", 0))

    async with app.test_app():
        client = app.test_client()
        await client.post("/visit")
        response = await client.get("/visits")
        assert (await response.get_data(as_text=True)) == "1"
        await extension.prune(app)
    watched = [
        "sqlalchemy.orm", "sqlalchemy.ext.asyncio", "aiosqlite", "alembic",
        "sqlalchemy.dialects.mysql", "sqlalchemy.dialects.postgresql", "asyncpg",
        "asyncmy", "aiomysql",
    ]
    print(json.dumps(sorted(name for name in watched if name in sys.modules)))

asyncio.run(main(*sys.argv[1:]))
"""

# What each database's app needs of the watched modules besides its URL's driver;
# everything else must stay out.
DIALECT = {
    "sqlite": None,
    "postgresql": "sqlalchemy.dialects.postgresql",
    "mariadb": "sqlalchemy.dialects.mysql",
}


def test_a_serving_app_imports_only_its_own_databases_modules(
    backend: str, db_url: str, table_name: str
) -> None:
    result = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", SERVING_APP, db_url, table_name, SECRET],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    driver = make_url(db_url).get_driver_name()
    needed = [] if backend == "sqlite" else [driver, DIALECT[backend]]
    assert imported == sorted(needed)
