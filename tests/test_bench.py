"""The ingest and expand benchmarks run end to end on a small size (their timings are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench" / "ingest.py"
EXPAND_BENCH = BENCH.with_name("expand.py")


@pytest.mark.slow
def test_ingest_benchmark_prints_rates_memory_and_the_baseline_ratio(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH), "--rows", "3000", "--folder", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "datasets.load_dataset('json')" in out and "fragua ingest, exact dedupe" in out and "fragua ingest, + near-dedupe" in out
    assert "x the baseline's time" in out and "rows/s" in out and "RSS MB" in out and "load average" in out
    assert sorted(p.name for p in (tmp_path / "data").glob("*.jsonl")) == sorted(
        ["alpaca.jsonl", "broken.jsonl", "chat.jsonl", "head_qa.jsonl", "multiple_choice.jsonl", "prompt_completion.jsonl", "sharegpt.jsonl", "squad.jsonl"]
    )


@pytest.mark.slow(seconds=60)
def test_expand_benchmark_compares_inline_and_dask_and_checks_the_ids(prefect_api, tmp_path):
    # Its flows report to the suite's Prefect server (PREFECT_API_URL is in the environment).
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, str(EXPAND_BENCH), "--rows", "1500", "--shard-rows", "150"],
        capture_output=True, text=True, timeout=600, check=False, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ratio inline / dask" in done.stdout and "dataset id identical" in done.stdout
