"""Fine-tuning with the transformers Trainer and peft: setup -> train -> save.

Checkpoints carry a completeness marker written after everything else, and a run resumes
from the newest complete one, so a killed or retried training continues where it was.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import BaseModel, Field

from .batching import BatchingPlan
from .chat import IGNORE_INDEX, encode_conversation
from .records import Record
from .settings import TrainSettings

logger = logging.getLogger("fragua.train")

COMPLETE_MARKER = "fragua-complete.json"
CHECKPOINT_PREFIX = "checkpoint-"


class TrainReport(BaseModel):
    run_id: str
    run_dir: str
    adapter_dir: str
    base_model: str
    base_parameters: int = Field(description="Parameters of the base model (for the version's size label).")
    method: str
    global_step: int
    max_steps: int = Field(0, description="Optimiser steps the run was configured for (more than global_step when it stopped early).")
    epochs: float
    train_loss: float | None
    eval_loss: float | None
    examples: int
    truncated: int = Field(description="Examples cut at max_seq_length (kept).")
    dropped: int = Field(description="Examples with no answer token left after truncation (not trainable).")
    trained_tokens: int
    resumed_from: str | None
    seconds: float
    log_history: list[dict[str, Any]]
    batching: str = Field("", description="How batches were formed and why (padding-free or the fallback).")
    tokens_per_second: float | None = Field(None, description="Training throughput in non-padding tokens per second (this session).")
    added_tokens: list[str] = Field(default_factory=list, description="Tokens added to the tokenizer (e.g. ChatML markers) whose embedding rows were trained.")
    stopped_early: bool = Field(False, description="Early stopping ended the run before max_steps.")
    stopped_by_time_budget: bool = Field(False, description="The time budget (hyperparameter search) ended the run before max_steps.")
    best_checkpoint: str | None = Field(None, description="Checkpoint with the lowest validation loss, loaded at the end (early stopping).")
    num_processes: int = 1
    parent_version: str | None = Field(None, description="Registry version whose weights this run started from (incremental training).")
    incremental: dict[str, Any] | None = Field(None, description="Incremental training: new and replayed example counts.")
    tracking_run: str | None = None
    streamed_from: str | None = Field(None, description="Where the train split was streamed from (train.stream_data), read as training went; None: read whole.")
    finished_at: str


@dataclass
class EncodedSplit:
    rows: list[dict[str, list[int]]]
    truncated: int
    dropped: int

    @property
    def trained_tokens(self) -> int:
        return sum(sum(1 for label in row["labels"] if label != IGNORE_INDEX) for row in self.rows)


def encode_records(tokenizer: Any, records: list[Record], max_length: int) -> EncodedSplit:
    rows, truncated, dropped = [], 0, 0
    for record in records:
        encoded = encode_conversation(tokenizer, record.messages, max_length)
        truncated += encoded.truncated
        if encoded.trained_tokens == 0:
            dropped += 1
            continue
        rows.append({"input_ids": encoded.input_ids, "labels": encoded.labels})
    return EncodedSplit(rows, truncated, dropped)


@dataclass
class StreamedSplit:
    """A train split read from storage as it is consumed (no local copy): ``records`` opens a new
    pass over it. Training streams it twice and more: once to count what is trainable (the step
    count and the report), then once per epoch."""

    records: Callable[[], Iterator[Record]]
    description: str


@dataclass
class StreamTally:
    """What one pass over a streamed split found: EncodedSplit's counts without keeping the rows."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    trained_tokens: int = 0
    probe_rows: list[list[int]] = field(default_factory=list)


def encoded_stream(tokenizer: Any, records: Iterator[Record], max_length: int, tally: StreamTally | None = None) -> Iterator[dict[str, list[int]]]:
    """Rows to train on, encoded as they are read (those with no answer token left are skipped, as in encode_records)."""
    for record in records:
        encoded = encode_conversation(tokenizer, record.messages, max_length)
        if tally is not None:
            tally.truncated += encoded.truncated
            tally.dropped += encoded.trained_tokens == 0
        if encoded.trained_tokens == 0:
            continue
        if tally is not None:
            tally.examples += 1
            tally.trained_tokens += encoded.trained_tokens
            if len(tally.probe_rows) < 3:
                tally.probe_rows.append(encoded.input_ids[:16])
        yield {"input_ids": encoded.input_ids, "labels": encoded.labels}


def streamed_steps(settings: TrainSettings, examples: int, world_size: int = 1) -> int:
    """Optimiser steps for ``settings.epochs`` over ``examples`` rows, as the Trainer counts them for a sized dataset."""
    if settings.max_steps:
        return settings.max_steps
    batches = math.ceil(examples / (settings.batch_size * world_size))
    return max(1, math.ceil(settings.epochs * math.ceil(batches / settings.gradient_accumulation_steps)))


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX):])


