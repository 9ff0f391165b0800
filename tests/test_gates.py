from __future__ import annotations

from fragua.evaluation import MetricSet
from fragua.gates import decide
from fragua.settings import ValidateSettings


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
