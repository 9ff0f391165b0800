"""Validation with a judge: verdicts on the candidate's and production's answers, the win rate
against production and its gate, the report's sections, and nothing asked twice."""

from __future__ import annotations

import shutil

import pytest

from fragua.jobs.validate import compare_with_production, evaluate_model, evaluate_version, load_validation, record_validation
from fragua.train.runs import RunFolder
from tests.conftest import QUICK, make_settings
from tests.judgeserver import JudgeServer


@pytest.fixture
def judge_server():
    server = JudgeServer()
    server.start()
    yield server
    server.stop()


@pytest.mark.slow(seconds=60)
def test_validation_judges_answers_and_gates_on_the_win_rate(published_work, judge_server, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(published_work[0], work)
    production = published_work[1][0]
    validate = {**QUICK["validate"], "min_win_rate": 0.99, "min_metrics": {"judge_score": 0.0},
                "judge": {"model": "follow", "endpoint": judge_server.url}}
    settings = make_settings(work, **{**QUICK, "validate": validate})
    run = RunFolder.find(settings.runs_path, None)
    dataset_id = run.record().dataset_id

    candidate = evaluate_model(settings, dataset_id, str(run.model_dir), name="candidate", run_id=run.run_id)
    assert candidate.overall.n_judged == candidate.overall.n_generated > 0
    assert sum(candidate.overall.verdicts.values()) == candidate.overall.n_judged and candidate.overall.judge_score is not None
    judged_samples = [s for s in candidate.samples if s.chosen is None]
    assert judged_samples and all(s.judge_verdict in ("correct", "partially correct", "incorrect") for s in judged_samples)
    production_scores = evaluate_version(settings, dataset_id, production)
    assert production_scores.overall.n_judged == candidate.overall.n_judged
    asked = len(judge_server.requests)
    assert asked == 2 * candidate.overall.n_judged

    versus = compare_with_production(settings, dataset_id, run.run_id, production)
    assert versus.production_version == production and versus.shared == candidate.overall.n_judged
    rate = versus.win_rate
    assert rate is not None and rate.n == versus.shared and 0.0 <= rate.low <= rate.rate <= rate.high <= 1.0
    assert len(judge_server.requests) == asked + 2 * versus.shared  # each pair in both orders
    assert len(versus.differences) <= 10

    outcome = record_validation(settings, run.run_id, dataset_id, candidate, None, production_scores, production, None, versus)
    gate = next(r for r in outcome.decision.reasons if "validate.min_win_rate" in r)
    assert gate.startswith("PASS" if rate.rate >= 0.99 else "FAIL") and f"win rate against production {production}" in gate
    report = (RunFolder.of(settings.runs_path, run.run_id).validation_report_file).read_text()
    assert "## Judge verdicts (rubric v1)" in report and f"## Candidate vs production {production}, answer by answer" in report
    assert f"{rate.wins} wins, {rate.ties} ties, {rate.losses} losses" in report and "95% Wilson interval" in report
    assert "judge: " in report  # verdicts beside the sample answers
    assert load_validation(settings, run.run_id).head_to_head == versus

    # Validating again costs the judge nothing: every verdict and comparison is cached.
    asked = len(judge_server.requests)
    evaluate_model(settings, dataset_id, str(run.model_dir), name="candidate", run_id=run.run_id)
    evaluate_version(settings, dataset_id, production)
    compare_with_production(settings, dataset_id, run.run_id, production)
    assert len(judge_server.requests) == asked
