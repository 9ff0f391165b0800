"""A training run's folder, ``work_dir/runs/<run id>/``: the one place that knows its files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fragua.train.report import TrainReport


class RunRecord(BaseModel):
    """``run.json``: what a training run was asked to do, written before it starts."""

    run_id: str
    dataset_id: str
    base_model: str = Field(description="The base model as the settings resolved it (hub id or folder).")
    parent_version: str | None = Field(None, description="The registry version incremental training continued, if any.")
    settings: dict[str, Any] = Field(description="The run's settings, secrets masked.")


class RunFolder(BaseModel):
    """``run.json`` (the request), ``checkpoints/``, ``model/`` (the trained weights),
    ``train_report.json`` (written last: a run without it has not finished) and
    ``validation/`` (``eval.json``, ``report.md`` and the plots)."""

    model_config = ConfigDict(frozen=True)

    path: Path

    @classmethod
    def of(cls, runs_path: Path, run_id: str) -> RunFolder:
        return cls(path=runs_path / run_id)

    @classmethod
    def find(cls, runs_path: Path, run_id: str | None = None) -> RunFolder:
        """The trained run ``run_id``, or the newest one; FileNotFoundError naming what is missing."""
        if run_id is not None:
            folder = cls.of(runs_path, run_id)
            if not folder.report_file.is_file():
                raise FileNotFoundError(f"no trained run {run_id!r} under {runs_path}")
            return folder
        finished = [cls(path=path) for path in runs_path.glob("*")] if runs_path.is_dir() else []
        finished = [folder for folder in finished if folder.report_file.is_file()]
        if not finished:
            raise FileNotFoundError(f"no trained runs under {runs_path}; run `fragua train` first")
        return max(finished, key=lambda folder: folder.report_file.stat().st_mtime)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def record_file(self) -> Path:
        return self.path / "run.json"

    @property
    def report_file(self) -> Path:
        return self.path / "train_report.json"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def card_file(self) -> Path:
        """The model card written when the run is published."""
        return self.path / "README.md"

    @property
    def validation_dir(self) -> Path:
        return self.path / "validation"

    @property
    def validation_file(self) -> Path:
        return self.validation_dir / "eval.json"

    @property
    def validation_report_file(self) -> Path:
        return self.validation_dir / "report.md"

    def finished(self) -> bool:
        return self.report_file.is_file() and self.model_dir.is_dir()

    def record(self) -> RunRecord:
        return RunRecord.model_validate_json(self.record_file.read_text())

    def write_record(self, record: RunRecord) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.record_file.write_text(json.dumps(record.model_dump(mode="json"), indent=2))

    def report(self) -> TrainReport:
        return TrainReport.model_validate_json(self.report_file.read_text())

    def write_report(self, report: TrainReport) -> None:
        self.report_file.write_text(report.model_dump_json(indent=2))