def latest_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """Newest checkpoint whose marker was written; half-written ones (a killed save) are ignored."""
    if not checkpoints_dir.is_dir():
        return None
    complete = [
        p for p in checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / COMPLETE_MARKER).is_file()
    ]
    return max(complete, key=checkpoint_step, default=None)


def announce_progress(event: dict[str, Any]) -> None:
    """Log a progress event; the record carries it as ``record.progress`` (the CLI's progress bar reads it)."""
    logger.info(
        "step %s/%s loss %.4f lr %.2e %s tokens/s eta %ss",
        event["step"], event["max_steps"], event["loss"], event["learning_rate"],
        event.get("tokens_per_second") or "-", event["eta_seconds"],
        extra={"progress": event},
    )


class Throughput:
    """Non-padding tokens per second between two logging steps."""

    def __init__(self) -> None:
        self.since = time.monotonic()
        self.tokens = 0

    def reset(self, tokens: int) -> None:
        self.since, self.tokens = time.monotonic(), tokens

    def rate(self, tokens: int) -> float | None:
        elapsed = time.monotonic() - self.since
        rate = (tokens - self.tokens) / elapsed if elapsed > 0 and tokens > self.tokens else None
        self.reset(tokens)
        return round(rate, 1) if rate is not None else None


def _callbacks(progress: Callable[[dict[str, Any]], None] | None, throughput: Throughput, deadline: float | None):
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        """Marks a checkpoint complete once the Trainer has written all of it."""

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save and state.is_world_process_zero:
                # The folder may be a leftover of a killed save; it is incomplete until re-marked.
                (Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}" / COMPLETE_MARKER).unlink(missing_ok=True)

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
            if folder.is_dir() and state.is_world_process_zero:
                marker = {"global_step": state.global_step, "written_at": datetime.now(timezone.utc).isoformat()}
                (folder / COMPLETE_MARKER).write_text(json.dumps(marker))

    class ProgressReporter(TrainerCallback):
        """Step, loss, learning rate, tokens/s and ETA for logs and the caller's progress hook."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.first_step = 0
            self.first_tokens = 0
            self.session_tokens_per_second: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            self.first_step, self.first_tokens = state.global_step, state.num_input_tokens_seen
            throughput.reset(state.num_input_tokens_seen)

        def on_train_end(self, args, state, control, **kwargs):
            elapsed = time.monotonic() - self.started
            tokens = state.num_input_tokens_seen - self.first_tokens
            self.session_tokens_per_second = round(tokens / elapsed, 1) if tokens > 0 and elapsed > 0 else None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return
            done = state.global_step - self.first_step
            elapsed = time.monotonic() - self.started
            remaining = (state.max_steps - state.global_step) * elapsed / done if done else math.nan
            event = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "loss": logs.get("loss"),
                "learning_rate": logs.get("learning_rate"),
                "tokens_per_second": logs.get("tokens_per_second"),
                "eta_seconds": round(remaining, 1),
            }
            announce_progress(event)
            if progress:
                progress(event)

    class TimeBudget(TrainerCallback):
        """Stops training at a wall-clock deadline (hyperparameter search trials)."""

        def __init__(self) -> None:
            self.reached = False

        def on_step_end(self, args, state, control, **kwargs):
            if deadline is not None and time.time() >= deadline:
                self.reached = control.should_training_stop = True

    return CheckpointMarker(), ProgressReporter(), TimeBudget()


def _trainer_class():
    from transformers import Trainer

    class FraguaTrainer(Trainer):
        """The Trainer, plus tokens/s in every training log (so W&B and the progress hook see it)."""

        throughput: Throughput

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                logs["tokens_per_second"] = self.throughput.rate(self.state.num_input_tokens_seen)
            super().log(logs, start_time)

    return FraguaTrainer


def _peft_config(settings: TrainSettings, new_token_ids: list[int]):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora.r,
        lora_alpha=settings.lora.alpha,
        lora_dropout=settings.lora.dropout,
        target_modules=settings.lora.target_modules,
        use_dora=settings.method == "dora",
        # Rows of tokens the base model never had (ChatML markers added for the template)
        # are random: they must train, or the model cannot read or end a turn.
        trainable_token_indices=new_token_ids or None,
        task_type="CAUSAL_LM",
    )


@dataclass
class BuiltModel:
    model: Any
    base_parameters: int
    plan: BatchingPlan
    added_tokens: list[str]


def build_model(
    base_model: str, settings: TrainSettings, tokenizer: Any, probe_rows: list[list[int]], *, init_adapter: Path | None = None
) -> BuiltModel:
    """The model to train, how its batches are formed, and the base model's parameter count."""
    from .batching import packed_attention, plan_batching, register_attention
    from .modeling import load_causal_lm

    register_attention()
    model = load_causal_lm(base_model, settings, for_training=True)
    # Training needs no KV cache, and with one transformers skips its packed-sequence masks
    # (eager/sdpa would let packed examples attend to each other).
    model.config.use_cache = False
    if settings.method == "qlora":
        keep_cpu_4bit_training_layout(model)
    known = model.get_input_embeddings().num_embeddings
    new_token_ids = list(range(known, len(tokenizer)))
    if new_token_ids:
        model.resize_token_embeddings(len(tokenizer))
    parameters = model.num_parameters()
    plan = plan_batching(model, settings.batching, settings.attn_implementation, probe_rows)
    if plan.mode == "padding_free":
        model.set_attn_implementation(packed_attention(settings.attn_implementation))
    added = tokenizer.convert_ids_to_tokens(new_token_ids)
    if settings.method == "full":
        return BuiltModel(model, parameters, plan, added)
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if settings.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing)
    if init_adapter is not None:
        return BuiltModel(PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True), parameters, plan, added)
    return BuiltModel(get_peft_model(model, _peft_config(settings, new_token_ids)), parameters, plan, added)


