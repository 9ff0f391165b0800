"""Exact match and F1 agree with the official SQuAD v2 evaluation on a file with several gold
answers per question and unanswerable ones; eval-batch routes rows to domains as ingest does."""

from __future__ import annotations

import collections
import json
import re
import string
from collections import Counter
from pathlib import Path

import pytest

from fragua.data.ingest import collect
from fragua.settings import DataSettings, ValidateSettings
from fragua.validate.batch import read_questions
from fragua.validate.references import best_scores, gold_answers, is_abstention
from fragua.validate.scoring import EvalItem

FIXTURES = Path(__file__).parent / "fixtures" / "formats"


# The official SQuAD v2.0 evaluation script's rules (evaluate-v2.0.py), as the oracle.
def official_normalize(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", s)
    return " ".join(s.split())


def official_tokens(s: str) -> list[str]:
    return official_normalize(s).split() if s else []


def official_exact(gold: str, pred: str) -> int:
    return int(official_normalize(gold) == official_normalize(pred))


def official_f1(gold: str, pred: str) -> float:
    gold_toks, pred_toks = official_tokens(gold), official_tokens(pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision, recall = num_same / len(pred_toks), num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def official_scores(qa: dict, pred: str) -> tuple[float, float]:
    gold_answers = [a["text"] for a in qa["answers"] if official_normalize(a["text"])] or [""]
    return max(official_exact(a, pred) for a in gold_answers), max(official_f1(a, pred) for a in gold_answers)


CONTEXT = "The Forja restaurant serves breakfast from 7:00 to 10:30 on the ground floor; the rooftop pool opens at 9:00."
QAS = [
    {"id": "m1", "question": "Where is breakfast served?", "is_impossible": False, "answers": [
        {"text": "The Forja restaurant", "answer_start": CONTEXT.index("The Forja restaurant")}, {"text": "Forja restaurant", "answer_start": CONTEXT.index("Forja restaurant")},
        {"text": "the ground floor", "answer_start": CONTEXT.index("the ground floor")}]},
    {"id": "m2", "question": "When does breakfast end?", "is_impossible": False, "answers": [
        {"text": "10:30", "answer_start": CONTEXT.index("10:30")}, {"text": "to 10:30", "answer_start": CONTEXT.index("to 10:30")}]},
    {"id": "m3", "question": "When does the spa open?", "is_impossible": True, "answers": []},
    {"id": "m4", "question": "When does the pool open?", "is_impossible": False, "answers": [{"text": "9:00", "answer_start": CONTEXT.index("9:00")}]},
]
PREDICTIONS = {
    "m1": ["Forja restaurant", "on the ground floor", "in the lobby", "", "THE FORJA RESTAURANT!"],
    "m2": ["10:30", "until 10:30", "7:00", "unanswerable"],
    "m3": ["", "unanswerable", "  Unanswerable ", "9:00", "the spa opens at 9"],
    "m4": ["9:00", "at 9", "unanswerable", ""],
}


def squad_file(tmp_path: Path) -> Path:
    document = {"version": "v2.0", "data": [{"title": "Forja", "paragraphs": [{"context": CONTEXT, "qas": QAS}]}]}
    path = tmp_path / "multi.json"
    path.write_text(json.dumps(document))
    return path


def test_exact_match_and_f1_follow_the_official_rules_on_a_multi_answer_file(tmp_path):
    path = squad_file(tmp_path)
    records = collect(DataSettings(sources=[{"path": str(path)}])).records
    by_question = {r.prompt_messages[-1].content.rsplit("Question: ", 1)[1]: r for r in records}
    assert len(by_question) == len(QAS)
    checked = 0
    for qa in QAS:
        item = EvalItem.from_record(by_question[qa["question"]])
        for prediction in PREDICTIONS[qa["id"]]:
            official = official_scores(qa, "" if is_abstention(prediction, "unanswerable") else prediction)
            ours = best_scores(prediction, item.reference, item.references, normalization="official")
            assert ours == pytest.approx(official), (qa["id"], prediction)
            checked += 1
    assert checked == sum(len(p) for p in PREDICTIONS.values())
    # The best over every gold answer, not the first: "the ground floor" is the third.
    m1 = EvalItem.from_record(by_question["Where is breakfast served?"])
    assert best_scores("ground floor", m1.reference, m1.references) == (1.0, 1.0)
    assert best_scores("ground floor", m1.reference, None) == (0.0, 0.0)  # what scoring against the first answer gave
    # Unanswerable: abstaining (empty or the no-answer target) is right, anything else wrong.
    m3 = EvalItem.from_record(by_question["When does the spa open?"])
    assert m3.references == () and m3.reference == "unanswerable"
    assert [best_scores(p, m3.reference, m3.references) for p in ("", "Unanswerable", "9:00")] == [(1.0, 1.0), (1.0, 1.0), (0.0, 0.0)]


def test_the_fragua_normalisation_also_removes_unicode_punctuation():
    assert best_scores("«10:30»", "10:30", None, normalization="fragua") == (1.0, 1.0)
    assert best_scores("«10:30»", "10:30", None, normalization="official") == (0.0, 0.0)
    assert best_scores("¿Forja?", "Forja", ("Forja",), normalization="official")[0] == 0.0


def test_gold_answers_read_both_squad_shapes_and_leave_other_records_alone():
    assert gold_answers("a", {"answers": {"text": ["a", "b", "a"], "answer_start": [0, 1, 0]}}) == ("a", "b")
    assert gold_answers("a", {"answers": [{"text": "b", "answer_start": 1}]}) == ("a", "b")
    assert gold_answers("unanswerable", {"answers": {"text": [], "answer_start": []}}) == ()
    assert gold_answers("unanswerable", {"answers": [{"text": "x"}], "is_impossible": True}) == ()
    assert gold_answers("Paris", {"source_location": "line 3"}) is None
    assert gold_answers("A. one", {"answers": [{"aid": 1, "atext": "one"}]}) is None  # HEAD-QA options, not gold answers


def test_eval_batch_scores_squad_questions_against_every_answer(tmp_path):
    items = read_questions(squad_file(tmp_path), DataSettings(no_answer_text="no answer"))
    by_id = {item.question.rsplit("Question: ", 1)[1]: item for item in items}
    assert by_id["When does breakfast end?"].references == ("10:30", "to 10:30")
    spa = by_id["When does the spa open?"]
    assert spa.reference == "no answer" and spa.references == ()
    assert best_scores("No answer.", spa.reference, spa.references) == (1.0, 1.0)


def test_eval_batch_keeps_each_rows_domain_as_ingest_does(tmp_path):
    head_qa = FIXTURES / "head_qa_en.json"
    settings = DataSettings(sources=[{"path": str(head_qa)}], routing=[{"domain": "health", "categories": ["Medicine"]}], default_domain="misc")
    ingested = Counter(r.domain for r in collect(settings).records)
    evaluated = Counter(item.domain for item in read_questions(head_qa, settings))
    assert evaluated == ingested == Counter({"biology": 3, "health": 2, "nursing": 1})
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"question": "q1?", "answer": "a", "category": "Medicine"}) + "\n"
                     + json.dumps({"question": "q2?", "answer": "b", "domain": "own", "category": "Medicine"}) + "\n"
                     + json.dumps({"question": "q3?", "answer": "c"}) + "\n")
    assert [item.domain for item in read_questions(plain, settings)] == ["health", "own", "misc"]


def test_judge_score_needs_a_judge():
    with pytest.raises(ValueError, match="validate.primary_metric use judge_score but validate.judge.model is not set"):
        ValidateSettings(primary_metric="judge_score")
    with pytest.raises(ValueError, match="min_win_rate is set but validate.judge.model is not"):
        ValidateSettings(min_win_rate=0.5)
    assert ValidateSettings(primary_metric="judge_score", judge={"model": "fragua-tiny-v1"}).judge.configured
