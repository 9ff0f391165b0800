"""Fine-tuning with the transformers Trainer and peft, as one lifecycle of named steps.

``train`` sets up the tokenizer and the model (``train.model``: base, 4-bit, adapters new or
continued), the data (``train.data``: encoded in memory, or streamed from storage), the
callbacks (``train.callbacks``) and the Trainer; then trains, resuming from the newest complete and
sound checkpoint (``train.checkpoints``), saves the adapter (or full model), and builds the report.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from fragua.data.records import Record
from fragua.settings import TrainSettings
from fragua.train.batching import BatchingPlan
from fragua.train.cache import TrainingCache
from fragua.train.callbacks import RunCallbacks, Throughput, setup_callbacks
from fragua.train.checkpoints import latest_complete_checkpoint, newest_sound_checkpoint
from fragua.train.data import StreamedSplit, TrainingData, setup_data
from fragua.train.model import BuiltModel, build_model, setup_tokenizer
from fragua.train.report import PhaseClock, TrainReport
from fragua.train.runs import RunFolder

logger = logging.getLogger("fragua.train")


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
    cache: TrainingCache | None = None,
    tracking_ready: Callable[[], None] | None = None,
) -> TrainReport:
    """Train (or resume) one run and save the adapter (or full model) with its tokenizer.

    ``init_adapter`` continues training a saved adapter (incremental training) instead of
    creating fresh adapters; ``deadline`` (a ``time.time()`` value) stops training early;
    ``extra_callbacks`` are more TrainerCallbacks (the benchmark's meter); ``cache`` keeps
    tokenised splits and the packing check's verdict for the next run; ``tracking_ready`` waits
    for the tracking run that ``report_to`` logs into (set up while this one set up).
    """
    from fragua.models.loading import require_quantization_backend

    if settings.method == "qlora":
        require_quantization_backend()
    started = time.monotonic()
    clock = PhaseClock()
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(path=run_dir)
    checkpoints_dir = folder.checkpoints_dir
    with clock.phase("setup"):
        # transformers' training utilities import torch, peft (and with it bitsandbytes): the bulk of setup on a small model
        from transformers import set_seed

        set_seed(settings.seed)
        tokenizer = setup_tokenizer(base_model, settings, init_adapter)
        data = setup_data(tokenizer, train_records, eval_records, settings, cache=cache)
        # Seed again right before the adapters are created so their init does not depend on
        # how much randomness tokenisation or model loading consumed.
        set_seed(settings.seed)
        built = build_model(base_model, settings, tokenizer, data.tally.probe_rows, init_adapter=init_adapter, cache=cache)
        logger.info("%s", built.plan.note)
        callbacks = setup_callbacks(settings, progress=progress, deadline=deadline, has_eval=data.eval is not None, extra=extra_callbacks)
        trainer = setup_trainer(settings, built, tokenizer, data, callbacks, checkpoints_dir=checkpoints_dir, report_to=report_to, run_name=run_name)
    if tracking_ready is not None:
        tracking_ready()  # its wait is the tracking's time (the caller's report), not this run's
    with clock.phase("training"):
        resumed_from = train_or_resume(trainer, checkpoints_dir)
    with clock.phase("evaluation"):
        eval_loss = final_eval_loss(trainer) if data.eval is not None else None
    adapter_dir = folder.model_dir
    with clock.phase("save"):
        save_model(trainer, tokenizer, adapter_dir, base_model, settings)
    # The loop's own evaluations are evaluation time, not training time.
    clock.move("training", "evaluation", evaluation_seconds(trainer.state.log_history, since_step=_start_step(resumed_from)))
    return train_report(
        trainer, built, data, callbacks, settings=settings, base_model=base_model, run_name=run_name, run_dir=run_dir, adapter_dir=adapter_dir,
        resumed_from=resumed_from, eval_loss=eval_loss, started=started, phases=clock.seconds,
    )


def final_eval_loss(trainer: Any) -> float:
    """The validation loss of the weights training ended with, evaluated once.

    The loop already evaluated them when its last step was an evaluation (every step-based
    run ends with one, an epoch-based run evaluates at the epoch's end, which max_steps or the
    time budget also reaches); with early stopping the best checkpoint's weights are loaded
    at the end, and their loss is the best metric. Only a run that ended without evaluating
    (resumed from its final checkpoint, say) is evaluated here.
    """
    state = trainer.state
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint and state.best_metric is not None:
        return state.best_metric
    evaluations = [entry for entry in state.log_history if "eval_loss" in entry]
    if evaluations and evaluations[-1].get("step") == state.global_step:
        return evaluations[-1]["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def evaluation_seconds(log_history: list[dict[str, Any]], *, since_step: int) -> float:
    """Seconds the Trainer spent in the evaluations it logged after ``since_step`` (this session's)."""
    return sum(entry.get("eval_runtime", 0.0) for entry in log_history if "eval_loss" in entry and entry.get("step", 0) > since_step)


def _start_step(resumed_from: Path | None) -> int:
    """The global step a session started from: a checkpoint folder is named checkpoint-<step>."""
    return int(resumed_from.name.rsplit("-", 1)[-1]) if resumed_from else 0


def setup_trainer(
    settings: TrainSettings, built: BuiltModel, tokenizer: Any, data: TrainingData, callbacks: RunCallbacks, *, checkpoints_dir: Path,
    report_to: list[str], run_name: str,
) -> Any:
    """The Trainer for this run: its arguments, the batching plan's collator and loss, the run's callbacks."""
    from transformers import PrinterCallback

    trainer = _trainer_class()(
        model=built.model,
        args=training_arguments(settings, checkpoints_dir, report_to=report_to, run_name=run_name, has_eval=data.eval is not None, plan=built.plan,
                                max_steps=data.max_steps),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=built.plan.collator(tokenizer),
        compute_loss_func=built.plan.loss_function,
        processing_class=tokenizer,
        callbacks=callbacks.all,
    )
    trainer.throughput = callbacks.throughput
    # Logs go to our ProgressReporter and the tracker, not as raw dicts on stdout.
    trainer.remove_callback(PrinterCallback)
    return trainer


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


def training_arguments(
    settings: TrainSettings, checkpoints_dir: Path, *, report_to: list[str], run_name: str, has_eval: bool, plan: BatchingPlan,
    max_steps: int | None = None,
):
    from transformers import TrainingArguments

    from fragua.models.loading import pick_device, resolve_precision

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


def train_or_resume(trainer: Any, checkpoints_dir: Path) -> Path | None:
    """Run the Trainer to its end, from the newest complete and sound checkpoint when there is one (which it returns)."""
    # The main process checks the checkpoints and moves damaged ones aside; then the others see the same folders.
    with trainer.accelerator.main_process_first():
        main = trainer.accelerator.is_main_process
        resume = newest_sound_checkpoint(checkpoints_dir) if main else latest_complete_checkpoint(checkpoints_dir)
    if resume:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return resume


def save_model(trainer: Any, tokenizer: Any, adapter_dir: Path, base_model: str, settings: TrainSettings) -> None:
    """Process 0 writes the trained adapter (or full model) with its tokenizer; every process waits for it."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.set_attn_implementation(settings.attn_implementation)
    if trainer.is_world_process_zero():
        _write_model(model, tokenizer, adapter_dir, base_model, settings)
    trainer.accelerator.wait_for_everyone()


def _write_model(model: Any, tokenizer: Any, adapter_dir: Path, base_model: str, settings: TrainSettings) -> None:
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


def train_report(
    trainer: Any, built: BuiltModel, data: TrainingData, callbacks: RunCallbacks, *, settings: TrainSettings, base_model: str, run_name: str,
    run_dir: Path, adapter_dir: Path, resumed_from: Path | None, eval_loss: float | None, started: float, phases: dict[str, float],
) -> TrainReport:
    """What the run did, from the Trainer's final state, the data's counts and the callbacks' measurements."""
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
        examples=data.tally.examples,
        truncated=data.tally.truncated,
        dropped=data.tally.dropped,
        trained_tokens=data.tally.trained_tokens,
        streamed_from=data.streamed_from,
        resumed_from=str(resumed_from) if resumed_from else None,
        seconds=round(time.monotonic() - started, 2),
        phase_seconds=phases,
        log_history=state.log_history,
        batching=built.plan.note,
        tokens_per_second=callbacks.reporter.session_tokens_per_second,
        added_tokens=built.added_tokens,
        stopped_early=state.global_step < state.max_steps and not callbacks.time_budget.reached,
        stopped_by_time_budget=callbacks.time_budget.reached and state.global_step < state.max_steps,
        best_checkpoint=state.best_model_checkpoint,
        num_processes=trainer.args.world_size,
        finished_at=datetime.now(timezone.utc).isoformat(),
    )


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    values = [entry[key] for entry in history if key in entry]
    return values[-1] if values else None
