"""Section ``train`` (method, hyperparameters, adapter, quantisation, tiny base, launcher) and section ``hpo``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fragua.settings.base import Section


class LoraSettings(Section):
    r: int = Field(64, ge=1, le=1024, description="Adapter rank: higher learns more, costs more memory. 64 suits the tiny model learning from scratch; 8-32 is typical for pretrained ones.")
    alpha: int = Field(128, ge=1, description="Scaling numerator; the update is scaled by alpha / r (2 here).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input; raise it against overfitting on small data.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear' for every linear layer except the output head."
    )


class QuantSettings(Section):
    bits: Literal[4, 8] = Field(4, description="Weight precision of the frozen base model for method 'qlora'.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type; NF4 suits normally distributed weights.")
    double_quant: bool = Field(True, description="Also quantise the quantisation constants (saves ~0.4 bit per weight).")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="Dtype of the matmuls on dequantised weights.")


class TinyBaseSettings(Section):
    """Shape of the random-init local base model built by ``fragua init-base``."""

    vocab_size: int = Field(2048, ge=300, le=65_536, description="BPE vocabulary size of the tokenizer trained on the shipped corpus.")
    hidden_size: int = Field(128, ge=16, description="Model width.")
    intermediate_size: int = Field(352, ge=16, description="MLP width.")
    num_layers: int = Field(2, ge=1, description="Transformer blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads; must divide hidden_size.")
    max_position_embeddings: int = Field(512, ge=64, description="Longest sequence the model accepts.")
    init_std: float = Field(
        0.1, gt=0.0, le=1.0,
        description="Std of the random weights. Larger than the usual 0.02 because adapters cannot retrain the frozen embeddings: with 0.02 the tied output head cannot produce confident predictions at all.",
    )
    seed: int = Field(0, ge=0, description="Seed of the weight initialisation.")

    @model_validator(mode="after")
    def _heads(self) -> TinyBaseSettings:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"train.tiny.hidden_size ({self.hidden_size}) must be divisible by train.tiny.num_heads ({self.num_heads})")
        return self


class AccelerateSettings(Section):
    """Multi-process / multi-GPU training through ``accelerate launch`` with a generated config file."""

    strategy: Literal["torchrun", "ddp", "fsdp", "deepspeed"] = Field(
        "torchrun",
        description=(
            "How train.num_processes > 1 processes are launched: 'torchrun' (plain DDP, no config file), or accelerate with "
            "'ddp' (DistributedDataParallel), 'fsdp' (parameters, gradients and optimiser state sharded across processes) "
            "or 'deepspeed' (ZeRO; needs the deepspeed package on GPU machines). On a machine without GPUs 'ddp' runs on CPU (gloo)."
        ),
    )
    zero_stage: Literal[1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage: 1 shards optimiser state, 2 also gradients, 3 also parameters (largest models).")
    offload: Literal["none", "cpu"] = Field("none", description="DeepSpeed / FSDP: keep optimiser state (and with ZeRO-3 / FSDP parameters) in CPU memory when GPU memory runs out; slower.")
    fsdp_sharding: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = Field(
        "FULL_SHARD", description="FSDP sharding strategy: FULL_SHARD like ZeRO-3, SHARD_GRAD_OP like ZeRO-2, HYBRID_SHARD full within a node and replicated across nodes."
    )
    num_machines: int = Field(1, ge=1, le=1024, description="Machines in the job; train.num_processes is per machine.")
    machine_rank: int = Field(0, ge=0, description="This machine's rank (0 is the main machine).")
    main_process_ip: str | None = Field(None, min_length=1, description="Address of machine 0 when num_machines > 1.")
    main_process_port: int = Field(29500, ge=1, le=65535, description="Port of the rendezvous on machine 0.")

    @model_validator(mode="after")
    def _consistent(self) -> AccelerateSettings:
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"train.accelerate.machine_rank ({self.machine_rank}) must be below train.accelerate.num_machines ({self.num_machines})")
        if self.num_machines > 1 and self.main_process_ip is None:
            raise ValueError("train.accelerate.num_machines > 1 needs train.accelerate.main_process_ip (the address of machine 0)")
        if self.num_machines > 1 and self.strategy == "torchrun":
            raise ValueError("train.accelerate.num_machines > 1 needs train.accelerate.strategy 'ddp', 'fsdp' or 'deepspeed'")
        return self


class TrainSettings(Section):
    base_model: str | None = Field(
        None,
        description="Hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct) or local folder; None uses the tiny local base under work_dir/base, built on first use.",
    )
    method: Literal["lora", "dora", "qlora", "full"] = Field(
        "lora", description="lora/dora: adapters on a frozen base; qlora: adapters on a 4/8-bit base (bitsandbytes); full: every weight trains."
    )
    epochs: float = Field(12.0, gt=0, le=1000, description="Passes over the train split; a few hundred examples need many.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps (overrides epochs).")
    learning_rate: float = Field(5e-3, gt=0, le=1.0, description="Peak learning rate. The default suits adapters on the random-init tiny model; pretrained models want ~1e-4 to 2e-4.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field("cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.05, ge=0.0, le=0.5, description="Share of steps spent warming the learning rate up from 0.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="Decoupled weight decay (AdamW).")
    batch_size: int = Field(16, ge=1, le=4096, description="Examples per device per step; lower it when memory runs out.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Steps whose gradients add up before an update: effective batch = batch_size × this.")
    max_seq_length: int = Field(256, ge=16, le=131_072, description="Tokens per example; longer examples are truncated (and counted).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory, ~30% slower.")
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = Field("sdpa", description="Attention kernel; flash_attention_2 needs the flash-attn package and a GPU.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N optimiser steps; a retried run resumes from the newest complete one.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk per run (and in the registry's storage with checkpoint_store 'registry').")
    stream_data: bool = Field(
        False,
        description=(
            "Read the train split straight from the registry's S3 bucket as training consumes it (pyarrow range reads, "
            "no download of the dataset version): needs data.store 'registry' on registry.backend 's3' with registry.bucket. "
            "The split is read once to count its trainable rows, then once per epoch through a shuffle buffer."
        ),
    )
    shuffle_buffer: int = Field(10_000, ge=1, le=10_000_000, description="Rows in the shuffle buffer of a streamed train split (train.stream_data).")
    checkpoint_store: Literal["local", "registry"] = Field(
        "local",
        description=(
            "'registry' also uploads every complete checkpoint to the registry's storage (checkpoints/<run id>/, the S3 bucket "
            "with registry.backend 's3') while training runs, and a run with no newer checkpoint on local disk resumes from "
            "the newest one there: a retry on another machine or pod continues the run."
        ),
    )
    logging_steps: int = Field(10, ge=1, description="Log loss, learning rate and throughput every N steps.")
    seed: int = Field(42, ge=0, description="Seed of adapter init, shuffling and dropout; same seed on CPU gives the same loss curve.")
    trust_remote_code: bool = Field(False, description="Allow model repositories to run their own Python code. Only for sources you trust.")
    gguf_file: str | None = Field(
        None,
        description="GGUF file inside base_model (a hub repo or local folder) to load and dequantise with transformers' gguf_file=; a base_model that is itself a path to a .gguf file needs no gguf_file. Needs the gguf package (pip install 'fragua[gguf]').",
    )
    batching: Literal["padding_free", "length_grouped", "padded"] = Field(
        "padding_free",
        description=(
            "padding_free: a batch's examples are concatenated into one sequence with position ids restarting per example; "
            "sdpa runs per-example causal attention, flash_attention_2 its varlen kernel, eager a block-diagonal mask, so no example "
            "attends to another and no compute goes to padding. Checked on the model before training; a model whose attention does "
            "not keep packed examples apart falls back to length_grouped. length_grouped: padded batches of similar-length examples. "
            "padded: random batches padded to their longest example (the plain Trainer recipe)."
        ),
    )
    eval_steps: int | None = Field(None, ge=1, description="Evaluate on the validation split every N optimiser steps; None evaluates once per epoch (early stopping then evaluates every save_steps).")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without a lower validation loss and keep the best checkpoint; None trains all epochs/steps."
    )
    early_stopping_threshold: float = Field(0.0, ge=0.0, description="Smallest drop of validation loss that counts as an improvement for early stopping.")
    num_processes: int = Field(
        1, ge=1, le=1024, description="Training processes (data parallel, launched with torchrun): one per GPU, or several CPU processes (gloo) on a CPU machine. batch_size is per process."
    )
    incremental: bool = Field(
        False,
        description="Start from the production version's weights and train on the examples that are new since its dataset plus a replay sample of older ones; without a production version, train from the base model on everything.",
    )
    replay_ratio: float = Field(
        1.0, ge=0.0, le=100.0, description="Incremental training: older examples replayed per new example (drawn at random with train.seed), against forgetting what earlier versions learned; 0 trains on new examples only."
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Adapter shape (methods lora, dora, qlora).")
    quant: QuantSettings = Field(default_factory=QuantSettings, description="Base-model quantisation (method qlora).")
    tiny: TinyBaseSettings = Field(default_factory=TinyBaseSettings, description="Shape of the built-in tiny base model.")
    accelerate: AccelerateSettings = Field(default_factory=AccelerateSettings, description="Launcher and strategy (DDP, FSDP, DeepSpeed ZeRO) of multi-process training.")

    @model_validator(mode="after")
    def _consistent(self) -> TrainSettings:
        if self.attn_implementation == "flash_attention_2" and self.precision == "fp32":
            raise ValueError("train.attn_implementation 'flash_attention_2' needs train.precision 'bf16', 'fp16' or 'auto' (it has no fp32 kernels)")
        if isinstance(self.lora.target_modules, list) and not self.lora.target_modules:
            raise ValueError("train.lora.target_modules is empty: name the modules to adapt or use 'all-linear'")
        if self.early_stopping_patience is not None and self.save_steps % self.evaluation_interval:
            raise ValueError(
                f"train.save_steps ({self.save_steps}) must be a multiple of train.eval_steps ({self.eval_steps}) with early stopping, "
                "so that every evaluated step has a checkpoint to return to"
            )
        if self.gguf_file is not None and (self.base_model is None or self.base_model.endswith(".gguf")):
            raise ValueError("train.gguf_file names a file inside train.base_model (a hub repo or folder); set train.base_model to that repo or folder")
        return self

    @property
    def evaluation_interval(self) -> int:
        """Steps between evaluations when they run by steps (eval_steps, or save_steps for early stopping)."""
        return self.eval_steps or self.save_steps


class HpoSettings(Section):
    """Hyperparameter search (`fragua hpo`): trials drawn from the candidate values below."""

    trials: int = Field(6, ge=1, le=1000, description="Trials to run at most; each trains one run on the same dataset and is scored by validation loss.")
    time_budget_minutes: float = Field(
        30.0, gt=0, le=100_000, description="Wall-clock budget of the search: trials not started by then are skipped and a running trial stops at its next step."
    )
    learning_rates: list[float] = Field(
        default_factory=lambda: [1e-3, 3e-3, 5e-3], min_length=1, description="Candidate peak learning rates."
    )
    ranks: list[int] = Field(default_factory=lambda: [16, 64], min_length=1, description="Candidate LoRA ranks (train.lora.r).")
    alphas: list[int] | None = Field(
        None, min_length=1, description="Candidate LoRA alphas; None pairs each rank with alpha = 2 x rank (the scale the defaults use)."
    )
    epochs: list[float] = Field(default_factory=lambda: [6.0, 12.0], min_length=1, description="Candidate numbers of epochs.")
    seed: int = Field(0, ge=0, description="Seed of the draw of trials from the candidate grid (trials are all grid points when the grid is not larger).")

    @field_validator("learning_rates")
    @classmethod
    def _rates(cls, values: list[float]) -> list[float]:
        if any(not 0 < v <= 1 for v in values):
            raise ValueError(f"hpo.learning_rates must lie in (0, 1], got {values}")
        return values

    @field_validator("ranks", "alphas", "epochs")
    @classmethod
    def _positive(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and any(v <= 0 for v in values):
            raise ValueError(f"candidate values must be positive, got {values}")
        return values
