"""Ingest throughput at scale, against a plain `datasets` JSON load of the same files.

    .venv/bin/python bench/ingest.py                    # 1,000,000 rows
    .venv/bin/python bench/ingest.py --rows 100000      # quicker
    .venv/bin/python bench/ingest.py --skip-near --runner threads --runner dask   # + Prefect tasks on a 2-worker local Dask cluster

Generates mixed-format JSONL (alpaca, chat, ShareGPT, prompt/completion, multiple choice,
flat SQuAD and HEAD-QA rows) with exact and near duplicates and bad rows, then measures,
each in a fresh process so that peak memory is its own:

1. the baseline: ``datasets.load_dataset("json")`` over every file it can parse (a fresh
   cache, so it parses and writes Arrow files like any first load);
2. ``fragua.ingest.ingest`` over the same files plus ``broken.jsonl`` (lines the baseline
   cannot parse at all: invalid JSON and UTF-8, wrong types), exact dedupe on, default
   settings except ``data.max_rejected_fraction = 1`` (broken.jsonl is all bad rows, which
   would otherwise stop ingest as a file in the wrong format);
3. the same with near-duplicate detection on.

It prints rows/s, peak RSS, the ratio to the baseline, the counts, and the machine load,
and exits non-zero only if the numbers do not add up (rows = kept + duplicates + quarantined).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

FORMAT_SHARES = {
    "alpaca": 0.20, "chat": 0.20, "sharegpt": 0.15, "prompt_completion": 0.10,
    "multiple_choice": 0.15, "squad": 0.10, "head_qa": 0.10,
}
BROKEN_SHARE = 0.005
DUPLICATE_SHARE = 0.08
NEAR_DUPLICATE_SHARE = 0.03
BAD_SHARE = 0.04


class Text:
    """Sentences over a fixed pseudo-vocabulary with a Zipf-like word distribution."""

    def __init__(self, rng: random.Random) -> None:
        syllables = ["ka", "lo", "mi", "ren", "ta", "vo", "sul", "pe", "dri", "an", "or", "es", "qui", "nu", "bel", "tro"]
        common = "the of and to in is for on with that as at by from it an be this are or was which can".split()
        words = {"".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(6000)}
        self.words = common + sorted(words)
        self.cumulative = list(itertools.accumulate(1.0 / (rank + 8) for rank in range(len(self.words))))
        self.rng = rng

    def sentence(self, low: int, high: int, end: str = ".") -> str:
        chosen = self.rng.choices(self.words, cum_weights=self.cumulative, k=self.rng.randint(low, high))
        return " ".join(chosen).capitalize() + end


def _vary(text: str, rng: random.Random) -> str:
    """A copy that normalises to the same text (case and whitespace)."""
    return rng.choice([text.upper(), "  " + text, text.replace(" ", "  ", 3), text.lower() + " "])


def _near(text: str, rng: random.Random) -> str:
    words = text.split()
    words[rng.randrange(len(words))] = "indeed"
    return " ".join(words)


def _row(fmt: str, text: Text, rng: random.Random, index: int) -> dict:
    question = text.sentence(6, 18, "?")
    answer = text.sentence(8, 40)
    if fmt == "alpaca":
        return {"instruction": question, "input": text.sentence(3, 10) if rng.random() < 0.2 else "", "output": answer, "domain": rng.choice(["hotel", "ml", "legal"])}
    if fmt == "chat":
        return {"messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": question},
                             {"role": "assistant", "content": answer}]}
    if fmt == "sharegpt":
        return {"id": f"c{index}", "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if fmt == "prompt_completion":
        return {"prompt": question, "completion": answer}
    if fmt == "multiple_choice":
        return {"question": question, "choices": [text.sentence(1, 4) for _ in range(4)], "answer": "ABCD"[index % 4]}
    if fmt == "squad":
        context = text.sentence(60, 120)
        words = context.split()
        start = rng.randrange(len(words) - 3)
        span = " ".join(words[start: start + 3])
        return {"id": f"q{index}", "title": "Article", "context": context, "question": question,
                "answers": {"text": [span], "answer_start": [context.index(span)]}}
    return {"name": f"Cuaderno_{2010 + index % 10}_1_B", "year": str(2010 + index % 10), "category": rng.choice(["biology", "medicine", "nursing"]),
            "qid": f" {index}", "qtext": question, "ra": f"{1 + index % 4} ",
            "answers": [{"aid": a, "atext": text.sentence(1, 5)} for a in range(1, 5)], "image": ""}


def _bad(fmt: str, row: dict, rng: random.Random) -> dict:
    """A row with a problem that keeps the file loadable by `datasets` (types unchanged)."""
    kind = rng.randrange(5)
    if fmt in ("alpaca", "prompt_completion"):
        target = "output" if fmt == "alpaca" else "completion"
        return {**row, target: ["", "   ", "n/a", "x" * 25_000, "#$%&*@!{}[]<>~^|;:+=-" * 3][kind]}
    if fmt == "chat":
        messages = [dict(m) for m in row["messages"]]
        messages[[1, 2, 2, 1, 2][kind]]["content" if kind < 3 else "role"] = ["", "N/A", "   ", "narrator", "bot"][kind]
        return {**row, "messages": messages}
    if fmt == "sharegpt":
        turns = [dict(t) for t in row["conversations"]]
        turns[kind % 2]["from" if kind < 2 else "value"] = ["bot", "robot", "", " ", "todo"][kind]
        return {**row, "conversations": turns}
    if fmt == "multiple_choice":
        return {**row, "answer": ["Z", "", "E", "AB", "9"][kind]}
    if fmt == "squad":
        return {**row, "question": ["", "  ", "?", row["context"][:40], "n/a"][kind]}
    return {**row, "ra": [" 9", "x", " 0", "", "5"][kind]}


def _broken(rng: random.Random, text: Text) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return b'{"instruction": "' + text.sentence(3, 8).encode()
    if kind == 1:
        return b'{"instruction": "caf\xe9 ' + text.sentence(3, 8).encode() + b'", "output": "x"}'
    if kind == 2:
        return b"[1, 2, 3]"
    if kind == 3:
        return orjson.dumps({"instruction": text.sentence(4, 9, "?"), "output": 42})
    return orjson.dumps({"instruction": text.sentence(4, 9, "?"), "output": text.sentence(5, 9), "lang": ["en", 1]})


def generate(folder: Path, rows: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    text = Text(rng)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    broken = int(rows * BROKEN_SHARE)
    remaining = rows - broken
    for number, (fmt, share) in enumerate(FORMAT_SHARES.items()):
        count = remaining - sum(counts.values()) if number == len(FORMAT_SHARES) - 1 else int(remaining * share)
        counts[fmt] = count
        written: list[dict] = []
        with (folder / f"{fmt}.jsonl").open("wb") as handle:
            for index in range(count):
                roll = rng.random()
                if written and roll < DUPLICATE_SHARE:
                    row = json.loads(json.dumps(rng.choice(written)))
                    field = {"alpaca": ("instruction",), "prompt_completion": ("prompt",), "multiple_choice": ("question",), "squad": ("question",), "head_qa": ("qtext",)}.get(fmt)
                    if field and rng.random() < 0.5:
                        row[field[0]] = _vary(row[field[0]], rng)
                elif written and roll < DUPLICATE_SHARE + NEAR_DUPLICATE_SHARE:
                    row = json.loads(json.dumps(rng.choice(written)))
                    for key in ("output", "completion", "question", "qtext"):
                        if key in row and isinstance(row[key], str) and row[key].strip():
                            row[key] = _near(row[key], rng)
                            break
                else:
                    row = _row(fmt, text, rng, index)
                    if roll > 1 - BAD_SHARE:
                        row = _bad(fmt, row, rng)
                    elif len(written) < 5000:
                        written.append(row)
                    elif rng.random() < 0.05:
                        written[rng.randrange(len(written))] = row
                handle.write(orjson.dumps(row) + b"\n")
    with (folder / "broken.jsonl").open("wb") as handle:
        for _ in range(broken):
            handle.write(_broken(rng, text) + b"\n")
    counts["broken"] = broken
    return counts


# Measurements, each in its own process --------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    """CPU time of this process, all threads: unlike wall time, it hardly moves with the machine's load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_baseline(folder: Path) -> dict:
    import datasets

    datasets.disable_progress_bars()
    files = sorted(p for p in folder.glob("*.jsonl") if p.name != "broken.jsonl")
    rows = 0
    with tempfile.TemporaryDirectory(prefix="bench-hf-cache-") as cache:
        start, cpu = time.perf_counter(), _cpu_seconds()
        for path in files:
            rows += len(datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache))
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return {"rows": rows, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": _peak_rss_mb()}


def measure_ingest(folder: Path, near: bool, batch_size: int | None, runner: str | None = None, workers: int = 2) -> dict:
    from fragua.data.ingest import ingest
    from fragua.settings import DataSettings

    extra = {"batch_size": batch_size} if batch_size else {}
    settings = DataSettings(sources=[{"path": str(folder)}], near_dedupe=near, max_rejected_fraction=1.0, **extra)
    sharding = {}
    if runner:
        from fragua.settings import ScaleSettings
        from fragua.tasks.scale import shard_mapper

        scale = ScaleSettings(task_runner=runner, workers=workers)
        sharding = {"map_shards": shard_mapper(scale), "shard_bytes": scale.shard_bytes}
    with tempfile.TemporaryDirectory(prefix="bench-fragua-") as store, contextlib.ExitStack() as stack:
        if runner:
            # Task runs report to a Prefect API: a temporary one, started before the clock and stopped after.
            from prefect.testing.utilities import prefect_test_harness

            stack.enter_context(prefect_test_harness(server_startup_timeout=120))
        start, cpu = time.perf_counter(), _cpu_seconds()
        manifest = ingest(settings, Path(store), **sharding)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    sources = manifest.sources
    return {
        "rows": sum(s.rows for s in sources), "kept": sum(s.kept for s in sources), "duplicates": sum(s.duplicates for s in sources),
        "quarantined": sum(s.quarantined for s in sources), "rejected": manifest.rejected, "counts": manifest.counts,
        "balanced": all(s.rows == s.kept + s.duplicates + s.quarantined for s in sources),
        "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": _peak_rss_mb(), "id": manifest.id,
    }


def _in_subprocess(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measurement {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to generate (all formats, bad rows and broken lines included)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None, help="data.batch_size (default: the setting's default)")
    parser.add_argument("--skip-near", action="store_true", help="do not measure near-duplicate detection")
    parser.add_argument("--folder", type=Path, default=None, help="where to write the data (default: a temporary folder, removed after)")
    parser.add_argument(
        "--runner", choices=["threads", "dask", "ray"], action="append", default=[],
        help="also ingest with the per-shard work as Prefect tasks on this task runner (repeatable; 'dask' and 'ray' start a local "
        "cluster of --workers) and check that the dataset id equals the plain ingest's",
    )
    parser.add_argument("--workers", type=int, default=2, help="workers of the --runner's local cluster (threads: pool size)")
    options = parser.parse_args()

    folder = options.folder or Path(tempfile.mkdtemp(prefix="fragua-bench-"))
    try:
        start = time.perf_counter()
        counts = generate(folder, options.rows, options.seed)
        size = sum(p.stat().st_size for p in folder.glob("*.jsonl")) / 1e6
        print(f"generated {options.rows:,} rows ({size:.0f} MB) in {time.perf_counter() - start:.1f} s: {counts}")
        batch = ["--batch-size", str(options.batch_size)] if options.batch_size else []
        print(f"before: {_load()}")
        baseline = _in_subprocess("_baseline", str(folder))
        exact = _in_subprocess("_ingest", str(folder), *batch)
        near = None if options.skip_near else _in_subprocess("_ingest", str(folder), "--near", *batch)
        runners = {name: _in_subprocess("_ingest", str(folder), "--runner", name, "--workers", str(options.workers), *batch) for name in options.runner}
        print(f"after:  {_load()}")
    finally:
        if options.folder is None:
            shutil.rmtree(folder, ignore_errors=True)

    def line(name: str, result: dict) -> str:
        return (f"{name:<34} {result['rows']:>10,} {result['seconds']:>8.2f} {result['rows'] / result['seconds']:>11,.0f} "
                f"{result['cpu_seconds']:>8.2f} {result['peak_rss_mb']:>9.0f}")

    print()
    print(f"{'':34} {'rows':>10} {'seconds':>8} {'rows/s':>11} {'CPU s':>8} {'RSS MB':>9}")
    print(line("datasets.load_dataset('json')", baseline))
    def ratio(result: dict) -> str:
        return f"   {result['seconds'] / baseline['seconds']:.2f}x the baseline's time ({result['cpu_seconds'] / baseline['cpu_seconds']:.2f}x its CPU)"

    print(line("fragua ingest, exact dedupe", exact) + ratio(exact))
    if near:
        print(line("fragua ingest, + near-dedupe", near) + ratio(near))
    for name, result in runners.items():
        print(line(f"tasks on {name} ({options.workers} workers)", result) + ratio(result) + f", {result['seconds'] / exact['seconds']:.2f}x plain ingest's")
    for name, result in [("exact", exact), ("near", near)]:
        if result:
            print(f"{name}: kept {result['kept']:,}, duplicates {result['duplicates']:,}, quarantined {result['quarantined']:,} {result['rejected']}; splits {result['counts']}")
    print()
    print(f"bars (exact dedupe): >= 50,000 rows/s: {exact['rows'] / exact['seconds'] >= 50_000}; "
          f"peak RSS <= 1536 MB: {exact['peak_rss_mb'] <= 1536}; time <= 2x baseline: {exact['seconds'] <= 2 * baseline['seconds']}")
    for name, result in runners.items():
        print(f"dataset id: plain ingest {exact['id']}, tasks on {name} {result['id']}: {'identical' if result['id'] == exact['id'] else 'DIFFERENT'}")
    if not all(r["balanced"] for r in (exact, near, *runners.values()) if r):
        raise SystemExit("rows != kept + duplicates + quarantined for some source")
    if any(r["id"] != exact["id"] for r in runners.values()):
        raise SystemExit("a task runner produced a different dataset version than the plain ingest")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_baseline":
        print(json.dumps(measure_baseline(Path(sys.argv[2]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "_ingest":
        arguments = sys.argv[2:]
        size = int(arguments[arguments.index("--batch-size") + 1]) if "--batch-size" in arguments else None
        runner = arguments[arguments.index("--runner") + 1] if "--runner" in arguments else None
        workers = int(arguments[arguments.index("--workers") + 1]) if "--workers" in arguments else 2
        print(json.dumps(measure_ingest(Path(arguments[0]), "--near" in arguments, size, runner, workers)))
    else:
        main()
