"""`fragua serve` as a real server process, spoken to with the official OpenAI client and httpx:
chat and text completions (whole and streamed), model choice by alias and version, the model
list, authentication, every kind of bad input, readiness, metrics and feedback."""

from __future__ import annotations

import json
import shutil
import signal

import httpx
import openai
import pytest

from .apiserver import ServeServer

pytestmark = pytest.mark.slow(seconds=90)

TOKEN = "serve-test-token"
QUESTION = [{"role": "user", "content": "What time is check-out?"}]


@pytest.fixture(scope="module")
def server(published_work, tmp_path_factory):
    template, versions = published_work
    work = tmp_path_factory.mktemp("serve") / "work"
    shutil.copytree(template, work)
    running = ServeServer(work, TOKEN, env={"FRAGUA_SERVE__MAX_BODY_BYTES": "65536", "FRAGUA_SERVE__MAX_PROMPT_TOKENS": "200",
                                            "FRAGUA_SERVE__MAX_TOKENS_LIMIT": "64", "FRAGUA_SERVE__DEFAULT_MAX_TOKENS": "8"})
    running.start()
    yield running, versions
    assert running.stop() == 128 + signal.SIGTERM, running.log()  # stopped cleanly, by SIGTERM


@pytest.fixture
def client(server):
    running, _ = server
    with openai.OpenAI(base_url=f"{running.url}/v1", api_key=TOKEN, max_retries=0, timeout=120) as client:
        yield client


def test_chat_completion_names_the_version_in_model_and_header(server, client):
    _, (v1, _) = server
    raw = client.chat.completions.with_raw_response.create(model="production", messages=QUESTION, max_tokens=6, temperature=0)
    answer = raw.parse()
    assert raw.headers["x-fragua-version"] == v1 and answer.model == v1
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].finish_reason in {"stop", "length"}
    usage = answer.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 6 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    again = client.chat.completions.create(model="production", messages=QUESTION, max_tokens=6, temperature=0)
    assert again.choices[0].message.content == answer.choices[0].message.content  # greedy is deterministic


