"""The intake HTTP API: auth, limits, validation errors naming fields, idempotency, stats, force."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from fragua.flows.autotrain import forced_autotrain
from fragua.intake.api import create_app
from fragua.intake.queue import IntakeError
from fragua.settings import Settings

TOKEN = "unit-token-1618"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(work_dir=tmp_path / "work", tracking={"mode": "disabled"},
                    intake={"api_token": TOKEN, "max_request_bytes": 4096, "max_batch_examples": 3, "max_example_chars": 200})


@pytest.fixture
def client(settings) -> TestClient:
    return TestClient(create_app(settings, forced_autotrain))


def test_no_token_no_server(tmp_path):
    with pytest.raises(IntakeError, match="FRAGUA_INTAKE__API_TOKEN"):
        create_app(Settings(work_dir=tmp_path), forced_autotrain)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}])
def test_every_route_but_health_needs_the_token(client, headers):
    for method, path in [("post", "/examples"), ("post", "/examples/batch"), ("get", "/examples/pending"), ("get", "/stats"), ("post", "/training/force")]:
        response = getattr(client, method)(path, headers=headers, **({"json": {}} if method == "post" else {}))
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/health").json()["status"] == "ok"


def test_the_token_never_appears_in_the_openapi_document_or_settings_dump(client, settings):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").text
    assert "/examples/batch" in schema and TOKEN not in schema
    assert TOKEN not in str(settings.redacted())


def test_add_retry_and_conflict(client):
    body = {"question": "When is breakfast?", "answer": "From 7 to 10.", "idempotency_key": "faq-1"}
    first = client.post("/examples", json=body, headers=AUTH)
    assert first.status_code == 201 and first.json()["created"] is True
    retry = client.post("/examples", json=body, headers=AUTH)
    assert retry.status_code == 200 and retry.json()["id"] == first.json()["id"] and retry.json()["created"] is False
    conflict = client.post("/examples", json={**body, "answer": "Never."}, headers=AUTH)
    assert conflict.status_code == 409 and "faq-1" in conflict.json()["detail"]
    header_key = client.post("/examples", json={"question": "Pool?", "answer": "On the roof."}, headers={**AUTH, "Idempotency-Key": "faq-2"})
    assert header_key.json()["idempotency_key"] == "faq-2"


def test_bad_bodies_get_422_naming_the_field(client):
    missing = client.post("/examples", json={"question": "only a question"}, headers=AUTH)
    assert missing.status_code == 422 and "answer" in missing.json()["detail"][0]["msg"]
    wrong_type = client.post("/examples", json={"question": 3, "answer": "x"}, headers=AUTH)
    assert wrong_type.status_code == 422 and wrong_type.json()["detail"][0]["loc"] == ["body", "question"]
    extra = client.post("/examples", json={"question": "q", "answer": "a", "colour": "red"}, headers=AUTH)
    assert extra.json()["detail"][0]["loc"] == ["body", "colour"]
    too_long = client.post("/examples", json={"question": "q" * 201, "answer": "a"}, headers=AUTH)
    assert too_long.status_code == 422 and too_long.json()["detail"][0]["loc"] == ["body", "question"]
    in_batch = client.post("/examples/batch", json={"examples": [{"question": "q", "answer": "a"}, {"question": "q"}]}, headers=AUTH)
    assert in_batch.status_code == 422 and in_batch.json()["detail"][0]["loc"][:3] == ["body", "examples", 1]
    bad_conversation = client.post("/examples", json={"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, headers=AUTH)
    assert bad_conversation.status_code == 422 and bad_conversation.json()["detail"][0]["loc"] == ["body", "messages"]
    too_many = client.post("/examples/batch", json={"examples": [{"question": f"q{i}", "answer": "a"} for i in range(4)]}, headers=AUTH)
    assert too_many.status_code == 422 and "max_batch_examples" in too_many.json()["detail"][0]["msg"]
    assert client.get("/stats", headers=AUTH).json()["examples"]["pending"] == 0


def test_request_size_limit(client):
    big = {"question": "q", "answer": "a", "meta": {"blob": "x" * 5000}}
    assert client.post("/examples", json=big, headers=AUTH).status_code == 413

    def chunks():
        yield b'{"question": "q", "answer": "a", "meta": {"blob": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}}'

    streamed = client.post("/examples", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert client.post("/examples", json={"question": "q", "answer": "a", "meta": {"small": 1}}, headers=AUTH).status_code == 201


def test_pending_pages_and_stats(client):
    client.post("/examples/batch", json={"examples": [{"question": f"q{i}", "answer": f"a{i}", "domain": "hotel"} for i in range(3)]}, headers=AUTH)
    page = client.get("/examples/pending", params={"limit": 2}, headers=AUTH).json()
    assert page["count"] == 3 and [e["messages"][0]["content"] for e in page["examples"]] == ["q0", "q1"]
    rest = client.get("/examples/pending", params={"after_id": page["examples"][-1]["id"]}, headers=AUTH).json()
    assert [e["messages"][0]["content"] for e in rest["examples"]] == ["q2"] and rest["examples"][0]["domain"] == "hotel"
    stats = client.get("/stats", headers=AUTH).json()
    assert stats == {"production_version": None, "examples": {"pending": 3, "training": 0, "trained": 0, "duplicate": 0}, "min_new_examples": 10,
                     "last_training": None, "last_run": None}


def test_force_goes_through_the_deployment_when_a_server_is_configured(client, monkeypatch):
    import fragua.intake.api as api

    started = []
    monkeypatch.setattr(api, "prefect_server_configured", lambda: True)
    monkeypatch.setattr(api, "start_deployment", lambda name: started.append(name) or "0b5e7c1e-0000-0000-0000-000000000000")
    response = client.post("/training/force", headers=AUTH)
    assert response.status_code == 202
    assert response.json()["mode"] == "deployment" and started == ["autotrain/on-demand"]


def test_force_without_a_server_runs_autotrain_in_process(prefect_api, tmp_path, monkeypatch):
    import fragua.intake.api as api

    monkeypatch.setattr(api, "prefect_server_configured", lambda: False)
    settings = Settings(work_dir=tmp_path / "work", tracking={"mode": "disabled"}, intake={"api_token": TOKEN},
                        data={"sources": [{"path": str(tmp_path / "missing.jsonl")}]})
    app = create_app(settings, forced_autotrain)
    client = TestClient(app)
    client.post("/examples", json={"question": "Sauna?", "answer": "Floor 3."}, headers=AUTH)
    response = client.post("/training/force", headers=AUTH)
    assert response.status_code == 202 and response.json()["mode"] == "in-process"
    app.state.forced_runs.join(timeout=120)
    assert "missing.jsonl" in app.state.forced_runs.last_error  # the run failed at ingest ...
    stats = client.get("/stats", headers=AUTH).json()
    assert stats["examples"]["pending"] == 1 and stats["last_run"]["state"] == "failed"  # ... and left the example pending


def test_a_database_lost_mid_service_answers_503_and_the_client_may_retry(tmp_path):
    """The queue's PostgreSQL database dropped while the API runs: 503 with Retry-After and one
    sentence, never a 500 with SQLAlchemy's text."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from .pgdatabase import ADMIN_URL, fresh_database

    with fresh_database() as url:
        settings = Settings(work_dir=tmp_path / "work", tracking={"mode": "disabled"}, intake={"api_token": TOKEN, "database_url": url})
        client = TestClient(create_app(settings, forced_autotrain))
        example = {"question": "Where is the gym?", "answer": "On floor 2."}
        assert client.post("/examples", json=example, headers=AUTH).status_code == 201
        admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
        admin.dispose()
        lost = client.post("/examples", json={**example, "question": "Is there a pool?"}, headers=AUTH)
        assert lost.status_code == 503, lost.text
        assert lost.headers["retry-after"] == "5"
        assert lost.json() == {"detail": "the intake queue's database is unavailable; nothing was stored, retry later"}
