from quart import session

from tests.conftest import AppFactory


async def test_counter_round_trip(make_app: AppFactory) -> None:
    app = make_app()

    @app.get("/inc")
    async def inc() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    async with app.test_app() as test_app:
        client = test_app.test_client()
        for expected in ("1", "2", "3"):
            response = await client.get("/inc")
            assert await response.get_data(as_text=True) == expected
