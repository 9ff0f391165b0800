from __future__ import annotations

import math

from fragua.settings import ValidateSettings
from fragua.validate.gates import decide
from fragua.validate.scoring import MetricSet


def metrics(f1: float, loss: float = 2.0, em: float = 0.0) -> MetricSet:
    import math

    return MetricSet(n=10, loss=loss, perplexity=math.exp(loss), exact_match=em, token_f1=f1)


def test_passes_when_every_gate_passes():
    decision = decide(metrics(0.5), ValidateSettings(min_score=0.4), base=metrics(0.0, loss=8.0))
    assert decision.passed
    assert all(reason.startswith("PASS") for reason in decision.reasons)


def test_below_min_score_fails_naming_the_metric():
    decision = decide(metrics(0.3), ValidateSettings(min_score=0.8))
    assert not decision.passed
    assert decision.reasons[0] == "FAIL token_f1 0.3000 < validate.min_score 0.8000"


def test_must_beat_the_base_model_on_loss():
    decision = decide(metrics(0.5, loss=9.0), ValidateSettings(min_score=0.1), base=metrics(0.0, loss=8.0))
    assert not decision.passed
    assert any(r.startswith("FAIL validation loss 9.0000 >= base") for r in decision.reasons)


def test_regression_against_production_beyond_tolerance_fails():
    settings = ValidateSettings(min_score=0.1, regression_tolerance=0.05)
    ok = decide(metrics(0.46), settings, production=metrics(0.5), production_version="acme-tiny-v3")
    bad = decide(metrics(0.44), settings, production=metrics(0.5), production_version="acme-tiny-v3")
    assert ok.passed and not bad.passed
    assert "production acme-tiny-v3" in bad.reasons[0] and bad.reasons[0].startswith("FAIL token_f1 0.4400 <")
    assert bad.production_version == "acme-tiny-v3"


def test_all_failures_are_listed_first():
    settings = ValidateSettings(min_score=0.9, max_perplexity=5.0, primary_metric="exact_match")
    decision = decide(metrics(0.5, loss=3.0, em=0.2), settings, base=metrics(0.0, loss=2.0))
    fails = [r for r in decision.reasons if r.startswith("FAIL")]
    assert len(fails) == 3 and decision.reasons[:3] == fails
    assert "exact_match 0.2000" in fails[0] and "perplexity" in fails[1] and "base model" in fails[2]


def scores(**values) -> MetricSet:
    values.setdefault("loss", 2.0)
    return MetricSet(n=10, perplexity=math.exp(values["loss"]), **values)


def test_per_metric_minimums_name_the_metric_and_its_setting():
    settings = ValidateSettings(min_score=0.1, min_metrics={"rouge_l": 0.3, "mc_accuracy": 0.5})
    decision = decide(scores(token_f1=0.4, rouge_l=0.2, mc_accuracy=0.75), settings)
    assert not decision.passed
    assert decision.reasons[0] == "FAIL rouge_l 0.2000 < validate.min_metrics.rouge_l 0.3000"
    assert "PASS mc_accuracy 0.7500 >= validate.min_metrics.mc_accuracy 0.5000" in decision.reasons
    assert decision.failed_metrics == ["rouge_l"]


def test_a_primary_metric_the_validation_set_cannot_measure_fails_clearly():
    decision = decide(scores(token_f1=0.9), ValidateSettings(primary_metric="mc_accuracy", min_score=0.5))
    assert not decision.passed and decision.candidate is None
    assert decision.reasons[0] == (
        "FAIL mc_accuracy was not measured: the validation set has no multiple-choice items with an answer (validate.min_score needs it)"
    )


def test_beat_base_on_a_score_must_be_strictly_higher():
    settings = ValidateSettings(min_score=0.0, beat_base_metrics=["loss", "token_f1"])
    tied = decide(scores(token_f1=0.3, loss=1.0), settings, base=scores(token_f1=0.3, loss=5.0))
    assert not tied.passed and tied.reasons[0] == "FAIL token_f1 0.3000 <= base model's 0.3000 (validate.beat_base_metrics)"
    better = decide(scores(token_f1=0.31, loss=1.0), settings, base=scores(token_f1=0.3, loss=5.0))
    assert better.passed


