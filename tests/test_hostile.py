"""Hostile input: fuzzed cookies and headers, arbitrary session contents, and attacks on
stored rows. No input may produce a 5xx, a traceback, a stored row, or a log line that
carries a raw session ID or payload."""

from __future__ import annotations

import logging
import string
from datetime import UTC, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markupsafe import Markup
from quart import Quart, session
from sqlalchemy import update

from quartsess.codec import PayloadCodec
from quartsess.errors import InvalidPayload, SessionNotSerializable, SessionTooLarge
from quartsess.ids import hash_session_id
from quartsess.kept import OPENED_BYTES_KEPT
from quartsess.keys import derive_fernet_key
from tests.conftest import AppFactory, FakeClock
from tests.support import add_routes, execute, session_cookie, store_of, stored_rows

SHARED_APP = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=300,
)


def assert_clean(response: Any, body: str) -> None:
    assert response.status_code < 500, body
    assert "Traceback" not in body


@pytest.fixture
async def served(make_app: AppFactory) -> Any:
    app = add_routes(make_app())
    async with app.test_app() as test_app:
        yield app, test_app


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@SHARED_APP
@given(value=HEADER_TEXT)
async def test_fuzzed_cookie_values_open_an_empty_session(served: Any, value: str) -> None:
    app, test_app = served
    client = test_app.test_client()
    response = await client.get("/get", headers={"Cookie": f"session={value}"})
    body = await response.get_data(as_text=True)
    assert_clean(response, body)
    assert await response.get_json() == {}
    assert session_cookie(response) is None
    assert await stored_rows(app) == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@SHARED_APP
@given(header=HEADER_TEXT)
async def test_fuzzed_cookie_headers_never_fail(served: Any, header: str) -> None:
    app, test_app = served
    client = test_app.test_client()
    response = await client.get("/get", headers={"Cookie": header})
    assert_clean(response, await response.get_data(as_text=True))
    assert await stored_rows(app) == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@SHARED_APP
@given(
    token=st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=43, max_size=43)
)
async def test_well_formed_guesses_are_never_adopted(served: Any, token: str) -> None:
    app, test_app = served
    client = test_app.test_client()
    client.set_cookie("localhost", "session", token)
    response = await client.post("/set", json={"user": "mallory"})
    issued = session_cookie(response)
    assert issued and issued != token
    hashes = {row.id_hash for row in await stored_rows(app)}
    assert hash_session_id(token) not in hashes


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.uuids(),
    st.datetimes(timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=-5))])),
    st.text(max_size=20).map(Markup),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=20,
)
contents = st.dictionaries(st.text(max_size=12), values, max_size=6)


@given(data=contents)
@settings(max_examples=300, deadline=None)
def test_any_session_contents_survive_seal_and_open(data: dict[str, Any]) -> None:
    codec = PayloadCodec([derive_fernet_key("k" * 32)], max_bytes=1 << 20)
    id_hash = hash_session_id("x" * 43)
    plaintext = codec.serialize(data)
    sealed = codec.seal(id_hash, plaintext)
    opened, snapshot = codec.open(id_hash, sealed)
    assert opened == data
    assert snapshot == plaintext
    assert codec.serialize(opened) == plaintext  # stable bytes: no spurious writes
    # Another process (nothing kept from the seal) decrypts the same thing.
    other_worker = PayloadCodec([derive_fernet_key("k" * 32)], max_bytes=1 << 20)
    assert other_worker.open(id_hash, sealed) == (data, plaintext)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=contents)
async def test_any_session_contents_survive_a_request_round_trip(
    make_app: AppFactory, data: dict[str, Any]
) -> None:
    app = make_app()
    seen: dict[str, Any] = {}

    @app.post("/store")
    async def store() -> str:
        session.update(data)
        return "ok"

    @app.get("/load")
    async def load() -> str:
        seen.update(session.items())
        return "ok"

    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await client.post("/store")
        assert response.status_code == 200
        await client.get("/load")
    assert seen == data