def keep_cpu_4bit_training_layout(model: Any) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference during training.

    On CPUs with AVX512-BF16, the first no-grad forward in eval mode (the batching probe, every
    evaluation) repacks a Linear4bit's weights in place into an inference layout. That layout
    needs in_features divisible by the quantisation block size (it crashes otherwise), and
    training after it leaves the LoRA weights unchanged. The training layout serves both.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def training_arguments(
    settings: TrainSettings, checkpoints_dir: Path, *, report_to: list[str], run_name: str, has_eval: bool, plan: BatchingPlan,
    max_steps: int | None = None,
):
    from transformers import TrainingArguments

    from .modeling import pick_device, resolve_precision

    precision = resolve_precision(settings.precision)
    early_stopping = has_eval and settings.early_stopping_patience is not None
    by_steps = early_stopping or settings.eval_steps is not None
    return TrainingArguments(
        output_dir=str(checkpoints_dir),
        run_name=run_name,
        num_train_epochs=settings.epochs,
        max_steps=max_steps or settings.max_steps or -1,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_ratio,
        weight_decay=settings.weight_decay,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=settings.gradient_checkpointing,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        eval_strategy=("steps" if by_steps else "epoch") if has_eval else "no",
        eval_steps=settings.evaluation_interval if by_steps else None,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss" if early_stopping else None,
        greater_is_better=False if early_stopping else None,
        train_sampling_strategy=plan.sampling_strategy,
        include_num_input_tokens_seen=plan.token_count,
        logging_strategy="steps",
        logging_steps=settings.logging_steps,
        seed=settings.seed,
        data_seed=settings.seed,
        report_to=report_to,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        # accelerate would otherwise read a streamed split in process 0 and slice every batch
        # tensor along its first dimension, which cuts a flattened batch's sequence boundaries.
        accelerator_config={"dispatch_batches": False},
        dataloader_pin_memory=pick_device() == "cuda",
        # Without it accelerate does not set up several CPU processes (torchrun) as data parallel.
        use_cpu=pick_device() == "cpu",
    )


