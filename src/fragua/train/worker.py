"""Entry point of one training process when ``train.num_processes > 1``.

``fragua.distributed.launch`` starts N of these with torchrun; each reads the same run spec,
trains its shard of every batch (the Trainer handles the process group: gloo on CPU, NCCL on
GPU), and process 0 prints progress lines for the parent and writes the TrainReport.

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m fragua.train.worker RUN_SPEC.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

PROGRESS_PREFIX = "FRAGUA_PROGRESS "


def read_records(path: Path):
    from fragua.data.records import Record

    return [Record.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(spec_path: str) -> None:
    from fragua.settings import TrainSettings
    from fragua.train.trainer import train

    spec = json.loads(Path(spec_path).read_text())
    rank_zero = int(os.environ.get("RANK", "0")) == 0

    def report_progress(event: dict) -> None:
        print(PROGRESS_PREFIX + json.dumps(event), flush=True)

    report = train(
        base_model=spec["base_model"],
        settings=TrainSettings.model_validate(spec["train"]),
        train_records=read_records(Path(spec["train_records"])),
        eval_records=read_records(Path(spec["eval_records"])),
        run_dir=Path(spec["run_dir"]),
        report_to=[],
        run_name=spec["run_name"],
        progress=report_progress if rank_zero else None,
        init_adapter=Path(spec["init_adapter"]) if spec.get("init_adapter") else None,
        deadline=spec.get("deadline"),
    )
    if rank_zero:
        Path(spec["report_path"]).write_text(report.model_dump_json(indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m fragua.train.worker RUN_SPEC.json")
    main(sys.argv[1])