def lines_of(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


async def attack(
    app: Quart, caplog: pytest.LogCaptureFixture, change: Any, sid: str, secret: str
) -> str:
    """Apply ``change`` to the stored row, then request with ``sid``; returns the log."""
    await change()
    client = app.test_client()
    client.set_cookie("localhost", "session", sid)
    with caplog.at_level(logging.INFO, logger="quartsess"):
        response = await client.get("/get")
    assert response.status_code == 200
    assert await response.get_json() == {}
    log = lines_of(caplog)
    assert sid not in log and secret not in log
    return log


async def test_stored_row_attacks_give_a_fresh_session_and_a_safe_log_line(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    app = add_routes(make_app(SESSION_IDLE_TIMEOUT=600))
    table = store_of(app).table
    secret = "card-4111-1111-1111-1111"

    async def new_session() -> tuple[str, bytes]:
        response = await app.test_client().post("/set", json={"secret": secret})
        sid = session_cookie(response)
        assert sid
        rows = {row.id_hash: row for row in await stored_rows(app)}
        return sid, rows[hash_session_id(sid)].payload

    def set_payload(sid: str, payload: bytes) -> Any:
        return lambda: execute(
            app,
            update(table).where(table.c.id_hash == hash_session_id(sid)).values(payload=payload),
        )

    async with app.test_app():
        sid, payload = await new_session()
        log = await attack(app, caplog, set_payload(sid, payload[: len(payload) // 2]), sid, secret)
        assert "security" in log and "does not decrypt" in log

        sid, payload = await new_session()
        flipped = payload[:20] + bytes([payload[20] ^ 1]) + payload[21:]
        log = await attack(app, caplog, set_payload(sid, flipped), sid, secret)
        assert "security" in log

        sid, _ = await new_session()
        other = PayloadCodec([derive_fernet_key("someone else's key")], 1 << 16)
        foreign = other.seal(hash_session_id(sid), b'{"admin":true}')
        log = await attack(app, caplog, set_payload(sid, foreign), sid, secret)
        assert "does not decrypt" in log

        sid, _ = await new_session()
        client = app.test_client()
        client.set_cookie("localhost", "session", sid)
        await client.post("/clear")  # logged out: the old cookie is replayed below

        async def nothing() -> None:
            return None

        log = await attack(app, caplog, nothing, sid, secret)
        assert "is unknown; a new session starts" in log

        sid, _ = await new_session()
        clock.advance(601)
        log = await attack(app, caplog, nothing, sid, secret)
        assert "has expired; a new session starts" in log


async def test_huge_and_deep_contents_are_refused_before_storage(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(TESTING=False, SESSION_MAX_BYTES=4096)

    @app.post("/deep")
    async def deep() -> str:
        value: Any = "leaf"
        for _ in range(100_000):
            value = [value]
        session["deep"] = value
        return "ok"

    @app.post("/wide")
    async def wide() -> str:
        session["wide"] = list(range(100_000))
        return "ok"

    async with app.test_app() as test_app:
        client = test_app.test_client()
        with caplog.at_level(logging.ERROR):
            assert (await client.post("/deep")).status_code == 500
            assert (await client.post("/wide")).status_code == 500
        assert await stored_rows(app) == []
    errors = [type(r.exc_info[1]) for r in caplog.records if r.exc_info and r.exc_info[1]]
    assert SessionNotSerializable in errors and SessionTooLarge in errors


class CountingDecrypts:
    """Counts the decryptions a codec really runs (it skips ciphertexts it already knows)."""

    def __init__(self, codec: PayloadCodec) -> None:
        self.count = 0
        sealer = codec.sealer
        real = sealer.decrypt

        def decrypt(token: bytes) -> bytes:
            self.count += 1
            return real(token)

        sealer.decrypt = decrypt  # type: ignore[method-assign]


def test_a_ciphertext_already_opened_or_written_here_is_not_decrypted_again() -> None:
    writer = PayloadCodec([derive_fernet_key("k" * 32)], max_bytes=1 << 16)
    reader = PayloadCodec([derive_fernet_key("k" * 32)], max_bytes=1 << 16)
    decrypts = CountingDecrypts(reader)
    id_hash = hash_session_id("r" * 43)
    sealed = writer.seal(id_hash, b'{"visits":1}')
    for _ in range(3):
        assert reader.open(id_hash, bytes(bytearray(sealed)))[0] == {"visits": 1}
    assert decrypts.count == 1
    rewritten = reader.seal(id_hash, b'{"visits":2}')  # what this process wrote
    assert reader.open(id_hash, rewritten)[0] == {"visits": 2}
    assert decrypts.count == 1


def test_a_kept_ciphertext_still_opens_only_for_its_own_row() -> None:
    codec = PayloadCodec([derive_fernet_key("k" * 32)], max_bytes=1 << 16)
    admin, guest = hash_session_id("a" * 43), hash_session_id("g" * 43)
    sealed = codec.seal(admin, b'{"role":"admin"}')
    assert codec.open(admin, sealed)[0] == {"role": "admin"}
    with pytest.raises(InvalidPayload, match="another session row"):
        codec.open(guest, sealed)
    tampered = sealed[:-5] + (b"A" if sealed[-5:-4] != b"A" else b"B") + sealed[-4:]
    for _ in range(2):  # a failed decryption is not kept either
        with pytest.raises(InvalidPayload, match="does not decrypt"):
            codec.open(admin, tampered)


def test_kept_plaintexts_stay_within_their_byte_budget() -> None:
    codec = PayloadCodec([derive_fernet_key("k" * 32)], max_bytes=1 << 20)
    decrypts = CountingDecrypts(codec)
    body = b'{"a":"' + b"x" * 3000 + b'"}'
    sealed = [codec.seal(hash_session_id(f"{n:043d}"), body) for n in range(2000)]
    kept = sum(len(c) + len(p) for c, p in codec._kept._entries.items())
    assert OPENED_BYTES_KEPT // 2 < kept <= codec._kept.size <= OPENED_BYTES_KEPT  # 14 MB written
    assert codec.open(hash_session_id(f"{1999:043d}"), sealed[-1])[0]["a"] == "x" * 3000
    assert codec.open(hash_session_id(f"{0:043d}"), sealed[0])[0]["a"] == "x" * 3000
    assert decrypts.count == 1  # the newest was kept, the oldest had gone
    big = codec.seal(hash_session_id("b" * 43), b'{"a":"' + b"x" * 500_000 + b'"}')
    codec.open(hash_session_id("b" * 43), big)
    assert decrypts.count == 2 and big not in codec._kept  # too large to keep


def test_the_plaintext_used_last_is_the_last_dropped() -> None:
    codec = PayloadCodec([derive_fernet_key("k" * 32)], max_bytes=1 << 20)
    decrypts = CountingDecrypts(codec)
    body = b'{"a":"' + b"x" * 3000 + b'"}'
    first = codec.seal(hash_session_id("f" * 43), body)
    for n in range(2000):  # the first session is opened now and then: it stays
        codec.seal(hash_session_id(f"{n:043d}"), body)
        if n % 100 == 0:
            codec.open(hash_session_id("f" * 43), first)
    assert first in codec._kept and decrypts.count == 0


def test_a_deeply_nested_stored_document_is_rejected_not_crashing() -> None:
    codec = PayloadCodec([derive_fernet_key("k" * 32)], max_bytes=1 << 22)
    id_hash = hash_session_id("y" * 43)
    bomb = b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    with pytest.raises(InvalidPayload):
        codec.open(id_hash, codec.seal(id_hash, bomb))


def test_a_huge_stored_payload_is_refused_unread() -> None:
    writer = PayloadCodec([derive_fernet_key("k" * 32)], max_bytes=1 << 22)
    reader = PayloadCodec([derive_fernet_key("k" * 32)], max_bytes=1 << 16)
    id_hash = hash_session_id("z" * 43)
    largest = writer.seal(id_hash, b'{"a":"' + b"x" * ((1 << 16) - 8) + b'"}')
    assert reader.open(id_hash, largest)[0]["a"].startswith("x")  # at the limit: opens
    huge = writer.seal(id_hash, b'{"a":"' + b"x" * (3 << 20) + b'"}')
    with pytest.raises(InvalidPayload, match="far larger"):
        reader.open(id_hash, huge)
