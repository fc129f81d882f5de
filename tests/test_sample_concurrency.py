"""The sample app served as the README serves it (hypercorn.toml: two workers), one
logged-in session, requests in parallel on connections of their own: with the cart and
the visit counter marked ``@exclusive``, every request counts."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import Server, hypercorn_server, server_env

PARALLEL = 40
TOKEN_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
QUANTITY = re.compile(r'id="qty-(\w+)"[^>]*value="(\d+)"')
VISITS = re.compile(r'<output id="visits"[^>]*>(\d+)</output>')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("concurrency")
    with hypercorn_server(server_env(folder / "instance"), folder / "server.log") as running:
        yield running


async def logged_in(server: Server) -> tuple[httpx.AsyncClient, str]:
    """A client logged in as alice (no keep-alive: every request a connection of its
    own, spread over both workers), and a CSRF token for its forms."""
    client = httpx.AsyncClient(
        base_url=server.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
    )
    page = await client.get("/login")
    token = TOKEN_FIELD.search(page.text)
    assert token is not None
    login = await client.post(
        "/login",
        data={"username": "alice", "password": "wonderland", "csrf_token": token.group(1)},
    )
    assert login.status_code == 302
    cart = await client.get("/cart/")
    token = TOKEN_FIELD.search(cart.text)
    assert token is not None
    return client, token.group(1)


async def quantities(client: httpx.AsyncClient) -> dict[str, int]:
    page = await client.get("/cart/")
    return {product: int(count) for product, count in QUANTITY.findall(page.text)}


async def test_forty_parallel_adds_of_one_product_count_forty(server: Server) -> None:
    client, token = await logged_in(server)
    try:
        adds = await asyncio.gather(
            *(
                client.post("/cart/add", data={"product_id": "tea", "csrf_token": token})
                for _ in range(PARALLEL)
            )
        )
        assert [add.status_code for add in adds] == [302] * PARALLEL
        assert await quantities(client) == {"tea": PARALLEL}
    finally:
        await client.aclose()


async def test_forty_parallel_adds_over_four_products_count_ten_each(server: Server) -> None:
    client, token = await logged_in(server)
    products = ["tea", "mug", "kettle", "biscuits"]
    try:
        adds = await asyncio.gather(
            *(
                client.post("/cart/add", data={"product_id": products[n % 4], "csrf_token": token})
                for n in range(PARALLEL)
            )
        )
        assert [add.status_code for add in adds] == [302] * PARALLEL
        assert await quantities(client) == dict.fromkeys(products, PARALLEL // 4)
    finally:
        await client.aclose()


async def test_forty_parallel_visits_count_forty(server: Server) -> None:
    client, _ = await logged_in(server)
    try:
        first = VISITS.search((await client.get("/visits")).text)
        assert first is not None
        pages = await asyncio.gather(*(client.get("/visits") for _ in range(PARALLEL)))
        assert [page.status_code for page in pages] == [200] * PARALLEL
        last = VISITS.search((await client.get("/visits")).text)
        assert last is not None
        assert int(last.group(1)) == int(first.group(1)) + PARALLEL + 1
    finally:
        await client.aclose()
