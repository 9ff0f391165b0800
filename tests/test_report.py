from __future__ import annotations

import math

from fragua.reports.validation import comparison_rows, validation_report
from fragua.settings import ValidateSettings
from fragua.validate.gates import decide
from fragua.validate.plots import loss_curve, metric_bars
from fragua.validate.scoring import Evaluation, ItemResult, MetricSet

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def evaluation(name: str, f1: float, loss: float, mc: float | None = None) -> Evaluation:
    def metrics(n: int, scale: float = 1.0) -> MetricSet:
        return MetricSet(n=n, loss=loss, perplexity=math.exp(loss), token_f1=f1 * scale, exact_match=0.0, rouge_l=f1, bleu=f1 / 2,
                         mc_accuracy=mc, mc_accuracy_norm=mc, n_generated=n, n_choice=2 if mc is not None else 0)

    sample = ItemResult(id="1", domain="hotel", question="When is check-in?", reference="At 3 pm | sharp", prediction="At 3 pm",
                        token_f1=0.8, rouge_l=0.8, exact_match=0.0)
    choice = ItemResult(id="2", domain="ml", question="Pick one", reference="B. y", prediction="A. x", chosen="A", chosen_norm="B", mc_correct=0.0)
    return Evaluation(model=name, overall=metrics(10), per_domain={"hotel": metrics(6, 1.2), "ml": metrics(4, 0.7)}, samples=[sample, choice])


def test_report_has_summary_decision_comparison_domains_plots_and_samples():
    candidate, production, base = evaluation("candidate", 0.30, 2.0, mc=0.5), evaluation("v1", 0.40, 2.5, mc=0.5), evaluation("base", 0.0, 8.0, mc=0.25)
    decision = decide(candidate.overall, ValidateSettings(min_score=0.2), base=base.overall, production=production.overall, production_version="acme-tiny-v1")
    report = validation_report(
        run_id="run-1", dataset_id="d" * 20, candidate=candidate, base=base, production=production,
        production_version="acme-tiny-v1", decision=decision, plots={"loss_curve": "loss_curve.png"},
    )
    assert report.startswith("# Validation of run `run-1`: FAILED")
    for heading in ("## Summary", "## Decision", "## Candidate vs production vs base", "## Per domain", "## Plots", "## Sample answers"):
        assert heading in report
    assert "verdict: not promotable: token_f1" in report
    assert "- FAIL token_f1 0.3000 < production acme-tiny-v1's 0.4000" in report
    assert "| token_f1 | higher | 0.3000 | 0.4000 | -0.1000 | 0.0000 | +0.3000 |" in report
    assert "| loss | lower | 2.0000 | 2.5000 | -0.5000 | 8.0000 | -6.0000 |" in report
    assert "| candidate | hotel | 6 |" in report and "| production acme-tiny-v1 | ml | 4 |" in report
    assert "numeric_accuracy" not in report  # not measured by anyone: no column
    assert "![Training and validation loss](loss_curve.png)" in report
    assert "At 3 pm \\| sharp" in report  # table cells are escaped
    assert "chose A (wrong), per char B" in report
    listed = validation_report(
        run_id="run-1", dataset_id="d", candidate=candidate, base=None, production=None, production_version=None,
        decision=decision, plots={"loss_curve": "/runs/run-1/validation/loss_curve.png"}, artifact=True,
    )
    assert "- Training and validation loss: `/runs/run-1/validation/loss_curve.png` (not shown here" in listed  # no such file
    assert "no production version yet" in listed


def test_table_rows_carry_every_metric_and_no_nan():
    diverged = evaluation("candidate", 0.0, float("nan"))
    rows = comparison_rows({"candidate": diverged, "production": None})
    assert [(r["model"], r["domain"]) for r in rows] == [("candidate", "overall"), ("candidate", "hotel"), ("candidate", "ml")]
    assert rows[0]["loss"] is None and rows[0]["numeric_accuracy"] is None and rows[0]["token_f1"] == 0.0


def test_loss_curve_and_metric_bars_are_pngs(tmp_path):
    history = [{"loss": 5.0 - step / 10, "step": step, "epoch": step / 10} for step in range(1, 11)]
    history += [{"eval_loss": 4.8, "step": 5}, {"eval_loss": 4.6, "step": 10}, {"eval_loss": float("nan"), "step": 11}, {"train_runtime": 3.0, "step": 10}]
    curve = loss_curve(history, tmp_path / "validation" / "loss_curve.png", title="run")
    bars = metric_bars({"candidate": evaluation("c", 0.3, 2.0, mc=0.5), "production": None, "base": evaluation("b", 0.0, 8.0)},
                       tmp_path / "validation" / "metrics_by_domain.png", title="run")
    for path in (curve, bars):
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    assert loss_curve([{"train_runtime": 1.0, "step": 3}], tmp_path / "none.png", title="run") is None
    assert not (tmp_path / "none.png").exists()
