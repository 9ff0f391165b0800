"""What the Prefect UI shows of a report: numbers rounded for people, tables that neither break
nor run off the page, the training table without its repeated last row, plots as inline images
of bounded size; and one validation artifact read back from the suite's Prefect server."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest

from fragua.reports.markdown import (
    INLINE_IMAGE_BYTES,
    INLINE_IMAGE_WIDTH,
    cell,
    clip,
    display_rows,
    duration,
    escape,
    inline_png,
    table,
)
from fragua.reports.training import (
    TRIAL_DURATIONS,
    evaluation_rows,
    hpo_summary,
    training_summary,
)
from fragua.reports.validation import SAMPLE_CELL_CHARS, validation_report
from fragua.settings import Settings, ValidateSettings
from fragua.train.hpo import HpoResult, Trial, TrialResult, trial_rows
from fragua.train.report import TrainReport
from fragua.validate.gates import decide
from fragua.validate.plots import loss_curve
from fragua.validate.scoring import Evaluation, ItemResult

from .prefect_runs import latest_artifact, tagged
from .test_report import PNG_SIGNATURE, evaluation

DATA_URI = re.compile(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")
LONG_FLOAT = re.compile(r"\d\.\d{5,}")


def test_numbers_counts_and_durations_are_written_for_people():
    assert cell(0.30000000000000004) == "0.3000" and cell(1344.5529729109276) == "1,344.5530"
    assert cell(2e-05) == "2e-05" and cell(0.0) == "0.0000" and cell(float("nan")) == "nan"
    assert cell(1234567) == "1,234,567" and cell(True) == "yes" and cell(None) == "-"
    assert [duration(s) for s in (4.25, 150.0, 7200.0, None)] == ["4.2 s", "2.5 min", "2.0 h", "-"]
    rows = display_rows([{"trial": 3, "eval_loss": 2.718281828459045, "seconds": 95.0, "status": "ok"}], {"seconds": "time"})
    assert rows == [{"trial": "3", "eval_loss": "2.7183", "time": "1.6 min", "status": "ok"}]


def test_table_cells_cannot_break_the_table():
    rows = [{"text": "a | b\nc\\d <script>x</script>", "n": 12000}]
    rendered = table(rows, ["text", "n"])
    assert rendered.splitlines()[2] == "| a \\| b c\\\\d &lt;script&gt;x&lt;/script&gt; | 12,000 |"
    assert clip("one\n\n  two  \nthree", 100) == "one / two / three"
    assert clip("x" * 100, 10) == "x" * 9 + "…" and len(clip("word " * 40, 30)) <= 30
    assert escape("line\r\nbreak") == "line break"


def _report(**overrides) -> TrainReport:
    fields = {
        "run_id": "r1", "run_dir": "/runs/r1", "adapter_dir": "/runs/r1/adapter", "base_model": "tiny", "base_parameters": 664192, "method": "lora",
        "global_step": 6, "max_steps": 6, "epochs": 0.2608695652173913, "train_loss": 7.891234567891234, "eval_loss": 7.172159671783447,
        "examples": 12345, "truncated": 0, "dropped": 0, "trained_tokens": 8033, "resumed_from": None, "seconds": 131.2,
        "tokens_per_second": 613.3456, "finished_at": "now",
        "log_history": [
            {"loss": 7.9, "step": 3, "epoch": 0.13}, {"eval_loss": 7.3012345678, "step": 3, "epoch": 0.13},
            {"eval_loss": 7.172159671783447, "step": 6, "epoch": 0.2608695652173913},
            {"eval_loss": 7.172159671783447, "step": 6, "epoch": 0.2608695652173913},  # the evaluation after training
        ],
    }
    fields.update(overrides)
    return TrainReport(**fields)


def test_training_summary_has_no_repeated_row_and_no_long_floats():
    summary = training_summary(_report())
    assert summary.count("| 6 |") == 1, summary
    assert "| 0.13 | 3 | 7.3012 |" in summary and "| 0.26 | 6 | 7.1722 |" in summary
    assert "2.2 min" in summary and "12,345 examples, 8,033 answer tokens" in summary and "613 tokens/s" in summary
    assert not LONG_FLOAT.search(summary), summary
    # Early stopping reloads the best checkpoint: the final evaluation differs and is kept, marked.
    history = [{"eval_loss": 2.0, "step": 4}, {"eval_loss": 2.5, "step": 8}, {"eval_loss": 2.0, "step": 8}]
    assert [row["step"] for row in evaluation_rows(history)] == [4, 8, "8 (final model)"]


def test_training_summary_says_where_the_time_went():
    phases = {"load data": 0.05, "tracking": 2.1, "setup": 8.46, "training": 63.7, "evaluation": 6.4, "save": 0.2}
    assert "- time: load data 0.1 s, tracking 2.1 s, setup 8.5 s, training 1.1 min, evaluation 6.4 s, save 0.2 s" in training_summary(_report(phase_seconds=phases))
    assert "- time:" not in training_summary(_report())  # a report written before runs were timed


def test_hpo_trials_show_rounded_losses_and_durations():
    trials = [TrialResult(trial=Trial(number=1, learning_rate=2e-05, r=16, alpha=32, epochs=2.0), status="finished", run_id="a",
                          eval_loss=3.141592653589793, train_loss=3.3, global_step=1200, seconds=754.2),
              TrialResult(trial=Trial(number=2, learning_rate=0.005, r=16, alpha=32, epochs=2.0), status="failed: out of memory", seconds=3.0)]
    summary = hpo_summary(HpoResult(dataset_id="d", trials=trials, best=trials[0]))
    assert "| 1 | 2e-05 | 16 | 32 | 2.0000 | finished | 3.1416 | 1,200 | 12.6 min | a |" in summary
    assert "| 2 | 0.0050 | 16 | 32 | 2.0000 | failed: out of memory | - | 0 | 3.0 s | - |" in summary
    assert display_rows(trial_rows(trials), TRIAL_DURATIONS)[0]["time"] == "12.6 min"


def test_artifact_report_inlines_plots_and_stacks_cut_samples(tmp_path):
    curve = loss_curve([{"loss": 5.0 - step / 10, "eval_loss": 5.1 - step / 10, "step": step} for step in range(1, 30)], tmp_path / "loss_curve.png", title="run")
    long_answer = "The answer | with a pipe\nover lines " + "and more words " * 20
    sample = ItemResult(id="1", domain="hotel", question="When is check-in?", reference="At 3 pm", prediction=long_answer, token_f1=0.25, rouge_l=0.5, exact_match=0.0)
    candidate = evaluation("candidate", 0.3, 2.0)
    candidate = Evaluation(model="candidate", overall=candidate.overall, per_domain=candidate.per_domain, samples=[sample])
    decision = decide(candidate.overall, ValidateSettings(min_score=0.2))
    common = {"run_id": "run-1", "dataset_id": "d", "candidate": candidate, "base": None, "production": None, "production_version": None, "decision": decision}

    artifact = validation_report(**common, plots={"loss_curve": str(curve)}, artifact=True)
    [(title, data)] = DATA_URI.findall(artifact)
    assert title == "Training and validation loss" and base64.b64decode(data).startswith(PNG_SIGNATURE)
    assert len(data) < INLINE_IMAGE_BYTES
    row = next(line for line in artifact.splitlines() if line.startswith("| hotel |"))
    assert "**prediction** The answer \\| with a pipe / over lines and more" in row and "…" in row
    prediction = row.split("**prediction** ")[1].split(" | ")[0]
    assert len(prediction.replace("\\|", "|")) == SAMPLE_CELL_CHARS
    assert row.endswith("| F1 0.25<br>ROUGE-L 0.50<br>EM 0.00 |")

    whole = validation_report(**common, plots={"loss_curve": "loss_curve.png"})
    assert "![Training and validation loss](loss_curve.png)" in whole and "data:image" not in whole
    assert escape(long_answer) in whole  # the report file keeps the full text


def test_inline_images_are_narrowed_and_bounded(tmp_path):
    from PIL import Image

    wide = tmp_path / "wide.png"
    Image.new("RGB", (3000, 600), "white").save(wide)
    uri = inline_png(wide)
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as shown:
        assert shown.size == (INLINE_IMAGE_WIDTH, 200)
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (900, 1000, 3), dtype=np.uint8)).save(noise)
    assert inline_png(noise) is None  # no palette makes noise small: named by path instead
    assert inline_png(tmp_path / "missing.png") is None


@pytest.mark.slow(seconds=60)
def test_validation_artifacts_read_back_from_prefect_show_plots_and_rounded_metrics(prefect_api, validated_work):
    from fragua.flows.validate import validate_flow

    work, run_id = validated_work
    settings = Settings(work_dir=work, tracking={"mode": "disabled"}, validate={"max_examples": 4, "min_score": 0.0, "require_beat_base": False, "max_new_tokens": 8})
    with tagged() as tag:
        validate_flow(settings, run_id)

    report = latest_artifact(tag, "validation-report").data
    images = dict(DATA_URI.findall(report))
    assert set(images) == {"Training and validation loss", "Metrics per domain"}, report[:2000]
    for data in images.values():
        assert base64.b64decode(data).startswith(PNG_SIGNATURE) and len(data) < INLINE_IMAGE_BYTES
    assert (work / "runs" / run_id / "validation" / "metrics_by_domain.png").is_file()  # the files stay on disk
    assert not LONG_FLOAT.search(DATA_URI.sub("", report))

    table_data = latest_artifact(tag, "validation-metrics").data
    rows = json.loads(table_data) if isinstance(table_data, str) else table_data
    assert {row["model"] for row in rows} == {"candidate", "base"}
    for row in rows:
        for column in ("loss", "perplexity", "token_f1"):
            assert re.fullmatch(r"-?[\d,]+\.\d{4}|nan|-", row[column]), row
