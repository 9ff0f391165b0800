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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, Field

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
    tracking_run: str | None = None
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


def _callbacks(progress: Callable[[dict[str, Any]], None] | None):
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        """Marks a checkpoint complete once the Trainer has written all of it."""

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save:
                # The folder may be a leftover of a killed save; it is incomplete until re-marked.
                (Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}" / COMPLETE_MARKER).unlink(missing_ok=True)

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
            if folder.is_dir():
                marker = {"global_step": state.global_step, "written_at": datetime.now(timezone.utc).isoformat()}
                (folder / COMPLETE_MARKER).write_text(json.dumps(marker))

    class ProgressReporter(TrainerCallback):
        """Step, loss, learning rate, tokens/s and ETA for logs and the caller's progress hook."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.first_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            self.first_step = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            done = state.global_step - self.first_step
            elapsed = time.monotonic() - self.started
            remaining = (state.max_steps - state.global_step) * elapsed / done if done else math.nan
            event = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "loss": logs.get("loss"),
                "learning_rate": logs.get("learning_rate"),
                "eta_seconds": round(remaining, 1),
            }
            logger.info("step %(step)s/%(max_steps)s loss %(loss).4f lr %(learning_rate).2e eta %(eta_seconds)ss", event)
            if progress:
                progress(event)

    return [CheckpointMarker(), ProgressReporter()]


def _peft_config(settings: TrainSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora.r,
        lora_alpha=settings.lora.alpha,
        lora_dropout=settings.lora.dropout,
        target_modules=settings.lora.target_modules,
        use_dora=settings.method == "dora",
        task_type="CAUSAL_LM",
    )


def build_model(base_model: str, settings: TrainSettings, tokenizer: Any) -> tuple[Any, int]:
    """The model to train and the base model's parameter count."""
    from .modeling import load_causal_lm

    model = load_causal_lm(base_model, settings, for_training=True)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    parameters = model.num_parameters()
    if settings.method == "full":
        return model, parameters
    from peft import get_peft_model, prepare_model_for_kbit_training

    if settings.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing)
    return get_peft_model(model, _peft_config(settings)), parameters


def training_arguments(settings: TrainSettings, checkpoints_dir: Path, *, report_to: list[str], run_name: str, has_eval: bool):
    from transformers import TrainingArguments

    from .modeling import pick_device, resolve_precision

    precision = resolve_precision(settings.precision)
    return TrainingArguments(
        output_dir=str(checkpoints_dir),
        run_name=run_name,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
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
        eval_strategy="epoch" if has_eval else "no",
        logging_strategy="steps",
        logging_steps=settings.logging_steps,
        seed=settings.seed,
        data_seed=settings.seed,
        report_to=report_to,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=pick_device() == "cuda",
    )


def train(
    *,
    base_model: str,
    settings: TrainSettings,
    train_records: list[Record],
    eval_records: list[Record],
    run_dir: Path,
    report_to: list[str],
    run_name: str,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> TrainReport:
    """Train (or resume) one run and save the adapter (or full model) with its tokenizer."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, set_seed

    from .modeling import load_tokenizer, require_quantization_backend

    if settings.method == "qlora":
        require_quantization_backend()
    started = time.monotonic()
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints_dir = run_dir / "checkpoints"
    set_seed(settings.seed)
    tokenizer = load_tokenizer(base_model, trust_remote_code=settings.trust_remote_code)
    train_split = encode_records(tokenizer, train_records, settings.max_seq_length)
    eval_split = encode_records(tokenizer, eval_records, settings.max_seq_length)
    if not train_split.rows:
        raise ValueError(f"no trainable examples: all {len(train_records)} lost their answer to train.max_seq_length={settings.max_seq_length}")
    # Seed again right before the adapters are created so their init does not depend on
    # how much randomness tokenisation or model loading consumed.
    set_seed(settings.seed)
    model, base_parameters = build_model(base_model, settings, tokenizer)
    trainer = Trainer(
        model=model,
        args=training_arguments(settings, checkpoints_dir, report_to=report_to, run_name=run_name, has_eval=bool(eval_split.rows)),
        train_dataset=Dataset.from_list(train_split.rows),
        eval_dataset=Dataset.from_list(eval_split.rows) if eval_split.rows else None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX),
        processing_class=tokenizer,
        callbacks=_callbacks(progress),
    )
    # Logs go to our ProgressReporter and the tracker, not as raw dicts on stdout.
    trainer.remove_callback(PrinterCallback)
    resume = latest_complete_checkpoint(checkpoints_dir)
    if resume:
        logger.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    eval_loss = trainer.evaluate()["eval_loss"] if eval_split.rows else None
    adapter_dir = run_dir / "model"
    staging = run_dir / "model.partial"
    shutil.rmtree(staging, ignore_errors=True)
    trainer.model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    staging.rename(adapter_dir)
    report = TrainReport(
        run_id=run_name,
        run_dir=str(run_dir),
        adapter_dir=str(adapter_dir),
        base_model=base_model,
        base_parameters=base_parameters,
        method=settings.method,
        global_step=trainer.state.global_step,
        epochs=float(trainer.state.epoch or 0.0),
        train_loss=_last(trainer.state.log_history, "loss"),
        eval_loss=eval_loss,
        examples=len(train_split.rows),
        truncated=train_split.truncated,
        dropped=train_split.dropped,
        trained_tokens=train_split.trained_tokens,
        resumed_from=str(resume) if resume else None,
        seconds=round(time.monotonic() - started, 2),
        log_history=trainer.state.log_history,
        finished_at=datetime.now(timezone.utc).isoformat(),
    )
    del result
    return report


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    values = [entry[key] for entry in history if key in entry]
    return values[-1] if values else None
