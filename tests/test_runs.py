"""The run folder: one class knows a training run's files."""

from __future__ import annotations

import os

import pytest

from fragua.train.runs import RunFolder, RunRecord


def finished_run(runs, run_id: str, mtime: float) -> RunFolder:
    run = RunFolder.of(runs, run_id)
    run.write_record(RunRecord(run_id=run_id, dataset_id="d" * 20, base_model="base", settings={"train": {"epochs": 1}}))
    run.model_dir.mkdir()
    run.report_file.write_text("{}")
    os.utime(run.report_file, (mtime, mtime))
    return run


def test_find_names_the_newest_finished_run_and_what_is_missing(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(FileNotFoundError, match="no trained runs under .*runs; run `fragua train` first"):
        RunFolder.find(runs)
    older, newer = finished_run(runs, "a-older", 1_000), finished_run(runs, "b-newer", 2_000)
    RunFolder.of(runs, "c-unfinished").write_record(RunRecord(run_id="c-unfinished", dataset_id="d", base_model="base", settings={}))
    assert RunFolder.find(runs) == newer and RunFolder.find(runs, "a-older") == older
    with pytest.raises(FileNotFoundError, match="no trained run 'c-unfinished'"):
        RunFolder.find(runs, "c-unfinished")
    assert newer.finished() and not RunFolder.of(runs, "c-unfinished").finished()
    assert newer.record() == RunRecord(run_id="b-newer", dataset_id="d" * 20, base_model="base", settings={"train": {"epochs": 1}})
    assert (newer.run_id, newer.checkpoints_dir, newer.validation_file) == ("b-newer", runs / "b-newer" / "checkpoints", runs / "b-newer" / "validation" / "eval.json")
