"""Expansion of the train split: shards as Prefect tasks on a local cluster against the inline run.

    .venv/bin/python bench/expand.py                          # 200,000 rows, factor 2, Dask with 2 workers
    .venv/bin/python bench/expand.py --rows 50000 --runner ray

Generates bench/ingest.py's mixed-format rows, ingests them once, then runs the ``expand``
flow on the same dataset version twice: the baseline with ``scale.task_runner = "threads"``
(expand's shards inline in the task's process) and with the chosen runner (survey and variant
shards as ``prepare-expand-shard`` task runs on a local cluster of ``--workers``, its start
included). Prints both times, the ratio (inline time / sharded time: > 1.0 means the cluster
was faster) and both expanded dataset ids; exits non-zero if the ids differ.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from ingest import generate  # noqa: E402  (bench/ingest.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="rows to generate (bad and duplicate rows included)")
    parser.add_argument("--factor", type=float, default=2.0, help="expand.expansion_factor")
    parser.add_argument("--runner", choices=["dask", "ray"], default="dask")
    parser.add_argument("--workers", type=int, default=2, help="workers of the local cluster")
    parser.add_argument("--shard-rows", type=int, default=None, help="scale.expand_shard_rows (default: the setting's default)")
    options = parser.parse_args()

    from fragua.flows.expand import expand_flow
    from fragua.flows.ingest import ingest_flow
    from fragua.settings import Settings

    folder = Path(tempfile.mkdtemp(prefix="fragua-bench-expand-"))
    try:
        generate(folder / "data", options.rows, seed=0)
        scale = {"workers": options.workers} | ({"expand_shard_rows": options.shard_rows} if options.shard_rows else {})
        common = {
            "work_dir": folder / "work", "tracking": {"mode": "disabled"}, "expand": {"expansion_factor": options.factor},
            "data": {"sources": [{"path": str(folder / "data")}], "max_rejected_fraction": 1.0},
        }
        dataset = ingest_flow(Settings(**common, scale=scale))
        print(f"dataset {dataset.id}: {dataset.counts}")
        results = {}
        for runner in ("threads", options.runner):
            settings = Settings(**common | {"work_dir": folder / runner}, scale=scale | {"task_runner": runner})
            ingest_flow(settings)  # the same version in this runner's store (a fresh store: the expanded version is written anew)
            start = time.perf_counter()
            expanded = expand_flow(settings, dataset.id)
            results[runner] = (time.perf_counter() - start, expanded)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    inline_seconds, inline = results["threads"]
    sharded_seconds, sharded = results[options.runner]
    report = inline.report["expansion"]
    print(f"train {report['train_before']:,} -> {report['train_after']:,} (factor {report['achieved_factor']})")
    print(f"inline (threads setting)          {inline_seconds:8.2f} s   {inline.id}")
    print(f"{options.runner} ({options.workers} workers, cluster start included) {sharded_seconds:8.2f} s   {sharded.id}")
    print(f"ratio inline / {options.runner}: {inline_seconds / sharded_seconds:.2f}x; dataset id {'identical' if sharded.id == inline.id else 'DIFFERENT'}")
    if sharded.id != inline.id:
        raise SystemExit(f"the expanded dataset on {options.runner} differs from the inline one")


if __name__ == "__main__":
    main()
