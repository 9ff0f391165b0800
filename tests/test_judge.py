"""The judge over a real OpenAI-compatible endpoint on 127.0.0.1 and over a local model folder:
rubric prompts, strict replies with one retry, caching, the pairwise win rate and its gate."""

from __future__ import annotations

import re
import socket

import pytest
from pydantic import SecretStr

from fragua.jobs.judging import open_judge
from fragua.settings import ValidateSettings
from fragua.validate.gates import decide
from fragua.validate.judge import RUBRIC_VERSION, Judge, JudgeError, JudgeItem, JudgeVerdict, parse_reply
from fragua.validate.judge_backends import EndpointJudge
from fragua.validate.pairwise import AnswerPair, judge_pairs, largest_differences, outcome, wilson_interval, win_rate
from fragua.validate.scoring import MetricSet
from tests.conftest import make_settings
from tests.judgeserver import JudgeServer

ITEMS = [
    JudgeItem("When does breakfast end?", ("10:30",), "Breakfast ends at 10:30."),
    JudgeItem("Where is breakfast served?", ("the Forja restaurant", "the ground floor"), "On the ground floor."),
    JudgeItem("What is the pool temperature?", ("28 degrees in winter",), "It is heated in winter."),
    JudgeItem("How many rooms?", ("120",), "Seven floors."),
]


@pytest.fixture(scope="module")
def judge_server():
    server = JudgeServer()
    server.start()
    yield server
    server.stop()


def endpoint_judge(server: JudgeServer, tmp_path, model: str = "follow", key: str | None = None) -> Judge:
    backend = EndpointJudge(server.url, model, api_key=SecretStr(key) if key else None, max_new_tokens=64, timeout_s=60, concurrency=2)
    return Judge(backend, tmp_path / "judge")


def requests_for(server: JudgeServer, model: str) -> list[dict]:
    return [r for r in server.requests if r["body"]["model"] == model]


def test_verdicts_follow_the_rubric_and_are_cached(judge_server, tmp_path):
    judge = endpoint_judge(judge_server, tmp_path)
    before = len(requests_for(judge_server, "follow"))
    verdicts = judge.verdicts(ITEMS)
    assert [v.verdict for v in verdicts] == ["correct", "correct", "partially correct", "incorrect"]
    assert [v.score for v in verdicts] == [1.0, 1.0, 0.5, 0.0]
    assert verdicts[3].missing == ["120"]
    sent = requests_for(judge_server, "follow")[before:]
    assert len(sent) == 4 and all(r["body"]["temperature"] == 0 and r["authorization"] is None for r in sent)
    system, user = next(r for r in sent if "When does breakfast end?" in r["body"]["messages"][1]["content"])["body"]["messages"]
    assert system["role"] == "system" and "partially correct" in system["content"] and "one JSON object" in system["content"]
    assert "Question:\nWhen does breakfast end?" in user["content"] and "Answer:\nBreakfast ends at 10:30." in user["content"]
    multi = next(r for r in sent if "Where is breakfast" in r["body"]["messages"][1]["content"])
    assert "References (any one is correct):\n- the Forja restaurant\n- the ground floor" in multi["body"]["messages"][1]["content"]
    # A new judge object on the same folder (the next validation) asks nothing again.
    again = endpoint_judge(judge_server, tmp_path).verdicts(ITEMS)
    assert again == verdicts and len(requests_for(judge_server, "follow")) == before + 4
    # Another answer is another question for the judge; another judge keeps its own verdicts.
    endpoint_judge(judge_server, tmp_path).verdicts([JudgeItem("How many rooms?", ("120",), "120 rooms.")])
    assert len(requests_for(judge_server, "follow")) == before + 5
    assert judge.cache.path.is_file() and endpoint_judge(judge_server, tmp_path, "first").cache.entries == {}


def test_the_rubric_is_in_the_questions_language(judge_server, tmp_path):
    item = JudgeItem("¿A qué hora termina el desayuno en el hotel?", ("A las 10:30.",), "Termina a las 10:30.")
    before = len(requests_for(judge_server, "follow"))
    (verdict,) = endpoint_judge(judge_server, tmp_path).verdicts([item])
    assert verdict.verdict == "correct"
    system, user = requests_for(judge_server, "follow")[before]["body"]["messages"]
    assert system["content"].startswith("Calificas respuestas") and "Pregunta:\n¿A qué hora" in user["content"] and "Respuesta:\n" in user["content"]


