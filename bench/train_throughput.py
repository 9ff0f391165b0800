"""Training throughput: Fragua's train vs a plain transformers.Trainer + peft LoRA script.

Both train the same tiny Llama with the same LoRA adapters, learning rate, batch size, seed
and steps on the same variable-length chat examples (16-512 tokens, assistant-only labels),
in the same process, alternating runs. The baseline is the usual recipe: random batches
padded to their longest example, ``sdpa`` attention. Throughput counts non-padding tokens
per second of the training loop (the same callback measures both).

``--whole-process`` measures what a user waits for instead: ``fragua train`` and the plain
script (``bench/plain_trainer.py``) as separate processes, start to exit, on a short job
(the tiny model) and a long one (a ~21M-parameter Llama), with each side's loop time next
to it. Fragua runs against a Prefect server started for the benchmark (``fragua server
start``), with its tokenisation cache cold and warm, and once with a temporary server.

    .venv/bin/python bench/train_throughput.py [--steps 20] [--repeats 2] [--examples 256] [--threads N] [--method lora|qlora] [--model tiny|21m]
    .venv/bin/python bench/train_throughput.py --whole-process [--steps 30] [--long-steps 3] [--repeats 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fragua.data.records import Message, Record
from fragua.models.loading import load_tokenizer
from fragua.models.templates import IGNORE_INDEX
from fragua.models.tiny import build_tiny_base
from fragua.settings import TinyBaseSettings, TrainSettings, resource_path
from fragua.train.data import encode_records
from fragua.train.trainer import train

MIN_TOKENS, MAX_TOKENS = 16, 512


def chat_records(tokenizer, count: int, seed: int) -> list[Record]:
    """Conversations whose encoded length is spread uniformly over 16-512 tokens (a quarter question)."""
    rng = random.Random(seed)
    words = " ".join(p.read_text(encoding="utf-8") for p in sorted(resource_path("resources", "corpus").glob("*.txt"))).split()
    stream = tokenizer(" ".join(words * 4), add_special_tokens=False)["input_ids"]
    overhead = 10  # ChatML markers and role names
    records = []
    for index in range(count):
        total = rng.randint(MIN_TOKENS + overhead, MAX_TOKENS) - overhead
        question = max(2, total // 4)
        start = rng.randrange(0, len(stream) - total)
        records.append(
            Record(
                id=f"bench-{index}",
                messages=[
                    Message(role="user", content=tokenizer.decode(stream[start:start + question]).strip() or "question"),
                    Message(role="assistant", content=tokenizer.decode(stream[start + question:start + total]).strip() or "answer"),
                ],
                domain="bench",
                source="generated",
                split="train",
                origin="original",
            )
        )
    return records


def settings_for(steps: int, method: str) -> TrainSettings:
    """The shared hyperparameters (Fragua's defaults, fixed steps, no checkpoints in the timed loop)."""
    return TrainSettings(method=method, max_steps=steps, batch_size=16, max_seq_length=MAX_TOKENS, save_steps=10_000, logging_steps=steps, seed=0)


def meter():
    """Non-padding tokens per wall-clock second and per CPU second of the training loop."""
    from transformers import TrainerCallback

    class Meter(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.wall, self.cpu, self.tokens = time.monotonic(), time.process_time(), state.num_input_tokens_seen

        def on_train_end(self, args, state, control, **kwargs):
            tokens = state.num_input_tokens_seen - self.tokens
            self.rate = tokens / (time.monotonic() - self.wall)
            self.cpu_rate = tokens / (time.process_time() - self.cpu)

    return Meter()


def run_fragua(base: Path, records: list[Record], settings: TrainSettings, work: Path):
    measured = meter()
    train(base_model=str(base), settings=settings, train_records=records, eval_records=[],
          run_dir=work / f"fragua-{time.monotonic_ns()}", report_to=[], run_name="bench", extra_callbacks=[measured])
    return measured


def run_baseline(base: Path, rows: list[dict], settings: TrainSettings, work: Path):
    """The plain recipe: Trainer + peft LoRA, DataCollatorForSeq2Seq padding to the longest in the batch."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments, set_seed

    set_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if settings.method == "qlora":
        from peft import prepare_model_for_kbit_training

        from fragua.models.loading import quantization_config, torch_dtype

        model = AutoModelForCausalLM.from_pretrained(base, attn_implementation="sdpa", dtype=torch_dtype(settings.precision),
                                                     quantization_config=quantization_config(settings), device_map={"": 0} if torch.cuda.is_available() else {"": "cpu"})
        model = prepare_model_for_kbit_training(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(base, attn_implementation="sdpa")
    lora = settings.lora
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    measured = meter()
    args = TrainingArguments(
        output_dir=str(work / f"baseline-{time.monotonic_ns()}"), max_steps=settings.max_steps, per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate, lr_scheduler_type=settings.lr_scheduler, warmup_steps=settings.warmup_ratio,
        seed=settings.seed, save_strategy="no", logging_steps=settings.logging_steps, report_to=[], disable_tqdm=True,
        remove_unused_columns=False, include_num_input_tokens_seen="non_padding", use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX), callbacks=[measured])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return measured


# The long job's model: a Llama of ~21M parameters (the tiny one has ~0.8M).
LONG_SHAPE = TinyBaseSettings(vocab_size=4096, hidden_size=512, intermediate_size=1408, num_layers=6, num_heads=8)
MODEL_SHAPES = {"tiny": TinyBaseSettings(), "21m": LONG_SHAPE}
FRAGUA = Path(sys.executable).with_name("fragua")


def run_timed(command: list[str], env: dict[str, str], log: Path) -> tuple[float, str]:
    """Wall-clock seconds of one process from start to exit, and its output (kept in ``log``)."""
    began = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - began
    log.write_text(done.stdout + done.stderr)
    if done.returncode:
        sys.exit(f"{' '.join(command[:3])}... failed ({done.returncode}); its output is in {log}")
    return seconds, done.stdout


def prepare_job(folder: Path, shape: TinyBaseSettings, examples: int, env: dict[str, str]) -> tuple[Path, str, Path, Path, int]:
    """The base model, the chat data ingested by Fragua (its dataset id) and the same splits as files for the plain script."""
    from fragua.data.store import load_records, open_dataset_store
    from fragua.settings import Settings

    base = build_tiny_base(folder / "base", shape)
    tokenizer = load_tokenizer(str(base))
    source = folder / "chat.jsonl"
    with source.open("w", encoding="utf-8") as handle:
        for record in chat_records(tokenizer, examples, seed=0):
            handle.write(json.dumps({"messages": [m.model_dump(include={"role", "content"}) for m in record.messages]}) + "\n")
    work = folder / "work"
    # Untimed; its flow also creates (migrates) the Prefect database the timed runs use.
    run_timed([str(FRAGUA), "--work-dir", str(work), "ingest", "--source", str(source)], env, folder / "ingest.log")
    dataset = open_dataset_store(Settings(work_dir=work)).find(None)
    files = []
    for split in ("train", "validation"):
        path = folder / f"{split}.jsonl"
        path.write_text("".join(json.dumps({"messages": [m.model_dump(include={"role", "content"}) for m in r.messages]}) + "\n"
                                for r in load_records(dataset, split)), encoding="utf-8")
        files.append(path)
    from transformers import AutoModelForCausalLM

    parameters = AutoModelForCausalLM.from_pretrained(base).num_parameters()
    return base, dataset.id, files[0], files[1], parameters


def baseline_command(base: Path, train_file: Path, validation_file: Path, output: Path, steps: int) -> list[str]:
    settings = settings_for(steps, "lora")
    lora = settings.lora
    return [sys.executable, str(Path(__file__).with_name("plain_trainer.py")), str(base), str(train_file), str(validation_file), str(output),
            "--steps", str(steps), "--batch-size", str(settings.batch_size), "--max-length", str(settings.max_seq_length),
            "--learning-rate", str(settings.learning_rate), "--scheduler", settings.lr_scheduler, "--warmup", str(settings.warmup_ratio),
            "--r", str(lora.r), "--alpha", str(lora.alpha), "--dropout", str(lora.dropout), "--seed", str(settings.seed)]


def fragua_command(work: Path, base: Path, dataset_id: str, steps: int) -> list[str]:
    """`fragua train` with the plain script's steps, batch size and sequence length; Fragua's defaults otherwise (checkpoints, W&B offline)."""
    settings = settings_for(steps, "lora")
    overrides = {"train.base_model": str(base), "train.max_steps": steps, "train.batch_size": settings.batch_size,
                 "train.max_seq_length": settings.max_seq_length, "train.seed": settings.seed}
    return [str(FRAGUA), "--work-dir", str(work), *[arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")],
            "train", "--dataset", dataset_id]


def fragua_report(work: Path) -> dict:
    (report,) = (work / "runs").glob("*/train_report.json")
    return json.loads(report.read_text())


def whole_process(options: argparse.Namespace) -> None:
    """Each side as its own process, start to exit, alternating; Fragua against a running server and a temporary one."""
    # SIGTERM ends the benchmark through its clean-up: the Prefect server it started is stopped, its folder removed.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="fragua-bench-process-") as temporary:
        folder = Path(temporary)
        (folder / "home").mkdir()
        # The benchmark's own Prefect home and server; nothing of the caller's Prefect set-up applies.
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "FRAGUA_", "WANDB_"))}
        env.update(HOME=str(folder / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", TOKENIZERS_PARALLELISM="false")
        if options.threads:
            env["OMP_NUM_THREADS"] = str(options.threads)
        print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'} ({os.cpu_count()} cores), torch threads per process: "
              f"{options.threads or 'torch default'}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
        jobs = [("short", TinyBaseSettings(), options.steps), ("long", LONG_SHAPE, options.long_steps)]
        prepared = {name: prepare_job(folder / name, shape, options.examples, env) for name, shape, _ in jobs}
        started = subprocess.run([str(FRAGUA), "server", "start", "--port", "0", "--no-ui"], env=env, capture_output=True, text=True, check=False)
        if started.returncode:
            sys.exit(f"fragua server start failed:\n{started.stdout}{started.stderr}")
        try:
            results = measure_jobs(folder, env, jobs, prepared, options.repeats)
        finally:
            subprocess.run([str(FRAGUA), "server", "stop"], env=env, capture_output=True, check=False)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        print_whole_process(jobs, prepared, results)


def measure_jobs(folder: Path, env: dict[str, str], jobs: list, prepared: dict, repeats: int) -> dict[tuple[str, str], list[dict]]:
    """Per job, ``repeats`` rounds of: the plain script, fragua (server, cold cache), fragua (server, warm cache),
    and for the short job fragua with a temporary Prefect server."""
    temporary_env = {**env, "HOME": str(folder / "home-without-server"), "PREFECT_HOME": str(folder / "home" / ".prefect")}
    (folder / "home-without-server").mkdir()
    results: dict[tuple[str, str], list[dict]] = {}
    for name, _, steps in jobs:
        base, dataset_id, train_file, validation_file, _ = prepared[name]
        work = folder / name / "work"
        for repeat in range(repeats):
            output = folder / name / f"baseline-{repeat}"
            seconds, stdout = run_timed(baseline_command(base, train_file, validation_file, output, steps), env, folder / name / f"baseline-{repeat}.log")
            line = json.loads(next(text for text in stdout.splitlines() if text.startswith("BASELINE "))[len("BASELINE "):])
            results.setdefault((name, "plain Trainer + peft script"), []).append({"seconds": seconds, "loop": line["loop_seconds"],
                                                                                 "tokens_per_second": line["tokens_per_second"]})
            shutil.rmtree(output, ignore_errors=True)
            variants = [("fragua train (server running, cold cache)", env, True), ("fragua train (server running, warm cache)", env, False)]
            if name == "short":
                variants.append(("fragua train (temporary Prefect server, warm cache)", temporary_env, False))
            for number, (label, variant_env, cold) in enumerate(variants):
                shutil.rmtree(work / "runs", ignore_errors=True)
                if cold:
                    shutil.rmtree(work / "cache" / "training", ignore_errors=True)
                seconds, _ = run_timed(fragua_command(work, base, dataset_id, steps), variant_env, folder / name / f"fragua-{repeat}-{number}.log")
                report = fragua_report(work)
                results.setdefault((name, label), []).append({"seconds": seconds, "loop": report["phase_seconds"]["training"],
                                                              "tokens_per_second": report["tokens_per_second"], "phases": report["phase_seconds"]})
            print(f"{name} job, round {repeat + 1}: " + ", ".join(f"{label} {runs[-1]['seconds']:.1f} s"
                                                                  for (job, label), runs in results.items() if job == name), flush=True)
    return results


def print_whole_process(jobs: list, prepared: dict, results: dict[tuple[str, str], list[dict]]) -> None:
    for name, _, steps in jobs:
        _, _, train_file, _, parameters = prepared[name]
        baseline = statistics.median(r["seconds"] for r in results[(name, "plain Trainer + peft script")])
        baseline_rate = statistics.median(r["tokens_per_second"] for r in results[(name, "plain Trainer + peft script")])
        print(f"\n{name} job: {parameters / 1e6:.1f}M-parameter Llama, {steps} steps "
              f"({sum(1 for _ in train_file.open())} train conversations); medians of {len(results[(name, 'plain Trainer + peft script')])}")
        print(f"  {'':55} {'whole process':>13} {'vs script':>10} {'loop':>8} {'tokens/s':>9} {'loop speed-up':>13}")
        for (job, label), runs in results.items():
            if job != name:
                continue
            seconds = statistics.median(r["seconds"] for r in runs)
            rate = statistics.median(r["tokens_per_second"] for r in runs)
            print(f"  {label:55} {seconds:>11.1f} s {seconds / baseline:>9.2f}x {statistics.median(r['loop'] for r in runs):>6.1f} s "
                  f"{rate:>9,.0f} {rate / baseline_rate:>12.2f}x")
            if "phases" in runs[-1]:
                print("  " + " " * 4 + "phases (last run): " + ", ".join(f"{k} {v:.1f} s" for k, v in runs[-1]["phases"].items()))
        for label in ("fragua train (server running, cold cache)", "fragua train (server running, warm cache)"):
            fragua = statistics.median(r["seconds"] for r in results[(name, label)])
            print(f"  end to end, {label.removeprefix('fragua train ')}: script {baseline:.1f} s / fragua {fragua:.1f} s = "
                  f"{baseline / fragua:.2f}x (above 1: Fragua faster); fragua takes {fragua / baseline:.2f}x the script's time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per run (--whole-process: of the short job)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--method", choices=["lora", "qlora"], default="lora", help="the same method on both sides")
    parser.add_argument("--model", choices=sorted(MODEL_SHAPES), default="tiny",
                        help="the base trained by both sides in-process: the tiny Llama (~0.7M parameters) or the long job's ~21M one")
    parser.add_argument("--whole-process", action="store_true", help="time `fragua train` and the plain script as whole processes")
    parser.add_argument("--long-steps", type=int, default=3, help="--whole-process: optimiser steps of the long job (the ~21M model; ~30 s a step on one CPU thread)")
    options = parser.parse_args()
    if options.whole_process:
        whole_process(options)
        return
    if options.threads:
        torch.set_num_threads(options.threads)
    from fragua.models.loading import quiet_transformers

    quiet_transformers()
    with tempfile.TemporaryDirectory(prefix="fragua-bench-") as folder:
        work = Path(folder)
        base = build_tiny_base(work / "base", MODEL_SHAPES[options.model])
        tokenizer = load_tokenizer(str(base))
        records = chat_records(tokenizer, options.examples, seed=0)
        rows = encode_records(tokenizer, records, MAX_TOKENS).rows
        lengths = sorted(len(r["input_ids"]) for r in rows)
        settings = settings_for(options.steps, options.method)
        print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
        print(f"data: {len(rows)} chat examples, tokens min {lengths[0]} / median {lengths[len(lengths) // 2]} / max {lengths[-1]}")
        print(f"model: {options.model} ({MODEL_SHAPES[options.model].hidden_size} hidden, {MODEL_SHAPES[options.model].num_layers} layers); same for both: LoRA r={settings.lora.r} alpha={settings.lora.alpha} all-linear, lr {settings.learning_rate}, "
              f"batch {settings.batch_size}, {settings.max_steps} steps, seed {settings.seed}")
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        runs: dict[str, list] = {"baseline": [], "fragua": []}
        peak: dict[str, float] = {}
        for repeat in range(options.repeats):
            for name, run in (("baseline", lambda: run_baseline(base, rows, settings, work)), ("fragua", lambda: run_fragua(base, records, settings, work))):
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                runs[name].append(run())
                if torch.cuda.is_available():
                    peak[name] = max(peak.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**30)
            print(f"run {repeat + 1}: " + ", ".join(
                f"{name} {r[-1].rate:,.0f} tokens/s ({r[-1].cpu_rate:,.0f} per CPU-second)" for name, r in runs.items()), flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        wall = {name: statistics.median(m.rate for m in measured) for name, measured in runs.items()}
        cpu = {name: statistics.median(m.cpu_rate for m in measured) for name, measured in runs.items()}
        print(f"baseline (Trainer + peft, random batches padded to the longest): {wall['baseline']:,.0f} non-padding tokens/s")
        print(f"fragua ({settings.batching}, default settings):                  {wall['fragua']:,.0f} non-padding tokens/s")
        if peak:
            print("peak GPU memory: " + ", ".join(f"{name} {gib:.2f} GiB" for name, gib in peak.items()))
        print(f"ratio: {wall['fragua'] / wall['baseline']:.2f}x  (per CPU-second, which other load on the machine disturbs less: "
              f"{cpu['fragua'] / cpu['baseline']:.2f}x)")

if __name__ == "__main__":
    sys.exit(main())
