"""The forgetting guard: lm-evaluation-harness on the shipped task, offline, on the tiny model;
Fragua's multiple-choice pick agrees with lm-eval's per question; the gate and its report."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from fragua.data.records import CHOICE_LETTERS, Message, format_choices
from fragua.jobs.forgetting import benchmark_comparison, benchmark_cache
from fragua.models.loading import load_for_inference
from fragua.registry import open_registry
from fragua.reports.forgetting import benchmark_section
from fragua.settings import BenchmarkSpec, Settings, TrainSettings, ValidateSettings
from fragua.validate.benchmarks import (
    SHIPPED_TASKS,
    BenchmarkComparison,
    BenchmarkError,
    BenchmarkScore,
    benchmark_gates,
    read_score,
    task_manager,
)
from fragua.validate.gates import decide
from fragua.validate.metrics import choose_option
from fragua.validate.scoring import EvalItem, MetricSet, continuation_logprobs, score_items

from .conftest import QUICK

TASK = "fragua_general_knowledge"
MAX_LENGTH = 256


@pytest.fixture
def offline(monkeypatch):
    """No Hugging Face hub: any attempt to reach it fails instead of downloading."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny_model(tiny_base):
    return load_for_inference(str(tiny_base), TrainSettings())


def shipped_questions() -> list[dict]:
    lines = (SHIPPED_TASKS / TASK / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def lm_eval_samples(model, tokenizer, task, *, limit: int, chat: bool) -> list[dict]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    # lm-eval keeps max_length + 1 tokens of a request (the last is never fed): Fragua's window of MAX_LENGTH.
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, max_length=MAX_LENGTH - 1)
    name = task if isinstance(task, str) else task["task"]
    results = lm_eval.simple_evaluate(
        model=lm, tasks=[task], limit=limit, task_manager=task_manager([TASK], []), log_samples=True,
        bootstrap_iters=0, apply_chat_template=chat,
    )
    return sorted(results["samples"][name], key=lambda sample: sample["doc_id"])


def test_the_shipped_task_has_four_options_a_valid_answer_and_unique_ids():
    questions = shipped_questions()
    assert len(questions) >= 40
    assert len({q["id"] for q in questions}) == len(questions)
    assert all(len(q["choices"]) == 4 and 0 <= q["answer"] < 4 and len(set(q["choices"])) == 4 for q in questions)
    assert {q["answer"] for q in questions} == {0, 1, 2, 3}  # the right answer is not always in one place


@pytest.mark.slow(seconds=20)
def test_fragua_scores_lm_eval_continuations_as_lm_eval_does_on_the_shipped_task(tiny_model, offline):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    samples = lm_eval_samples(model, tokenizer, TASK, limit=6, chat=False)
    assert len(samples) == 6
    for sample in samples:
        pairs = [tuple(argument) for argument in sample["arguments"]]
        assert all(continuation.startswith(" ") for _, continuation in pairs)  # the task's target delimiter
        theirs = [logprob for logprob, _ in sample["filtered_resps"]]
        ours = continuation_logprobs(model, tokenizer, pairs, MAX_LENGTH, batch_size=3)
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-3)
        summed, normalised = choose_option(ours, [len(choice) for choice in sample["doc"]["choices"]])
        assert summed == max(range(len(theirs)), key=lambda i: theirs[i])
        assert float(summed == sample["target"]) == sample["acc"]
        assert float(normalised == sample["target"]) == sample["acc_norm"]