def test_an_unreadable_reply_is_asked_again_once_then_fails_clearly(judge_server, tmp_path):
    verdicts = endpoint_judge(judge_server, tmp_path, "garbled-once").verdicts(ITEMS[:2])
    assert [v.verdict for v in verdicts] == ["correct", "correct"]
    assert len(requests_for(judge_server, "garbled-once")) == 4
    with pytest.raises(JudgeError) as caught:
        endpoint_judge(judge_server, tmp_path, "garbled").verdicts(ITEMS[:2])
    message = str(caught.value)
    assert "answered 2 of 2 prompt(s) unreadably twice" in message and "no JSON object in the reply" in message
    assert "'I think the answer is quite good overall.'" in message and "When does breakfast end?" in message
    assert len(requests_for(judge_server, "garbled")) == 4


def test_reply_parsing_is_strict():
    assert parse_reply('```json\n{"verdict": "incorrect", "missing": ["x"]}\n```', JudgeVerdict).missing == ["x"]
    assert parse_reply('Verdict follows. {"verdict": "correct"}', JudgeVerdict).verdict == "correct"
    for bad in ('{"verdict": "mostly right"}', "VERDICT: correct", '{"verdict": "correct", "missing": "all"}', "{broken"):
        with pytest.raises(ValueError):
            parse_reply(bad, JudgeVerdict)