def test_a_diverged_candidate_never_beats_the_base():
    decision = decide(scores(token_f1=0.5, loss=float("nan")), ValidateSettings(min_score=0.1), base=scores(token_f1=0.0, loss=8.0))
    assert not decision.passed and decision.failed_metrics == ["loss"]
    assert decision.reasons[0].startswith("FAIL validation loss nan >= base model's 8.0000")


def test_regression_is_checked_on_every_gated_metric():
    settings = ValidateSettings(min_score=0.1, min_metrics={"bleu": 0.05}, regression_tolerance=0.02)
    production = scores(token_f1=0.5, bleu=0.40)
    decision = decide(scores(token_f1=0.5, bleu=0.30), settings, production=production, production_version="acme-tiny-v7")
    assert not decision.passed and decision.failed_metrics == ["bleu"]
    assert decision.reasons[0] == (
        "FAIL bleu 0.3000 < production acme-tiny-v7's 0.4000 - validate.regression_tolerance 0.0200 (a drop of 0.1000)"
    )


def test_settings_reject_bad_gate_configuration():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="beat_base_metrics is empty"):
        ValidateSettings(beat_base_metrics=[])
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        ValidateSettings(min_metrics={"rouge_l": 1.5})
    with pytest.raises(ValidationError):
        ValidateSettings(min_metrics={"perplexity": 0.5})
    with pytest.raises(ValidationError):
        ValidateSettings(primary_metric="accuracy")


def test_a_tolerated_drop_from_production_fails_when_it_adds_up_to_too_much_below_the_best_version():
    from fragua.validate.drift import ReferenceComparison

    settings = ValidateSettings(min_score=0.05, regression_tolerance=0.05, max_drop_from_best=0.06)
    best = ReferenceComparison(version="acme-tiny-v1", pinned=False, shared=8, candidate=scores(token_f1=0.36), reference=scores(token_f1=0.45))
    decision = decide(scores(token_f1=0.40), settings, production=scores(token_f1=0.42), production_version="acme-tiny-v3", reference=best)
    assert not decision.passed and decision.failed_metrics == ["token_f1"] and decision.best_version == "acme-tiny-v1"
    assert decision.reasons[0] == (
        "FAIL token_f1 0.3600 < best promoted acme-tiny-v1's 0.4500 - validate.max_drop_from_best 0.0600 "
        "on the 8 questions both were scored on (a drop of 0.0900)"
    )
    assert "PASS token_f1 0.4000 >= production acme-tiny-v3's 0.4200 - validate.regression_tolerance 0.0500" in decision.reasons

    within = best.model_copy(update={"candidate": scores(token_f1=0.40)})
    assert decide(scores(token_f1=0.40), settings, production=scores(token_f1=0.42), reference=within).passed
    pinned = best.model_copy(update={"pinned": True})
    failed = decide(scores(token_f1=0.40), settings, reference=pinned).reasons[0]
    assert failed.startswith("FAIL token_f1 0.3600 < reference acme-tiny-v1 (validate.reference_version)'s 0.4500")


def test_the_drift_gate_checks_every_gated_metric_and_skips_what_the_shared_questions_cannot_measure():
    from fragua.validate.drift import ReferenceComparison

    settings = ValidateSettings(min_score=0.0, min_metrics={"rouge_l": 0.1, "mc_accuracy": 0.1}, max_drop_from_best=0.05)
    best = ReferenceComparison(
        version="acme-tiny-v2", pinned=False, shared=5,
        candidate=scores(token_f1=0.5, rouge_l=0.3), reference=scores(token_f1=0.5, rouge_l=0.4),
    )
    decision = decide(scores(token_f1=0.5, rouge_l=0.3, mc_accuracy=0.5), settings, reference=best)
    assert decision.failed_metrics == ["rouge_l"]
    assert not any("mc_accuracy" in r and "best promoted" in r for r in decision.reasons)
