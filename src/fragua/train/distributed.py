"""Multi-process training: one torchrun (or ``accelerate launch``) launch of ``fragua.train.worker`` per run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any, Callable

from fragua.data.records import Record
from fragua.settings import TrainSettings
from fragua.train.callbacks import announce_progress
from fragua.train.report import TrainReport
from fragua.train.worker import PROGRESS_PREFIX


class DistributedTrainingError(RuntimeError):
    """The worker processes failed; a retry resumes from the newest complete checkpoint."""


def launch_command(num_processes: int, spec_path: Path) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
        "-m", "fragua.train.worker", str(spec_path),
    ]


def _write_records(path: Path, records: list[Record]) -> None:
    path.write_text("".join(r.model_dump_json() + "\n" for r in records), encoding="utf-8")


def train_distributed(
    *,
    base_model: str,
    settings: TrainSettings,
    train_records: list[Record],
    eval_records: list[Record],
    run_dir: Path,
    run_name: str,
    progress: Callable[[dict[str, Any]], None] | None = None,
    init_adapter: Path | None = None,
    deadline: float | None = None,
) -> TrainReport:
    """Train with ``settings.num_processes`` processes and return process 0's report."""
    inputs = run_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    _write_records(inputs / "train.jsonl", train_records)
    _write_records(inputs / "eval.jsonl", eval_records)
    report_path = run_dir / "worker_report.json"
    report_path.unlink(missing_ok=True)
    spec = {
        "base_model": base_model,
        "train": settings.model_dump(mode="json"),
        "train_records": str(inputs / "train.jsonl"),
        "eval_records": str(inputs / "eval.jsonl"),
        "run_dir": str(run_dir),
        "run_name": run_name,
        "init_adapter": str(init_adapter) if init_adapter else None,
        "deadline": deadline,
        "report_path": str(report_path),
    }
    spec_path = run_dir / "run_spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    if settings.accelerate.strategy == "torchrun":
        command = launch_command(settings.num_processes, spec_path)
    else:
        import torch

        from fragua.train.accelerate import accelerate_command, write_accelerate_config

        config_file = write_accelerate_config(settings, run_dir / "accelerate_config.yaml", gpus=torch.cuda.is_available())
        command = accelerate_command(config_file, spec_path)
    tail: deque[str] = deque(maxlen=40)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(PROGRESS_PREFIX):
                event = json.loads(line[len(PROGRESS_PREFIX):])
                announce_progress(event)
                if progress:
                    progress(event)
            else:
                tail.append(line.rstrip())
    if process.returncode != 0 or not report_path.is_file():
        raise DistributedTrainingError(
            f"training with {settings.num_processes} processes failed (exit code {process.returncode}); "
            "last output:\n" + "\n".join(tail)
        )
    return TrainReport.model_validate_json(report_path.read_text())