def train(
    *,
    base_model: str,
    settings: TrainSettings,
    train_records: list[Record] | StreamedSplit,
    eval_records: list[Record],
    run_dir: Path,
    report_to: list[str],
    run_name: str,
    progress: Callable[[dict[str, Any]], None] | None = None,
    init_adapter: Path | None = None,
    deadline: float | None = None,
    extra_callbacks: list[Any] | None = None,
) -> TrainReport:
    """Train (or resume) one run and save the adapter (or full model) with its tokenizer.

    ``init_adapter`` continues training a saved adapter (incremental training) instead of
    creating fresh adapters; ``deadline`` (a ``time.time()`` value) stops training early;
    ``extra_callbacks`` are more TrainerCallbacks (the benchmark's meter).
    """
    from datasets import Dataset
    from transformers import EarlyStoppingCallback, PrinterCallback, set_seed

    from .modeling import load_tokenizer, require_quantization_backend

    if settings.method == "qlora":
        require_quantization_backend()
    started = time.monotonic()
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints_dir = run_dir / "checkpoints"
    set_seed(settings.seed)
    tokenizer = (
        load_tokenizer(str(init_adapter), trust_remote_code=settings.trust_remote_code)
        if init_adapter is not None
        else load_tokenizer(base_model, trust_remote_code=settings.trust_remote_code, gguf_file=settings.gguf_file)
    )
    eval_split = encode_records(tokenizer, eval_records, settings.max_seq_length)
    if isinstance(train_records, StreamedSplit):
        tally = StreamTally()
        for _ in encoded_stream(tokenizer, train_records.records(), settings.max_seq_length, tally):
            pass
        train_dataset = _streamed_dataset(tokenizer, train_records, settings)
        max_steps = streamed_steps(settings, tally.examples)
        logger.info("streaming the train split from %s: %d trainable examples, %d optimiser steps", train_records.description, tally.examples, max_steps)
    else:
        train_split = encode_records(tokenizer, train_records, settings.max_seq_length)
        tally = StreamTally(len(train_split.rows), train_split.truncated, train_split.dropped, train_split.trained_tokens,
                            [row["input_ids"][:16] for row in train_split.rows[:3]])
        train_dataset, max_steps = Dataset.from_list(train_split.rows), None
    if not tally.examples:
        raise ValueError(f"no trainable examples: all {tally.dropped} lost their answer to train.max_seq_length={settings.max_seq_length}")
    # Seed again right before the adapters are created so their init does not depend on
    # how much randomness tokenisation or model loading consumed.
    set_seed(settings.seed)
    built = build_model(base_model, settings, tokenizer, tally.probe_rows, init_adapter=init_adapter)
    logger.info("%s", built.plan.note)
    has_eval = bool(eval_split.rows)
    throughput = Throughput()
    checkpoint_marker, reporter, time_budget = _callbacks(progress, throughput, deadline)
    callbacks = [checkpoint_marker, reporter, time_budget, *(extra_callbacks or [])]
    if has_eval and settings.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(settings.early_stopping_patience, settings.early_stopping_threshold))
    trainer = _trainer_class()(
        model=built.model,
        args=training_arguments(settings, checkpoints_dir, report_to=report_to, run_name=run_name, has_eval=has_eval, plan=built.plan,
                                max_steps=max_steps),
        train_dataset=train_dataset,
        eval_dataset=Dataset.from_list(eval_split.rows) if has_eval else None,
        data_collator=built.plan.collator(tokenizer),
        compute_loss_func=built.plan.loss_function,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.throughput = throughput
    # Logs go to our ProgressReporter and the tracker, not as raw dicts on stdout.
    trainer.remove_callback(PrinterCallback)
    resume = latest_complete_checkpoint(checkpoints_dir)
    if resume:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    eval_loss = trainer.evaluate()["eval_loss"] if has_eval else None
    adapter_dir = run_dir / "model"
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.set_attn_implementation(settings.attn_implementation)
    if trainer.is_world_process_zero():
        _save(model, tokenizer, adapter_dir, base_model, settings)
    trainer.accelerator.wait_for_everyone()
    state = trainer.state
    return TrainReport(
        run_id=run_name,
        run_dir=str(run_dir),
        adapter_dir=str(adapter_dir),
        base_model=base_model,
        base_parameters=built.base_parameters,
        method=settings.method,
        global_step=state.global_step,
        max_steps=state.max_steps,
        epochs=float(state.epoch or 0.0),
        train_loss=_last(state.log_history, "loss"),
        eval_loss=eval_loss,
        examples=tally.examples,
        truncated=tally.truncated,
        dropped=tally.dropped,
        trained_tokens=tally.trained_tokens,
        streamed_from=train_records.description if isinstance(train_records, StreamedSplit) else None,
        resumed_from=str(resume) if resume else None,
        seconds=round(time.monotonic() - started, 2),
        log_history=state.log_history,
        batching=built.plan.note,
        tokens_per_second=reporter.session_tokens_per_second,
        added_tokens=built.added_tokens,
        stopped_early=state.global_step < state.max_steps and not time_budget.reached,
        stopped_by_time_budget=time_budget.reached and state.global_step < state.max_steps,
        best_checkpoint=state.best_model_checkpoint,
        num_processes=trainer.args.world_size,
        finished_at=datetime.now(timezone.utc).isoformat(),
    )


def _streamed_dataset(tokenizer: Any, split: StreamedSplit, settings: TrainSettings) -> Any:
    """The split as a shuffled ``datasets.IterableDataset`` of encoded rows; each epoch is a new pass
    (the Trainer sets the epoch, which reseeds the shuffle buffer)."""
    from datasets import IterableDataset

    def rows() -> Iterator[dict[str, list[int]]]:
        yield from encoded_stream(tokenizer, split.records(), settings.max_seq_length)

    return IterableDataset.from_generator(rows).shuffle(seed=settings.seed, buffer_size=settings.shuffle_buffer)


def _save(model: Any, tokenizer: Any, adapter_dir: Path, base_model: str, settings: TrainSettings) -> None:
    """Write the adapter (or full model) and tokenizer, then move it in place in one rename."""
    staging = adapter_dir.with_name(adapter_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    if settings.method != "full":
        # Inference loads the base from here: keep the reference the user gave (a .gguf path too).
        for config in model.peft_config.values():
            config.base_model_name_or_path = base_model
    model.config.use_cache = True
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    staging.rename(adapter_dir)


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    values = [entry[key] for entry in history if key in entry]
    return values[-1] if values else None