@pytest.mark.slow(seconds=20)
def test_fragua_multiple_choice_validation_picks_what_lm_eval_picks_with_the_chat_template(tiny_model, offline):
    """Fragua's own path (an item's chat prompt, options 'B. text') against lm-eval asking the
    same questions in the same form through the model's chat template."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("shipped_loader", SHIPPED_TASKS / TASK / "loader.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    as_fragua_asks = {
        "task": "fragua_general_knowledge_as_fragua_asks",
        "custom_dataset": loader.load_questions,
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": lambda doc: format_choices(doc["question"], doc["choices"]),
        "doc_to_choice": lambda doc: [f"{CHOICE_LETTERS[i]}. {choice}" for i, choice in enumerate(doc["choices"])],
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
    }
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    samples = lm_eval_samples(model, tokenizer, as_fragua_asks, limit=8, chat=True)
    items = [
        EvalItem(id=q["id"], domain="general", prompt=(Message(role="user", content=format_choices(q["question"], q["choices"])),),
                 choices=tuple(q["choices"]), correct=q["answer"])
        for q in shipped_questions()[:8]
    ]
    results = score_items(model, tokenizer, items, ValidateSettings(batch_size=5), max_length=MAX_LENGTH)
    assert len(samples) == len(results) == 8
    for sample, result in zip(samples, results):
        theirs = [logprob for logprob, _ in sample["filtered_resps"]]
        assert result.option_logprobs == pytest.approx(theirs, rel=1e-4, abs=1e-3)
        assert result.mc_correct == sample["acc"] and result.mc_correct_norm == sample["acc_norm"]
        assert result.chosen == CHOICE_LETTERS[max(range(len(theirs)), key=lambda i: theirs[i])]


@pytest.mark.slow(seconds=90)
def test_the_candidate_production_and_base_run_through_lm_eval_and_reruns_reuse_the_cache(published_work, offline):
    work, versions = published_work
    settings = Settings(work_dir=work, **{**QUICK, "validate": {**QUICK["validate"], "benchmarks": [{"task": TASK, "limit": 3}]}})
    run_id = open_registry(settings).manifest(versions[1]).lineage["run_id"]

    comparison = benchmark_comparison(settings, run_id, versions[0])
    assert comparison.tasks == [TASK] and comparison.production_version == versions[0]
    for scores in (comparison.candidate, comparison.production, comparison.base):
        score = scores[TASK]
        assert score.metric == "acc" and 0.0 <= score.value <= 1.0 and (score.questions, score.available) == (3, 48)
    cache = benchmark_cache(settings)
    assert cache.load("versions", versions[0]) and cache.load("runs", run_id)

    # The production version and the base are not run again: their cached scores are taken as they are.
    [key] = cache.load("versions", versions[0])
    cache.save("versions", versions[0], {key: comparison.production[TASK].model_copy(update={"value": 0.25})})
    again = benchmark_comparison(settings, run_id, versions[0])
    assert again.production[TASK].value == 0.25 and again.candidate[TASK].value == comparison.candidate[TASK].value


def score(value: float, *, metric: str = "acc", higher_is_better: bool = True) -> BenchmarkScore:
    return BenchmarkScore(task=TASK, metric=metric, value=value, stderr=0.05, higher_is_better=higher_is_better, questions=40, available=48, lm_eval_version="0.4.13")


def comparison(candidate: float, production: float | None, **fields) -> BenchmarkComparison:
    return BenchmarkComparison(
        tasks=[TASK], candidate={TASK: score(candidate)}, base={TASK: score(0.3)},
        production=None if production is None else {TASK: score(production)}, production_version="fragua-tiny-v1", **fields,
    )


def test_the_gate_fails_a_drop_beyond_max_benchmark_drop_and_names_it():
    [(ok, metric, text)] = benchmark_gates(comparison(0.40, 0.50), 0.05)
    assert not ok and metric == f"{TASK}/acc"
    assert text == (f"benchmark {TASK} acc 0.4000 < production fragua-tiny-v1's 0.5000 - validate.max_benchmark_drop 0.0500 "
                    "(a drop of 0.1000: general ability forgotten)")
    [(ok, _, text)] = benchmark_gates(comparison(0.47, 0.50), 0.05)
    assert ok and text.startswith(f"benchmark {TASK} acc 0.4700 >= production")
    assert benchmark_gates(comparison(0.10, None), 0.05) == []  # no production version: nothing to gate against

    lower = BenchmarkComparison(tasks=[TASK], candidate={TASK: score(12.0, metric="word_perplexity", higher_is_better=False)},
                                production={TASK: score(10.0, metric="word_perplexity", higher_is_better=False)})
    [(ok, _, text)] = benchmark_gates(lower, 0.05)
    assert not ok and "word_perplexity 12.0000 > production's 10.0000 + validate.max_benchmark_drop" in text


def test_decide_fails_a_forgetting_candidate_and_passes_the_rest():
    settings = ValidateSettings(min_score=0.0)
    candidate = MetricSet(n=4, token_f1=0.5)
    failed = decide(candidate, settings, benchmarks=comparison(0.40, 0.50))
    assert not failed.passed and failed.failed_metrics == [f"{TASK}/acc"] and failed.reasons[0].startswith(f"FAIL benchmark {TASK}")
    assert decide(candidate, settings, benchmarks=comparison(0.50, 0.50)).passed


def test_the_report_shows_base_production_candidate_and_suggests_replay_for_an_incremental_version():
    forgot = comparison(0.40, 0.50, parent_version="fragua-tiny-v1", replay_ratio=0.5)
    lines = "\n".join(benchmark_section(forgot, [f"{TASK}/acc"]))
    assert "| task | metric | questions | base | production fragua-tiny-v1 | candidate | Δ vs production | Δ vs base |" in lines
    assert f"| {TASK} | acc | 40 of 48 | 0.3000 ± 0.0500 | 0.5000 ± 0.0500 | 0.4000 ± 0.0500 | -0.1000 | +0.1000 |" in lines
    assert "incremental version (continuing `fragua-tiny-v1`, train.replay_ratio 0.5)" in lines and "raise train.replay_ratio" in lines
    assert "Forgetting" not in "\n".join(benchmark_section(comparison(0.49, 0.50), []))
    retrained = "\n".join(benchmark_section(comparison(0.40, 0.50), [f"{TASK}/acc"]))
    assert "Forgetting" in retrained and "replay_ratio" not in retrained


def test_a_metric_the_task_does_not_report_is_named_with_those_it_does():
    results = {"results": {TASK: {"acc,none": 0.5, "acc_stderr,none": 0.1}}, "n-samples": {TASK: {"original": 48, "effective": 4}}}
    assert read_score(results, BenchmarkSpec(task=TASK)).stderr == 0.1
    with pytest.raises(BenchmarkError, match=r"reports no metric 'acc_norm'; it reports acc,none"):
        read_score(results, BenchmarkSpec(task=TASK, metric="acc_norm"))


def test_an_include_path_that_is_not_a_folder_is_named(tmp_path):
    with pytest.raises(BenchmarkError, match=r"validate.benchmark_include_path: .*missing is not a folder"):
        task_manager([TASK], [str(tmp_path / "missing")])


def test_benchmark_settings_reject_a_repeated_task_and_a_malformed_metric():
    with pytest.raises(ValidationError, match="names fragua_general_knowledge more than once"):
        ValidateSettings(benchmarks=[{"task": TASK}, {"task": TASK, "limit": 5}])
    with pytest.raises(ValidationError, match="metric"):
        ValidateSettings(benchmarks=[{"task": TASK, "metric": "acc; rm"}])
    assert BenchmarkSpec(task="gsm8k", metric="exact_match,strict-match").result_key == "exact_match,strict-match"
    assert BenchmarkSpec(task=TASK).result_key == "acc,none"
