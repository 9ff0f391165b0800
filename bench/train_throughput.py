"""Training throughput: Fragua's train vs a plain transformers.Trainer + peft LoRA script.

Both train the same tiny Llama with the same LoRA adapters, learning rate, batch size, seed
and steps on the same variable-length chat examples (16-512 tokens, assistant-only labels),
in the same process, alternating runs. The baseline is the usual recipe: random batches
padded to their longest example, ``sdpa`` attention. Throughput counts non-padding tokens
per second of the training loop (the same callback measures both).

    .venv/bin/python bench/train_throughput.py [--steps 20] [--repeats 2] [--examples 256] [--threads N] [--method lora|qlora]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--method", choices=["lora", "qlora"], default="lora", help="the same method on both sides")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    from fragua.models.loading import quiet_transformers

    quiet_transformers()
    with tempfile.TemporaryDirectory(prefix="fragua-bench-") as folder:
        work = Path(folder)
        base = build_tiny_base(work / "base", TinyBaseSettings())
        tokenizer = load_tokenizer(str(base))
        records = chat_records(tokenizer, options.examples, seed=0)
        rows = encode_records(tokenizer, records, MAX_TOKENS).rows
        lengths = sorted(len(r["input_ids"]) for r in rows)
        settings = settings_for(options.steps, options.method)
        print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
        print(f"data: {len(rows)} chat examples, tokens min {lengths[0]} / median {lengths[len(lengths) // 2]} / max {lengths[-1]}")
        print(f"same for both: LoRA r={settings.lora.r} alpha={settings.lora.alpha} all-linear, lr {settings.learning_rate}, "
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
