"""The drift guard's reference: per-question scores, cached by version and question hash, compared on shared questions."""

from __future__ import annotations

from fragua.data.records import Message
from fragua.settings import ValidateSettings
from fragua.validate.drift import (
    ScoreCache,
    best_reference,
    compare_on_shared,
    question_key,
    scoring_key,
)
from fragua.validate.scoring import EvalItem, ItemResult


def item(question: str, reference: str = "a") -> EvalItem:
    prompt = (Message(role="user", content=question),)
    return EvalItem(id=question, domain="d", prompt=prompt, reference=reference, conversation=prompt + (Message(role="assistant", content=reference),))


def result(key: str, f1: float) -> ItemResult:
    return ItemResult(id=key, domain="d", question=key, reference="a", prediction="a", exact_match=f1, token_f1=f1, rouge_l=f1)


def test_question_keys_follow_content_not_ids():
    assert question_key(item("q1")) == question_key(item("q1"))
    assert question_key(item("q1")) != question_key(item("q1", reference="b"))
    assert scoring_key(ValidateSettings(), 256) == scoring_key(ValidateSettings(min_score=0.9), 256)  # thresholds do not change scores
    assert scoring_key(ValidateSettings(), 256) != scoring_key(ValidateSettings(max_new_tokens=8), 256)


def test_only_questions_both_versions_were_scored_on_are_compared():
    candidate = {"q1": result("q1", 0.2), "q2": result("q2", 0.2), "q3": result("q3", 1.0)}
    reference = {"q1": result("q1", 0.6), "q2": result("q2", 0.4), "old": result("old", 0.0)}
    comparison = compare_on_shared("acme-tiny-v1", candidate, reference, pinned=False)
    assert comparison.shared == 2
    assert comparison.candidate.token_f1 == 0.2 and abs(comparison.reference.token_f1 - 0.5) < 1e-9
    assert compare_on_shared("acme-tiny-v1", candidate, {"old": result("old", 1.0)}, pinned=False) is None


def test_the_best_reference_is_the_version_with_the_best_primary_metric_on_its_shared_questions():
    candidate = {f"q{i}": result(f"q{i}", 0.3) for i in range(4)}
    references = {
        "acme-tiny-v1": {"q0": result("q0", 0.5), "q1": result("q1", 0.5)},
        "acme-tiny-v2": {f"q{i}": result(f"q{i}", 0.4) for i in range(4)},
        "acme-tiny-v3": {"elsewhere": result("elsewhere", 1.0)},
    }
    best = best_reference(candidate, references, ValidateSettings())
    assert (best.version, best.shared, best.reference.token_f1) == ("acme-tiny-v1", 2, 0.5)
    rouge = best_reference(candidate, {**references, "acme-tiny-v4": {"q3": result("q3", 0.5)}}, ValidateSettings(primary_metric="rouge_l"))
    assert rouge.version == "acme-tiny-v4"  # the newer one on a tie
    assert best_reference(candidate, {}, ValidateSettings()) is None


def test_the_score_cache_merges_and_survives_a_reload(tmp_path):
    cache = ScoreCache(tmp_path, "k1")
    cache.save("versions", "acme-tiny-v1", {"q1": result("q1", 0.5)})
    cache.save("versions", "acme-tiny-v1", {"q2": result("q2", 0.7)})
    assert set(ScoreCache(tmp_path, "k1").load("versions", "acme-tiny-v1")) == {"q1", "q2"}
    assert ScoreCache(tmp_path, "other-settings").load("versions", "acme-tiny-v1") == {}
    cache.save("runs", "r1", {"q3": result("q3", 0.1)}, merge=False)
    cache.save("runs", "r1", {"q4": result("q4", 0.1)}, merge=False)
    assert set(cache.load("runs", "r1")) == {"q4"}


def test_a_pinned_reference_must_be_a_version_name():
    import pytest
    from pydantic import ValidationError

    assert ValidateSettings(reference_version="fragua-tiny-v3").reference_version == "fragua-tiny-v3"
    with pytest.raises(ValidationError, match="reference_version"):
        ValidateSettings(reference_version="../fragua-tiny-v3")