def test_an_unreachable_or_refusing_endpoint_fails_the_step(judge_server, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    unreachable = Judge(EndpointJudge(f"http://127.0.0.1:{closed}/v1", "follow", api_key=None, max_new_tokens=64, timeout_s=10, concurrency=1), tmp_path)
    with pytest.raises(JudgeError, match=rf"judge endpoint http://127.0.0.1:{closed}/v1/chat/completions is unreachable \(ConnectError"):
        unreachable.verdicts(ITEMS[:1])
    with pytest.raises(JudgeError) as caught:
        endpoint_judge(judge_server, tmp_path, "needs-key", key="sk-wrong-key").verdicts(ITEMS[:1])
    assert "answered HTTP 401" in str(caught.value) and "validate.judge.api_key_block" in str(caught.value)
    assert "sk-wrong-key" not in str(caught.value)
    (verdict,) = endpoint_judge(judge_server, tmp_path, "needs-key", key="sk-judge-test").verdicts(ITEMS[:1])
    assert verdict.verdict == "correct" and requests_for(judge_server, "needs-key")[-1]["authorization"] == "Bearer sk-judge-test"


def test_the_api_key_comes_from_a_prefect_secret_block(judge_server, tmp_path, prefect_api):
    from prefect.blocks.system import Secret

    Secret(value="sk-judge-test").save("fragua-judge-key", overwrite=True)
    settings = make_settings(tmp_path, validate={"judge": {"model": "needs-key", "endpoint": judge_server.url, "api_key_block": "fragua-judge-key"}})
    (verdict,) = open_judge(settings).verdicts(ITEMS[:1])
    assert verdict.verdict == "correct"
    missing = make_settings(tmp_path, validate={"judge": {"model": "needs-key", "endpoint": judge_server.url, "api_key_block": "no-such-key"}})
    with pytest.raises(JudgeError, match="cannot load the Secret block 'secret/no-such-key' named by validate.judge.api_key_block"):
        open_judge(missing)


def test_pairwise_verdicts_in_both_orders_cancel_position_bias(judge_server, tmp_path):
    pairs = [
        AnswerPair(id="1", domain="hotel", question=ITEMS[0].question, reference="10:30", candidate="It ends at 10:30.", production="At nine."),
        AnswerPair(id="2", domain="hotel", question=ITEMS[3].question, reference="120", candidate="Many.", production="120 rooms."),
        AnswerPair(id="3", domain="hotel", question=ITEMS[2].question, reference="28 degrees in winter", candidate="Warm.", production="Cosy."),
    ]
    items = [JudgeItem(p.question, (p.reference,), "") for p in pairs]
    rate = judge_pairs(endpoint_judge(judge_server, tmp_path), items, [p.model_copy() for p in pairs])
    assert (rate.wins, rate.ties, rate.losses) == (1, 1, 1) and rate.rate == pytest.approx(0.5)
    asked = [r["body"]["messages"][1]["content"] for r in requests_for(judge_server, "follow") if "Answer A:\nIt ends at 10:30." in r["body"]["messages"][1]["content"]
             or "Answer A:\nAt nine." in r["body"]["messages"][1]["content"]]
    assert len(asked) == 2  # both orders
    biased = judge_pairs(endpoint_judge(judge_server, tmp_path, "first"), items, [p.model_copy() for p in pairs])
    assert (biased.wins, biased.ties, biased.losses) == (0, 3, 0)


def test_win_rate_counts_and_wilson_interval():
    assert [outcome(a, b) for a, b in (("A", "B"), ("A", "tie"), ("tie", "tie"), ("A", "A"), ("B", "tie"), ("B", "A"))] == [
        "win", "win", "tie", "tie", "loss", "loss"]
    rate = win_rate(["win"] * 7 + ["tie"] * 2 + ["loss"])
    assert rate.rate == pytest.approx(0.8) and rate.n == 10
    # Wilson interval of 8/10 at 95%: 0.4902-0.9433 (published tables).
    assert (rate.low, rate.high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_largest_differences_rank_by_score_gap_then_word_overlap():
    pairs = [
        AnswerPair(id=str(i), domain="d", question=f"q{i}", reference="r", candidate=c, production=p, candidate_score=cs, production_score=ps)
        for i, (c, p, cs, ps) in enumerate([
            ("same", "same", 1.0, 0.0), ("a b c", "a b d", 0.5, 0.5), ("x", "y", 0.5, 0.5), ("right", "wrong", 1.0, 0.0), ("p q", "p r", 1.0, 0.5),
        ])
    ]
    assert [p.id for p in largest_differences(pairs, count=3)] == ["3", "4", "2"]


def test_win_rate_and_judge_score_gate_promotion():
    settings = ValidateSettings(min_score=0.1, min_win_rate=0.55, min_metrics={"judge_score": 0.5}, judge={"model": "gpt-judge", "endpoint": "http://127.0.0.1:9/v1"})
    metrics = MetricSet(n=10, token_f1=0.4, judge_score=0.6, n_judged=10)
    passed = decide(metrics, settings, production=metrics, production_version="acme-tiny-v2", win_rate=win_rate(["win"] * 6 + ["loss"] * 4))
    assert passed.passed and any("win rate against production acme-tiny-v2 0.6000" in r and ">= validate.min_win_rate 0.5500" in r for r in passed.reasons)
    failed = decide(metrics, settings, production=metrics, production_version="acme-tiny-v2", win_rate=win_rate(["win"] * 2 + ["tie"] + ["loss"] * 3))
    assert not failed.passed and failed.failed_metrics == ["win_rate"] and "< validate.min_win_rate" in failed.reasons[0]
    first = decide(metrics, settings)
    assert first.passed and "PASS validate.min_win_rate: no production version to compare with yet" in first.reasons
    low = decide(metrics.model_copy(update={"judge_score": 0.4}), settings)
    assert low.failed_metrics == ["judge_score"] and "judge_score 0.4000 < validate.min_metrics.judge_score 0.5000" in low.reasons[0]


@pytest.mark.slow(seconds=40)
def test_a_local_model_folder_judges_through_the_same_rubric_and_fails_clearly_when_unreadable(tiny_base, tmp_path):
    settings = make_settings(tmp_path, validate={"judge": {"model": str(tiny_base), "max_new_tokens": 16, "concurrency": 4}})
    judge = open_judge(settings)
    assert judge.backend.identity.startswith(f"folder:{tiny_base.resolve()}:")
    replies = judge.backend.complete([[{"role": "system", "content": "Grade."}, {"role": "user", "content": "Question: 1+1?"}]])
    assert len(replies) == 1 and isinstance(replies[0], str)
    # The untrained tiny model cannot write the rubric's JSON: asked twice, then a clear failure, never a score.
    with pytest.raises(JudgeError, match=re.escape(f"judge folder {tiny_base} answered 2 of 2 prompt(s) unreadably twice (rubric v{RUBRIC_VERSION}")):
        judge.verdicts(ITEMS[:2])


def test_a_judge_that_is_neither_folder_nor_version_is_named(tmp_path):
    settings = make_settings(tmp_path, validate={"judge": {"model": "fragua-tiny-v9"}})
    with pytest.raises(JudgeError, match="validate.judge.model 'fragua-tiny-v9' is neither a model folder nor a registry version"):
        open_judge(settings)
