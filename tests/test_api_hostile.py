"""Hostile input to a real `fragua serve-api` process: lone surrogates, NaN, huge numbers, deep
nesting, random JSON and random bytes get 4xx naming the field, never a 5xx; the keep-alive
connection stays usable and the server stays up."""

from __future__ import annotations

import json
from http.client import HTTPConnection
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .apiserver import ApiServer

TOKEN = "hostile-token-2718"
JSON = {"Content-Type": "application/json"}
AUTH = {"Authorization": f"Bearer {TOKEN}", **JSON}
FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Any:
    server = ApiServer(tmp_path_factory.mktemp("hostile") / "work", TOKEN)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(api) -> Any:
    with httpx.Client(base_url=api.url, timeout=60) as http:
        yield http


def nested_meta(levels: int) -> dict[str, Any]:
    """A meta object ``levels`` deep (meta itself is level 1)."""
    meta: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        meta = {"inner": meta}
    return meta


def pending(client: httpx.Client) -> int:
    return client.get("/stats", headers=AUTH).json()["examples"]["pending"]


QA = '"question": "Where is the gym?", "answer": "Floor 2."'
CASES = [
    # (path, raw body, the error's loc)
    ("/examples", b'{"messages": [{"role": "user", "content": "x\\ud800y"}, {"role": "assistant", "content": "ok"}]}', ["body", "messages", 0, "content"]),
    ("/examples", b'{"question": "x\\udfffy", "answer": 1}', ["body", "question"]),  # invalid in two ways: still no 500
    ("/examples", b'{' + QA.encode() + b', "meta": {"\\ud83d": 1}}', ["body", "meta", "\\ud83d"]),
    ("/examples", b'{' + QA.encode() + b', "meta": {"score": NaN}}', ["body", "meta", "score"]),
    ("/examples", b'{' + QA.encode() + b', "meta": {"scores": [1, -Infinity]}}', ["body", "meta", "scores", 1]),
    ("/examples", b'{' + QA.encode() + b', "meta": {"big": 1e400}}', ["body", "meta", "big"]),
    ("/examples", b'{' + QA.encode() + b', "meta": {"id": 9223372036854775808}}', ["body", "meta", "id"]),
    ("/examples", b'{' + QA.encode() + b', "meta": {"id": -' + b"9" * 10_000 + b'}}', ["body", "meta", "id"]),
    ("/examples/batch", b'{"examples": [{' + QA.encode() + b'}, {' + QA.encode() + b', "domain": "\\udc00"}]}', ["body", "examples", 1, "domain"]),
    ("/examples", json.dumps({"question": "q", "answer": "a", "meta": nested_meta(33)}).encode(), ["body", "meta", *["inner"] * 32]),
    ("/examples", json.dumps({"question": "q", "answer": "a", "meta": nested_meta(300)}).encode(), ["body", "meta", *["inner"] * 32]),
    ("/examples", b'{"question": ' + b"[" * 100_000 + b"]" * 100_000 + b', "answer": "a"}', ["body"]),
    ("/examples", b'{"question": "caf\xe9", "answer": "a"}', ["body"]),  # Latin-1, not UTF-8
]


CASE_IDS = ["surrogate-in-message", "surrogate-and-wrong-type", "surrogate-key", "nan", "minus-infinity", "1e400", "2**63",
            "10000-digits", "surrogate-in-batch", "meta-33-deep", "meta-300-deep", "100000-deep", "latin-1"]


@pytest.mark.parametrize(("path", "body", "loc"), CASES, ids=CASE_IDS)
def test_unstorable_input_gets_422_naming_the_field_and_is_not_stored(client, path, body, loc):
    before = pending(client)
    response = client.post(path, content=body, headers=AUTH)
    assert response.status_code == 422, response.text
    [error] = [e for e in response.json()["detail"] if e["loc"] == loc]
    assert "input" not in error  # the rejected value is not echoed back ...
    json.dumps(response.json(), ensure_ascii=False).encode("utf-8")  # ... and the answer is valid UTF-8 throughout
    assert pending(client) == before


def test_meta_up_to_the_depth_limit_and_64_bit_numbers_are_stored_and_read_back_exactly(client):
    meta = {"deep": nested_meta(31), "low": -(2**63), "high": 2**63 - 1, "ratio": 0.25, "emoji": "\U0001f600"}
    response = client.post("/examples", json={"question": "Late check-out?", "answer": "Until 13:00.", "meta": meta}, headers=AUTH)
    assert response.status_code == 201, response.text
    stored = client.get("/examples/pending", params={"after_id": response.json()["id"] - 1, "limit": 1}, headers=AUTH)
    assert json.loads(stored.text)["examples"][0]["meta"] == meta
    assert client.get("/examples/pending", params={"after_id": 2**63}, headers=AUTH).status_code == 422