def test_streamed_chat_adds_up_to_the_whole_answer_and_ends_with_usage(server, client):
    _, (v1, _) = server
    whole = client.chat.completions.create(model=v1, messages=QUESTION, max_tokens=12, temperature=0)
    raw = client.chat.completions.with_raw_response.create(
        model=v1, messages=QUESTION, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True},
    )
    assert raw.headers["x-fragua-version"] == v1 and raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert all(c.model == v1 and c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_the_stream_ends_with_done(server):
    running, (v1, _) = server
    body = {"model": v1, "messages": QUESTION, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{running.url}/v1/chat/completions", json=body, headers=running.headers, timeout=120) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in events)
    assert all("usage" not in json.loads(line[6:]) for line in events[:-1])  # no include_usage: no usage field


def test_text_completions_whole_and_streamed(server, client):
    _, (v1, _) = server
    raw = client.completions.with_raw_response.create(model="production", prompt="The hotel's check-out time is", max_tokens=8, temperature=0)
    whole = raw.parse()
    assert raw.headers["x-fragua-version"] == v1 and whole.model == v1
    assert whole.id.startswith("cmpl-") and whole.object == "text_completion" and whole.usage.completion_tokens <= 8
    streamed = list(client.completions.create(model="production", prompt=["The hotel's check-out time is"], max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    assert streamed[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_a_version_or_an_alias_chooses_the_model(server, client):
    _, (v1, v2) = server
    for model, expected in (("production", v1), (v1, v1), (v2, v2)):
        raw = client.chat.completions.with_raw_response.create(model=model, messages=QUESTION, max_tokens=2)
        assert raw.headers["x-fragua-version"] == expected and raw.parse().model == expected
    listed = client.models.list()
    ids = [m.id for m in listed.data]
    assert ids == ["production", v1, v2]
    assert {m.id: m.model_extra["root"] for m in listed.data}["production"] == v1
    assert all(m.owned_by == "fragua" and m.created > 0 for m in listed.data)


def test_a_request_without_model_gets_the_default(server):
    running, (v1, _) = server
    response = httpx.post(f"{running.url}/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 2}, headers=running.headers, timeout=120)
    assert response.status_code == 200 and response.json()["model"] == v1 and response.headers["x-fragua-version"] == v1


def test_a_wrong_or_missing_key_is_refused_before_the_body_is_read(server):
    running, _ = server
    with openai.OpenAI(base_url=f"{running.url}/v1", api_key="wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as refused:
            wrong.chat.completions.create(model="production", messages=QUESTION)
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    for headers in ({}, {"Authorization": f"Basic {TOKEN}"}):
        response = httpx.post(f"{running.url}/v1/chat/completions", content=b"{not json", headers=headers, timeout=30)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    for path in ("/v1/models", "/admin/reload"):
        assert httpx.request("GET" if "models" in path else "POST", f"{running.url}{path}", timeout=30).status_code == 401
    assert httpx.get(f"{running.url}/health", timeout=30).status_code == 200  # probes need no key


def test_an_unknown_model_is_a_404(server, client):
    for model in ("no-such-model", "fragua-tiny-v99", "../../etc/passwd"):
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model=model, messages=QUESTION)
        assert missing.value.code == "model_not_found" and missing.value.param == "model"


@pytest.mark.parametrize(("change", "param"), [
    ({"n": 2}, "n"),
    ({"max_tokens": 65}, "max_tokens"),
    ({"max_completion_tokens": 1000}, "max_completion_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content[0]"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"logprobs": True}, "logprobs"),
    ({"stream": "yes"}, "stream"),
    ({"seed": 2**70}, "seed"),
    ({"model": 5}, "model"),
])
def test_bad_parameters_are_400s_naming_the_parameter(server, change, param):
    running, _ = server
    body = {"model": "production", "messages": QUESTION, **change}
    response = httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=running.headers, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_unknown_fields_are_ignored_and_harmless_openai_defaults_accepted(server):
    running, (v1, _) = server
    body = {"model": "production", "messages": QUESTION, "max_tokens": 2, "some_future_field": {"x": 1}, "presence_penalty": 0,
            "logprobs": False, "n": 1, "user": "guest-7"}
    response = httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=running.headers, timeout=60)
    assert response.status_code == 200 and response.json()["model"] == v1


def test_malformed_bodies_are_400s_never_500s(server):
    running, _ = server
    url = f"{running.url}/v1/chat/completions"
    bodies = [
        b"{not json",
        b'{"model": "production", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"model": "production", "messages": QUESTION, "temperature": NaN}',
        b'{"model": "production", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1' + b"0" * 400 + b"}",
        b"[" * 5000 + b"]" * 5000,
        b"\xff\xfe",
        b"[]",
    ]
    for body in bodies:
        response = httpx.post(url, content=body, headers={**running.headers, "Content-Type": "application/json"}, timeout=60)
        assert response.status_code == 400, (body[:60], response.text)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_limits_on_body_size_and_prompt_length(server, client):
    running, _ = server
    huge = {"model": "production", "messages": [{"role": "user", "content": "x" * 70_000}]}
    response = httpx.post(f"{running.url}/v1/chat/completions", json=huge, headers=running.headers, timeout=60)
    assert response.status_code == 413 and "serve.max_body_bytes" in response.json()["error"]["message"]
    long_prompt = [{"role": "user", "content": "check-out time please " * 120}]
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="production", messages=long_prompt, max_tokens=4)
    assert too_long.value.code == "context_length_exceeded" and too_long.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as streamed_too_long:
        list(client.completions.create(model="production", prompt="check-out " * 300, max_tokens=4, stream=True))
    assert streamed_too_long.value.param == "prompt"


def test_ready_health_and_per_version_metrics(server, client):
    running, (v1, v2) = server
    ready = httpx.get(f"{running.url}/ready", timeout=30)
    assert ready.status_code == 200 and ready.json()["routes"]["production"] == v1
    client.chat.completions.create(model=v2, messages=QUESTION, max_tokens=3)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=QUESTION)
    metrics = httpx.get(f"{running.url}/metrics", timeout=30)
    assert metrics.status_code == 200
    text = metrics.text
    assert f'fragua_serve_requests_total{{endpoint="chat",status="200",version="{v2}"}}' in text
    assert 'fragua_serve_requests_total{endpoint="chat",status="404",version="none"}' in text
    assert 'fragua_serve_errors_total{code="model_not_found",endpoint="chat",version="none"}' in text
    assert f'fragua_serve_request_seconds_count{{endpoint="chat",version="{v2}"}}' in text
    assert f'fragua_serve_generated_tokens_total{{version="{v2}"}}' in text
    assert f'fragua_serve_loaded_version{{version="{v1}"}} 1.0' in text
    assert f'fragua_serve_alias_version{{alias="production",version="{v1}"}} 1.0' in text


def test_feedback_rates_a_recent_answer_by_its_id(server, client):
    running, (_, v2) = server
    answer = client.chat.completions.create(model=v2, messages=QUESTION, max_tokens=3)
    url = f"{running.url}/v1/feedback"
    rated = httpx.post(url, json={"response_id": answer.id, "rating": 1}, headers=running.headers, timeout=30)
    assert rated.status_code == 200 and rated.json() == {"response_id": answer.id, "version": v2, "rating": 1, "correction": False}
    unknown = httpx.post(url, json={"response_id": "chatcmpl-unknown", "rating": -1}, headers=running.headers, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "response_id"
    for rating in (0, 5, "good", 0.5, None):
        bad = httpx.post(url, json={"response_id": answer.id, "rating": rating}, headers=running.headers, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"
    metrics = httpx.get(f"{running.url}/metrics", timeout=30).text
    assert f'fragua_serve_feedback_total{{rating="1",version="{v2}"}} 1.0' in metrics


def test_a_correction_becomes_a_pending_intake_example_once(server, client):
    """Feedback with a correction, with request logging off: the question comes from the answers the
    server holds, the example waits in the intake queue for autotrain, and the same feedback again
    changes nothing while different feedback for that answer is a conflict."""
    from fragua.intake.queue import IntakeQueue
    from fragua.settings import Settings

    running, (v1, _) = server
    answer = client.chat.completions.create(model="production", messages=QUESTION, max_tokens=3)
    url = f"{running.url}/v1/feedback"
    body = {"response_id": answer.id, "rating": -1, "correction": "Check-out is at 11:00."}
    for _ in range(2):
        rated = httpx.post(url, json=body, headers=running.headers, timeout=30)
        assert rated.status_code == 200 and rated.json() == {"response_id": answer.id, "version": v1, "rating": -1, "correction": True}
    conflict = httpx.post(url, json={**body, "correction": "At noon."}, headers=running.headers, timeout=30)
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "feedback_conflict"
    pending = IntakeQueue.from_settings(Settings(work_dir=running.work_dir)).examples("pending")
    corrected = [e for e in pending if e.record["messages"][-1]["content"] == "Check-out is at 11:00."]
    assert len(corrected) == 1
    assert corrected[0].record["messages"][0] == {"role": "user", "content": QUESTION[0]["content"]}