def test_the_token_is_checked_before_the_body_is_read(client):
    assert client.post("/examples", content=b"{not json", headers=JSON).status_code == 401
    assert client.post("/examples/batch", content=b'{"examples": [NaN]}', headers={**JSON, "Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/examples", content=b"{not json", headers=AUTH).status_code == 422


def test_a_rejected_body_leaves_the_keep_alive_connection_usable(api):
    connection = HTTPConnection("127.0.0.1", api.port, timeout=60)
    bodies = [b'{"question": "x\\ud800y", "answer": "a"}', b'{"question": "q", "answer": "a", "meta": {"n": 1' + b"0" * 40 + b"}}",
              json.dumps({"question": "q", "answer": "a", "meta": nested_meta(400)}).encode(), b"{not json"]
    try:
        connection.request("GET", "/health")
        connection.getresponse().read()
        socket = connection.sock
        for body in bodies:
            connection.request("POST", "/examples", body=body, headers=AUTH)
            response = connection.getresponse()
            response.read()
            assert response.status == 422 and not response.will_close
        connection.request("POST", "/examples", body=bodies[0] * 1000, headers=JSON)  # refused before its body is read
        response = connection.getresponse()
        response.read()
        assert response.status == 401 and not response.will_close
        connection.request("GET", "/health")
        assert connection.getresponse().status == 200
        assert connection.sock is socket  # every request went over the one connection
    finally:
        connection.close()


LONE_SURROGATE = st.tuples(st.text(max_size=10), st.characters(categories=["Cs"]), st.text(max_size=10)).map("".join)
TEXT = st.text(st.characters(codec=None, categories=None, exclude_categories=()), max_size=30) | LONE_SURROGATE
LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON_VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=25)
WORDS = st.text(max_size=30).map(lambda text: "w" + text)  # never blank, never a lone surrogate: often a valid field
FIELD = WORDS | WORDS | TEXT | LEAVES | JSON_VALUES
META = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4) | JSON_VALUES | st.integers(1, 300).map(nested_meta)
EXAMPLE = st.fixed_dictionaries(
    {"question": FIELD, "answer": FIELD},
    optional={"meta": META, "domain": FIELD, "system": FIELD, "idempotency_key": st.sampled_from(["k1", "k2", " ", "a\x00b"]) | FIELD},
)
CONVERSATION = st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant", "tool", "robot"]), "content": FIELD}), max_size=4)}, optional={"meta": META})
BODIES = st.one_of(EXAMPLE, CONVERSATION, st.fixed_dictionaries({"examples": st.lists(EXAMPLE | CONVERSATION, max_size=4)}), JSON_VALUES)
HEADERS = st.sampled_from([AUTH, JSON, {**JSON, "Authorization": "Bearer nope"}])


def assert_up(api: ApiServer, client: httpx.Client) -> None:
    assert api.process is not None and api.process.poll() is None
    assert client.get("/health").json()["status"] == "ok"


def test_random_json_never_gets_a_5xx(api, client):
    statuses: set[int] = set()

    @FUZZ
    @given(path=st.sampled_from(["/examples", "/examples/batch"]), body=BODIES, ascii_only=st.booleans(), headers=HEADERS)
    def post(path: str, body: Any, ascii_only: bool, headers: dict[str, str]) -> None:
        raw = json.dumps(body, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")
        response = client.post(path, content=raw, headers=headers)
        assert response.status_code < 500, (raw[:300], response.text[:300])
        response.json()  # every answer is JSON, whatever came in
        statuses.add(response.status_code)

    post()
    assert_up(api, client)
    assert {201, 401, 422} <= statuses  # the fuzzing reached the store, the token check and the validation


def test_random_bytes_and_query_strings_never_get_a_5xx(api, client):
    @FUZZ
    @given(path=st.sampled_from(["/examples", "/examples/batch"]), body=st.binary(max_size=400),
           content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]),
           limit=TEXT | st.integers().map(str), after_id=TEXT | st.integers().map(str), authorised=st.booleans())
    def send(path: str, body: bytes, content_type: str, limit: str, after_id: str, authorised: bool) -> None:
        headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {TOKEN}"} if authorised else {})}
        response = client.post(path, content=body, headers=headers)
        assert response.status_code < 500, (body, response.text[:300])
        params = {"limit": limit.encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
                  "after_id": after_id.encode("utf-8", "surrogatepass").decode("utf-8", "replace")}
        response = client.get("/examples/pending", params=params, headers=headers)
        assert response.status_code < 500, (params, response.text[:300])

    send()
    assert_up(api, client)
