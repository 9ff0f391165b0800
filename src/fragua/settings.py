"""One typed settings model for every Fragua flow, task and CLI command.

Sources, highest precedence first: arguments (flow parameters, CLI ``--set``) >
environment (``FRAGUA_TRAIN__LEARNING_RATE=…``) > a TOML/YAML settings file > a shipped
profile > the defaults below, which are tuned so that the embedded demo (tiny local base
model, shipped example data) runs end to end in minutes on a laptop CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

ENV_PREFIX = "FRAGUA_"
ENV_NESTED_DELIMITER = "__"
PROFILE_ENV = "FRAGUA_PROFILE"
SETTINGS_FILE_ENV = "FRAGUA_SETTINGS_FILE"

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def resource_path(*parts: str) -> Path:
    """Path of a file shipped inside the package (example data, corpus, profiles)."""
    return Path(str(resources.files("fragua"))).joinpath(*parts)


def shipped_profiles() -> dict[str, Path]:
    return {p.stem: p for p in sorted(resource_path("profiles").glob("*.toml"))}


def check_name(value: str, what: str) -> str:
    """Reject names that could escape a registry prefix or a work directory."""
    if not NAME_PATTERN.fullmatch(value) or ".." in value:
        raise ValueError(
            f"invalid {what} {value!r}: use letters, digits, '.', '_' and '-' only "
            "(no '/', '..', spaces or control characters), at most 100 characters"
        )
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


HF_PREFIX = "hf:"


class SourceSpec(Section):
    path: str = Field(
        description=(
            "A file (JSONL, JSON, CSV, Parquet), a folder of such files, a folder written by "
            "datasets' save_to_disk, or 'hf:NAME' for a Hugging Face hub dataset."
        )
    )
    format: Literal["auto", "alpaca", "prompt_completion", "chat", "sharegpt", "squad", "head_qa", "multiple_choice"] = Field(
        "auto", description="Row format; 'auto' detects it from the first rows' keys."
    )
    domain: str | None = Field(
        None, description="Domain for rows without a 'domain' field and no matching data.routing rule; None falls back to the row's category, then data.default_domain."
    )
    config: str | None = Field(None, min_length=1, description="Configuration of an hf: dataset (e.g. 'es' or 'en' for head_qa).")
    revision: str | None = Field(None, min_length=1, description="Hub revision (branch, tag or commit) of an hf: dataset; pin a commit for reproducible dataset versions.")
    splits: list[str] | None = Field(
        None, min_length=1, description="Splits to read from a DatasetDict (save_to_disk folder or hf: dataset); None reads every split."
    )

    @model_validator(mode="after")
    def _hub_only_fields(self) -> SourceSpec:
        if not self.path.startswith(HF_PREFIX) and (self.config or self.revision):
            raise ValueError(f"source {self.path!r}: 'config' and 'revision' apply only to hf:NAME sources")
        if self.path.startswith(HF_PREFIX) and not self.path[len(HF_PREFIX):].strip():
            raise ValueError("source 'hf:' needs a dataset name, e.g. hf:rajpurkar/squad_v2")
        return self


def default_sources() -> list[SourceSpec]:
    return [SourceSpec(path=str(resource_path("resources", "examples")))]


class DomainRule(Section):
    """Routes rows to a domain; a rule matches when every matcher it sets matches."""

    domain: str = Field(min_length=1, description="Domain given to the rows this rule matches.")
    sources: list[str] = Field(
        default_factory=list, description="Glob patterns on the source path or hf:NAME (e.g. '*/hotel_*.jsonl'); any one may match."
    )
    categories: list[str] = Field(
        default_factory=list, description="Row categories (HEAD-QA 'category' or a 'category' field), compared case-insensitively; any one may match."
    )
    keywords: list[str] = Field(
        default_factory=list, description="Words or phrases searched, case-insensitively and as whole words, in the user messages; any one may match."
    )

    @model_validator(mode="after")
    def _has_matcher(self) -> DomainRule:
        if not (self.sources or self.categories or self.keywords):
            raise ValueError(f"data.routing rule for domain {self.domain!r} needs at least one of sources, categories, keywords")
        if any(not k.strip() for k in self.keywords):
            raise ValueError(f"data.routing rule for domain {self.domain!r} has an empty keyword")
        return self


class DataSettings(Section):
    """Where examples come from and how they are cleaned, routed and split."""

    sources: list[SourceSpec] = Field(
        default_factory=default_sources,
        min_length=1,
        description="Input files or folders; defaults to the example data shipped with Fragua.",
    )
    validation_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of examples held out for validation, assigned by a hash of each example's group so it never changes as data grows."
    )
    test_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="Share of examples held out as a test split, assigned the same way; 0 makes no test split."
    )
    split_seed: int = Field(13, ge=0, description="Salt of the split hash; change it to draw different validation and test sets.")
    min_chars: int = Field(1, ge=1, description="Shortest question or answer kept, in characters, after stripping whitespace.")
    max_chars: int = Field(20_000, ge=1, description="Longest message kept, in characters; longer rows are quarantined.")
    dedupe: bool = Field(True, description="Drop exact duplicates after normalising case and whitespace (counted, not quarantined).")
    near_dedupe: bool = Field(
        False, description="Also quarantine near-duplicates: MinHash/LSH (datasketch) over word n-grams of question and answer. Slower; see the README for its rate."
    )
    near_dedupe_threshold: float = Field(
        0.85, ge=0.3, le=0.95, description="Estimated Jaccard similarity of word n-gram sets at or above which a row is a near-duplicate of an earlier kept row."
    )
    near_dedupe_num_perm: int = Field(
        64, ge=32, le=512, description="MinHash permutations: more estimate similarity more precisely and cost time and memory."
    )
    near_dedupe_ngram: int = Field(3, ge=1, le=10, description="Words per shingle for near-duplicate detection; smaller catches more rewordings of short texts.")
    quality_threshold: float = Field(
        0.8, ge=0.0, le=1.0, description="Rows whose quality score (mean of the four components in the README) is below this are quarantined; 0 turns scoring off."
    )
    squad_unanswerable: Literal["keep", "drop"] = Field(
        "keep", description="SQuAD v2 questions without an answer: keep them with no_answer_text as the target, or quarantine them (counted either way)."
    )
    no_answer_text: str = Field("unanswerable", min_length=1, description="Target answer for unanswerable SQuAD v2 questions when they are kept.")
    routing: list[DomainRule] = Field(
        default_factory=list, description="Rules mapping source, category or keyword to a domain, tried in order, for rows without their own 'domain' field."
    )
    default_domain: str = Field("general", min_length=1, description="Domain of rows that no field, rule, source setting or category places.")
    domains: list[str] | None = Field(
        None, min_length=1, description="Train and evaluate on these domains only (a per-domain view of the dataset version); None uses every domain. Ingest ignores it."
    )
    batch_size: int = Field(
        20_000, ge=64, le=1_000_000, description="Rows processed at a time; ingest memory grows with it, not with the dataset."
    )
    store: Literal["local", "registry"] = Field(
        "local", description="Where dataset versions live: 'local' is work_dir/datasets; 'registry' is the registry's storage (its S3 bucket, or its folder) under datasets/, cached in work_dir/cache/datasets."
    )
    parquet_compression: Literal["none", "snappy", "lz4", "zstd"] = Field(
        "none", description="Codec of the dataset version's Parquet files: none is fastest to write (about twice the size of snappy), snappy compresses fast, zstd smallest (good for versions kept on S3)."
    )
    stats_sample_size: int = Field(
        5_000, ge=10, le=1_000_000, description="Rows per domain (a deterministic hash sample) whose token lengths feed the dataset statistics plot."
    )
    max_rejected_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Fail ingest when more than this share of a file's rows is quarantined: the file is probably in the wrong format."
    )

    @model_validator(mode="after")
    def _consistent(self) -> DataSettings:
        if self.min_chars > self.max_chars:
            raise ValueError(f"data.min_chars ({self.min_chars}) must not exceed data.max_chars ({self.max_chars})")
        if self.near_dedupe_threshold > 0.9 and self.near_dedupe_num_perm < 64:
            raise ValueError(
                f"data.near_dedupe_threshold {self.near_dedupe_threshold} needs data.near_dedupe_num_perm >= 64 "
                f"(got {self.near_dedupe_num_perm}): with fewer, the LSH index cannot form two bands"
            )
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"data.validation_fraction ({self.validation_fraction}) + data.test_fraction ({self.test_fraction}) must leave rows for training (sum below 1)"
            )
        return self

    def ingest_fingerprint(self) -> dict[str, Any]:
        """The settings that shape a dataset version (not the train/eval domain filter or the batch size)."""
        return self.model_dump(mode="json", exclude={"domains", "batch_size"})


ExpandStrategy = Literal[
    "mcq_permutation", "reformulation", "answer_format", "squad_context", "squad_closed_book", "turn_split", "paraphrase", "self_instruct"
]
# Strategies that need a causal LM (expand.generation) to write new text.
MODEL_STRATEGIES = ("paraphrase", "self_instruct")


class ExpandGenerationSettings(Section):
    """The causal LM that writes paraphrases and self-instruct examples, and how it samples."""

    model: str | None = Field(
        None,
        description=(
            "A registry version (e.g. fragua-tiny-v2), a local model folder (adapter or full model) or a hub id; "
            "None uses the version 'production' points to, or the base model while nothing is deployed."
        ),
    )
    do_sample: bool = Field(True, description="Sample tokens; off, decode greedily (the same prompt then always gives the same text).")
    temperature: float = Field(0.8, gt=0.0, le=5.0, description="Sampling temperature: higher gives more varied (and more often rejected) text.")
    top_k: int = Field(50, ge=0, le=100_000, description="Sample only among the k most likely tokens; 0 disables the cut.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling: smallest token set whose probability reaches top_p; 1.0 disables it.")
    max_new_tokens: int = Field(96, ge=4, le=4096, description="Longest generated text, in tokens (a self-instruct example needs room for question and answer).")
    batch_size: int = Field(16, ge=1, le=1024, description="Prompts generated together; lower it when memory runs out.")
    attempts_per_row: float = Field(
        2.0, ge=1.0, le=20.0,
        description="Generations allowed per wanted row: rows rejected by the quality, duplicate or leakage checks are replaced up to this budget.",
    )


class ExpandSettings(Section):
    """Augmentation of the train split only (the validation split is never expanded)."""

    expansion_factor: float = Field(
        1.0, ge=1.0, le=20.0, description="Target size of the expanded train split relative to the original; 1.0 disables expansion."
    )
    strategies: list[ExpandStrategy] = Field(
        default_factory=lambda: ["mcq_permutation", "reformulation", "answer_format", "squad_context", "squad_closed_book", "turn_split"],
        min_length=1,
        description=(
            "Enabled strategies: mcq_permutation (options shuffled, answer letter remapped), reformulation (English/Spanish "
            "question templates), answer_format (letter only / option text / one sentence / with explanation), squad_context "
            "(SQuAD question and context in other layouts), squad_closed_book (SQuAD question without its context), "
            "turn_split (each turn of a multi-turn conversation as its own example), paraphrase and self_instruct "
            "(written by the expand.generation model)."
        ),
    )
    weights: dict[ExpandStrategy, Annotated[float, Field(gt=0.0, le=1000.0)]] = Field(
        default_factory=dict,
        description="Share of the added rows per strategy, relative (e.g. {mcq_permutation = 3, reformulation = 1}); unlisted enabled strategies weigh 1.",
    )
    seed: int = Field(17, ge=0, description="Seed of the augmentation; the same seed gives the same expanded dataset.")
    leakage_threshold: float = Field(
        0.7, ge=0.3, le=1.0,
        description=(
            "A train row whose question has this estimated word-set Jaccard similarity (MinHash, 128 permutations) to a "
            "validation or test question is not expanded, and a generated row that close to one is rejected."
        ),
    )
    generation: ExpandGenerationSettings = Field(
        default_factory=ExpandGenerationSettings, description="Model and sampling of the paraphrase and self_instruct strategies."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ExpandSettings:
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"expand.strategies lists a strategy twice: {self.strategies}")
        unused = sorted(set(self.weights) - set(self.strategies))
        if unused:
            raise ValueError(f"expand.weights names {', '.join(unused)}, which expand.strategies does not enable; add it there or drop its weight")
        return self

    @property
    def model_strategies(self) -> list[str]:
        return [s for s in self.strategies if s in MODEL_STRATEGIES]


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


# Scores in [0, 1], higher is better: what min_score, min_metrics and the regression check read.
ScoreMetric = Literal["token_f1", "exact_match", "rouge_l", "bleu", "numeric_accuracy", "mc_accuracy", "mc_accuracy_norm"]
# What "beat the base model" can be judged on: validation loss (lower is better) or a score.
BaseComparisonMetric = Literal["loss", ScoreMetric]


class ValidateSettings(Section):
    primary_metric: ScoreMetric = Field(
        "token_f1",
        description=(
            "Score in [0, 1] that min_score and the regression check apply to. Free-form answers (greedy generation): "
            "token_f1, exact_match (SQuAD normalisation), rouge_l, bleu (sacrebleu corpus BLEU / 100), numeric_accuracy "
            "(answers that are numbers). Multiple-choice records (log-likelihood of each option): mc_accuracy (summed), "
            "mc_accuracy_norm (per character of the option, like lm-eval-harness acc_norm)."
        ),
    )
    min_score: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="The candidate's primary metric must reach this. The default is the tiny demo model's bar; the production profile uses the seeds' 0.8.",
    )
    min_metrics: dict[ScoreMetric, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict,
        description=(
            "Further minimums, metric -> score in [0, 1] (e.g. {rouge_l = 0.3, mc_accuracy = 0.5}); each must be reached "
            "and must not regress beyond regression_tolerance vs production, like the primary metric."
        ),
    )
    max_perplexity: float | None = Field(None, gt=1.0, description="Optional ceiling on validation perplexity.")
    require_beat_base: bool = Field(True, description="The candidate must be better than the untrained base model on every metric in beat_base_metrics.")
    beat_base_metrics: list[BaseComparisonMetric] = Field(
        default_factory=lambda: ["loss"],
        description=(
            "What 'better than the base model' means: 'loss' (lower validation loss; works even when the base cannot "
            "answer yet) and/or scores that must be strictly higher."
        ),
    )
    regression_tolerance: float = Field(
        0.05, ge=0.0, le=1.0, description="Largest drop of the primary metric (and of each min_metrics metric) vs the production version on the same validation set."
    )
    numeric_percent_as_fraction: bool = Field(
        True, description="For numeric_accuracy: '50%' means 0.5, so it equals '0.5' and '1/2'; off, '50%' means 50."
    )
    numeric_tolerance: float = Field(
        1e-6, ge=0.0, le=1.0, description="For numeric_accuracy: relative tolerance within which two numbers are equal (0 = exact)."
    )
    bleu_tokenize: Literal["13a", "intl", "char", "none"] = Field(
        "13a", description="sacrebleu tokenizer for BLEU: 13a (the WMT standard), intl (splits Unicode punctuation such as '¿'), char, none."
    )
    max_new_tokens: int = Field(48, ge=1, le=4096, description="Generation budget per validation answer.")
    batch_size: int = Field(32, ge=1, le=4096, description="Sequences per evaluation batch (forward passes and generation).")
    max_examples: int | None = Field(None, ge=1, description="Evaluate at most this many validation examples (a deterministic prefix).")
    report_samples: int = Field(12, ge=0, le=1000, description="Answers shown in the validation report and kept in eval.json.")

    @model_validator(mode="after")
    def _beat_base(self) -> ValidateSettings:
        if self.require_beat_base and not self.beat_base_metrics:
            raise ValueError("validate.beat_base_metrics is empty while validate.require_beat_base is true: name at least one metric (e.g. 'loss')")
        return self


class ChatSettings(Section):
    """How `fragua chat` generates (sampling on by default: a chat should not repeat itself verbatim)."""

    do_sample: bool = Field(True, description="Sample the next token; off, decode greedily (temperature, top_k and top_p are then unused).")
    temperature: float = Field(0.7, gt=0.0, le=5.0, description="Sampling temperature: lower is more focused, higher more varied.")
    top_k: int = Field(50, ge=0, le=100_000, description="Sample only among the k most likely tokens; 0 disables the cut.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling: smallest token set whose probability reaches top_p; 1.0 disables it.")
    max_new_tokens: int = Field(128, ge=1, le=32_768, description="Longest reply, in tokens.")
    repetition_penalty: float = Field(1.1, gt=0.0, le=10.0, description="Above 1.0 discourages repeating tokens already in the conversation; 1.0 disables it.")
    system_prompt: str | None = Field(None, description="System message that starts every conversation; None sends none.")
    seed: int | None = Field(None, ge=0, description="Seed for sampling, for reproducible replies; None draws a fresh one.")


S3_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
CREDENTIALS_BLOCK_PATTERN = re.compile(r"^(aws-credentials|minio-credentials)/[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class RegistrySettings(Section):
    backend: Literal["local", "s3"] = Field(
        "local", description="Where versions live: 'local' is a directory (work_dir/registry unless root is set); 's3' is a bucket on AWS S3, MinIO, R2 or any S3-compatible service."
    )
    root: Path | None = Field(None, description="Directory of the local registry; None means work_dir/registry.")
    model_name: str = Field("fragua", description="Name of the model family: versions are <model_name>-<size>-v<N>.")
    size_label: str = Field("auto", description="Size in version names; 'auto' reads the parameter count ('tiny' under 50M, else e.g. '500m', '7b').")
    auto_deploy: bool = Field(True, description="Move the 'production' alias to a version that passes validation; off, versions are only registered.")
    bucket: str | None = Field(None, description="S3 bucket of the registry (backend 's3'); it must exist.")
    prefix: str = Field("", description="Key prefix inside the bucket, e.g. 'team-a/registry', so several registries can share one bucket.")
    endpoint_url: str | None = Field(
        None, pattern=r"^https?://[^\s/]+(/.*)?$",
        description="S3 endpoint for MinIO, Cloudflare R2, Ceph... (e.g. http://127.0.0.1:9000); None means AWS, or AWS_ENDPOINT_URL_S3 / the credentials block's endpoint.",
    )
    region: str | None = Field(None, pattern=r"^[a-z0-9-]{1,40}$", description="S3 region; None uses AWS_DEFAULT_REGION / the AWS config (R2 wants 'auto', MinIO 'us-east-1').")
    access_key_id: str | None = Field(None, min_length=1, description="S3 access key id; None reads the credentials block or the standard AWS chain (AWS_ACCESS_KEY_ID, ~/.aws, instance role).")
    secret_access_key: SecretStr | None = Field(None, description="S3 secret key that goes with access_key_id; prefer credentials_block or the environment.")
    session_token: SecretStr | None = Field(None, description="Temporary-credentials session token that goes with access_key_id.")
    credentials_block: str | None = Field(
        None, description="Prefect block with the S3 credentials, as 'aws-credentials/NAME' or 'minio-credentials/NAME' (see `fragua blocks save-s3-credentials`)."
    )
    storage_block: str | None = Field(
        None,
        pattern=r"^s3-bucket/[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="prefect-aws S3Bucket block ('s3-bucket/NAME', see `fragua blocks save-storage`) holding bucket, folder and credentials; replaces registry.bucket, prefix and credentials.",
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="Bucket in the path (MinIO and most self-hosted servers) or in the host name (AWS); 'auto' lets boto3 decide."
    )
    max_attempts: int = Field(5, ge=1, le=20, description="Attempts per S3 request (botocore 'standard' retries with backoff) before a task-level retry takes over.")
    multipart_threshold_mb: int = Field(16, ge=5, le=5_120, description="Files at least this large go up and down in parts, in parallel.")
    multipart_chunk_mb: int = Field(8, ge=5, le=5_120, description="Part size of multipart transfers; S3 allows at most 10,000 parts per object.")
    max_concurrency: int = Field(16, ge=1, le=128, description="Parallel requests of one version's upload or download (parts and files together).")
    keep_last: int | None = Field(
        None, ge=1, description="Retention: after each deploy (and in `fragua registry gc`) delete all but the newest N versions; versions an alias points to are always kept. None keeps everything."
    )
    gc_grace_minutes: float = Field(
        60.0, ge=0.0, description="`fragua registry gc` removes unfinished versions (no manifest) only when allocated at least this long ago, so it never races an upload in progress."
    )

    @field_validator("model_name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "registry.model_name")

    @field_validator("size_label")
    @classmethod
    def _size(cls, value: str) -> str:
        return check_name(value, "registry.size_label")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        if value is not None and (not S3_BUCKET_PATTERN.fullmatch(value) or ".." in value):
            raise ValueError(f"invalid registry.bucket {value!r}: 3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip("/")
        for part in value.split("/") if value else []:
            check_name(part, "registry.prefix part")
        return value

    @field_validator("credentials_block")
    @classmethod
    def _block(cls, value: str | None) -> str | None:
        if value is not None and not CREDENTIALS_BLOCK_PATTERN.fullmatch(value):
            raise ValueError(f"invalid registry.credentials_block {value!r}: use 'aws-credentials/NAME' or 'minio-credentials/NAME'")
        return value

    @model_validator(mode="after")
    def _backend(self) -> RegistrySettings:
        s3_only = ("bucket", "endpoint_url", "region", "access_key_id", "secret_access_key", "session_token", "credentials_block", "storage_block")
        if self.storage_block is not None and (self.bucket or self.prefix or self.credentials_block or self.access_key_id):
            raise ValueError("registry.storage_block holds the bucket, folder and credentials: do not also set registry.bucket, prefix, credentials_block or access keys")
        if self.backend == "s3":
            if self.bucket is None and self.storage_block is None:
                raise ValueError("registry.backend 's3' needs registry.bucket (FRAGUA_REGISTRY__BUCKET) or registry.storage_block")
            if self.root is not None:
                raise ValueError("registry.root is for the local backend; with registry.backend 's3' use registry.bucket and registry.prefix")
        else:
            given = [name for name in s3_only if getattr(self, name) is not None]
            if given:
                raise ValueError(f"registry.{given[0]} is set but registry.backend is 'local'; set registry.backend to 's3' to use it, or remove it")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("registry.access_key_id and registry.secret_access_key go together: set both or neither")
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("registry.session_token needs registry.access_key_id and registry.secret_access_key")
        if self.access_key_id is not None and self.credentials_block is not None:
            raise ValueError("set registry.access_key_id/secret_access_key or registry.credentials_block, not both")
        if self.multipart_chunk_mb > self.multipart_threshold_mb:
            raise ValueError(
                f"registry.multipart_chunk_mb ({self.multipart_chunk_mb}) must not exceed registry.multipart_threshold_mb ({self.multipart_threshold_mb})"
            )
        return self


class TrackingSettings(Section):
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="W&B mode: offline writes runs under work_dir/wandb for 'wandb sync'; online needs an API key."
    )
    project: str = Field("fragua", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (team or user); None uses the key's default.")
    api_key: SecretStr | None = Field(None, description="W&B API key for online mode; else api_key_block or WANDB_API_KEY is used.")
    api_key_block: str | None = Field(
        None, description="Name of a Prefect Secret block holding the W&B API key (see `fragua blocks save-wandb-key`)."
    )

    @model_validator(mode="after")
    def _key(self) -> TrackingSettings:
        if self.api_key is not None and self.api_key_block is not None:
            raise ValueError("set tracking.api_key or tracking.api_key_block, not both")
        if self.mode == "online" and self.api_key is None and self.api_key_block is None and not os.environ.get("WANDB_API_KEY"):
            raise ValueError(
                "tracking.mode 'online' needs tracking.api_key (FRAGUA_TRACKING__API_KEY), tracking.api_key_block or WANDB_API_KEY"
            )
        return self


class IntakeSettings(Section):
    database_url: str | None = Field(None, description="SQLAlchemy URL of the intake queue; None means SQLite at work_dir/intake.db.")
    min_new_examples: int = Field(10, ge=1, description="autotrain runs the pipeline once this many new examples are pending.")
    max_examples_per_run: int | None = Field(
        None, ge=1, description="autotrain trains on at most this many pending examples per run (oldest first); None takes them all."
    )
    claim_timeout_minutes: float = Field(
        720.0, gt=0, le=100_000,
        description="Examples a run claimed (status 'training') go back to pending when the claim is older than this: the run crashed without releasing them. Keep it above your longest training.",
    )
    api_token: SecretStr | None = Field(
        None, description="Bearer token the HTTP API requires (Authorization: Bearer TOKEN); `fragua serve-api` refuses to start without one."
    )
    api_host: str = Field("127.0.0.1", min_length=1, description="Address `fragua serve-api` binds; 0.0.0.0 exposes it on every interface.")
    api_port: int = Field(8765, ge=0, le=65_535, description="Port of `fragua serve-api`; 0 picks a free one (printed at start).")
    max_request_bytes: int = Field(
        1_048_576, ge=1024, le=1_073_741_824, description="Largest HTTP request body the API accepts; larger ones get 413."
    )
    max_batch_examples: int = Field(1_000, ge=1, le=100_000, description="Most examples one POST /examples/batch may carry; more get 422.")
    max_example_chars: int = Field(20_000, ge=1, le=1_000_000, description="Longest question, answer or message the API and CLI accept, in characters.")
    force_deployment: str = Field(
        "autotrain/on-demand",
        pattern=r"^[^/\s]+/[^/\s]+$",
        description="Deployment ('flow/deployment') that POST /training/force and `fragua autotrain --force --deployment` start when a Prefect server is configured (PREFECT_API_URL).",
    )


class NotificationSettings(Section):
    """Messages about deploys, rollbacks and failed runs, sent through a Prefect notification block."""

    block: str | None = Field(
        None,
        pattern=r"^[a-z0-9-]+/[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="Prefect notification block as 'TYPE/NAME', e.g. 'custom-webhook/fragua-alerts' (see `fragua blocks save-webhook`); None sends nothing.",
    )
    events: list[Literal["deploy", "rollback", "failure"]] = Field(
        default_factory=lambda: ["deploy", "rollback", "failure"], description="Which events are sent."
    )


_selected_files: ContextVar[tuple[Path, ...] | None] = ContextVar("fragua_settings_files", default=None)


def _settings_files() -> tuple[Path, ...]:
    """Profile then settings file, lowest precedence first."""
    chosen = _selected_files.get()
    if chosen is not None:
        return chosen
    return resolve_files(os.environ.get(PROFILE_ENV) or None, os.environ.get(SETTINGS_FILE_ENV) or None)


def resolve_files(profile: str | None, settings_file: str | Path | None) -> tuple[Path, ...]:
    files: list[Path] = []
    if profile:
        profiles = shipped_profiles()
        if profile not in profiles:
            raise ValueError(f"unknown profile {profile!r}; shipped profiles: {', '.join(profiles)}")
        files.append(profiles[profile])
    if settings_file:
        path = Path(settings_file)
        if not path.is_file():
            raise ValueError(f"settings file {path} does not exist")
        if path.suffix.lower() not in {".toml", ".yaml", ".yml"}:
            raise ValueError(f"settings file {path} must end in .toml, .yaml or .yml")
        files.append(path)
    return tuple(files)


def _file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    if path.suffix.lower() == ".toml":
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    return YamlConfigSettingsSource(settings_cls, yaml_file=path)


# The section is called "validate" as the contract says; it shadows pydantic's deprecated
# ``BaseModel.validate`` classmethod only on instances, which nothing here calls.
warnings.filterwarnings("ignore", message='Field name "validate"', category=UserWarning)


class ScaleSettings(Section):
    """Where per-shard work (ingest's row preparation, expand's row checks and variants, batch evaluation) runs: here, or a Dask / Ray cluster."""

    task_runner: Literal["threads", "dask", "ray"] = Field(
        "threads",
        description=(
            "Prefect task runner of the per-shard tasks: 'threads' (this process: ThreadPoolTaskRunner for batch evaluation; "
            "ingest streams with its own reader/writer threads and expand runs its shards inline, faster here than per-shard task runs), 'dask' "
            "(prefect-dask DaskTaskRunner: a local cluster, or scale.address), 'ray' (prefect-ray RayTaskRunner: "
            "a local Ray, or scale.address). The dataset version id does not depend on it."
        ),
    )
    address: str | None = Field(
        None, min_length=1,
        description="Scheduler of an existing cluster: 'tcp://host:8786' for Dask, 'ray://host:10001' or 'auto' for Ray; None starts a local cluster for the run.",
    )
    workers: int = Field(
        2, ge=1, le=1024, description="Worker threads (threads), worker processes of the local Dask cluster, or CPUs of the local Ray; ignored with an address."
    )
    shard_bytes: int = Field(
        16 << 20, ge=1 << 16, le=1 << 34,
        description="Target size of one shard: JSONL files are cut at the first line start after every this many bytes, Parquet files between row groups; other inputs are one shard each.",
    )
    expand_shard_rows: int = Field(
        8192, ge=1, le=1_000_000,
        description="Most train rows per expand shard (leakage check and eligibility), and parents per shard of rule-based variants; the expanded dataset does not depend on it.",
    )
    eval_shard_items: int = Field(
        256, ge=1, le=1_000_000, description="Questions per shard of a batch evaluation (each shard loads the model once: one per worker or GPU)."
    )
    shards_in_flight: int = Field(
        3, ge=1, le=4096, description="Shards submitted and not yet merged: bounds the memory of the results waiting to be merged in order (expand asks for variant shards as its merge needs them)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ScaleSettings:
        if self.task_runner == "threads" and self.address is not None:
            raise ValueError(f"scale.address ({self.address!r}) needs scale.task_runner 'dask' or 'ray'; threads run in this process")
        return self


class Settings(BaseSettings):
    """Everything a Fragua run needs; the Prefect UI renders it as the flows' parameter form."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        validate_default=True,
    )

    work_dir: Path = Field(Path(".fragua"), description="Where base models, datasets, runs, the local registry and W&B files go.")
    data: DataSettings = Field(default_factory=DataSettings, description="Sources, cleaning and split.")
    expand: ExpandSettings = Field(default_factory=ExpandSettings, description="Train-split augmentation.")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Base model, method and hyperparameters.")
    validate: ValidateSettings = Field(default_factory=ValidateSettings, description="Metrics and promotion gates.")
    hpo: HpoSettings = Field(default_factory=HpoSettings, description="Hyperparameter search space and budget.")
    registry: RegistrySettings = Field(default_factory=RegistrySettings, description="Model registry and deployment.")
    tracking: TrackingSettings = Field(default_factory=TrackingSettings, description="Weights & Biases logging.")
    intake: IntakeSettings = Field(default_factory=IntakeSettings, description="Queue of new examples for autotrain.")
    notifications: NotificationSettings = Field(default_factory=NotificationSettings, description="Deploy, rollback and failure notifications.")
    chat: ChatSettings = Field(default_factory=ChatSettings, description="Generation settings of `fragua chat`.")
    scale: ScaleSettings = Field(default_factory=ScaleSettings, description="Task runner of per-shard work (threads, Dask, Ray).")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = [_file_source(settings_cls, path) for path in reversed(_settings_files())]
        return (init_settings, env_settings, *files)

    @model_validator(mode="after")
    def _cross_section(self) -> Settings:
        if self.validate.max_new_tokens >= self.train.max_seq_length:
            raise ValueError(
                f"validate.max_new_tokens ({self.validate.max_new_tokens}) must be below "
                f"train.max_seq_length ({self.train.max_seq_length}) so prompts still fit"
            )
        if self.train.stream_data:
            if self.data.store != "registry" or self.registry.backend != "s3" or self.registry.bucket is None:
                raise ValueError(
                    "train.stream_data reads the train split from the registry's S3 bucket: set data.store = 'registry', "
                    "registry.backend = 's3' and registry.bucket (a registry.storage_block cannot be streamed from)"
                )
            if self.train.num_processes > 1:
                raise ValueError(f"train.stream_data trains in one process; train.num_processes is {self.train.num_processes}")
        if self.train.base_model is None and self.train.max_seq_length > self.train.tiny.max_position_embeddings:
            raise ValueError(
                f"train.max_seq_length ({self.train.max_seq_length}) exceeds what the tiny base model accepts "
                f"(train.tiny.max_position_embeddings = {self.train.tiny.max_position_embeddings})"
            )
        return self

    @classmethod
    def load(
        cls, *, profile: str | None = None, settings_file: str | Path | None = None, **overrides: Any
    ) -> Settings:
        """Build settings from a profile and/or file plus explicit overrides (which win over env)."""
        profile = profile or os.environ.get(PROFILE_ENV) or None
        settings_file = settings_file or os.environ.get(SETTINGS_FILE_ENV) or None
        with using_files(resolve_files(profile, settings_file)):
            return cls(**overrides)

    # Derived locations ------------------------------------------------------------------

    @property
    def work_path(self) -> Path:
        return self.work_dir.expanduser().resolve()

    @property
    def tiny_base_path(self) -> Path:
        return self.work_path / "base" / "fragua-tiny"

    @property
    def datasets_path(self) -> Path:
        return self.work_path / "datasets"

    @property
    def runs_path(self) -> Path:
        return self.work_path / "runs"

    @property
    def registry_path(self) -> Path:
        root = self.registry.root
        return root.expanduser().resolve() if root else self.work_path / "registry"

    @property
    def intake_url(self) -> str:
        return self.intake.database_url or f"sqlite:///{self.work_path / 'intake.db'}"

    @property
    def base_model_ref(self) -> str:
        return self.train.base_model or str(self.tiny_base_path)

    def redacted(self) -> dict[str, Any]:
        """JSON-safe dump with every secret masked: what goes to W&B, manifests and artifacts."""
        return self.model_dump(mode="json")

    def fingerprint(self, *sections: str) -> str:
        """Stable hash of the named sections (or all), for run ids and cache keys."""
        dump = self.redacted()
        chosen = {name: dump[name] for name in sections} if sections else dump
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()


@contextmanager
def using_files(files: tuple[Path, ...]) -> Iterator[None]:
    token = _selected_files.set(files)
    try:
        yield
    finally:
        _selected_files.reset(token)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn CLI ``--set train.epochs=2`` pairs into a nested dict; values parse as JSON when they can."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects SECTION.FIELD=VALUE, got {pair!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = result
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {pair!r} conflicts with another --set for {part!r}")
        node[leaf] = value
    return result


def describe_validation_error(error: ValidationError) -> str:
    """One line per bad field, naming its dotted path, the value given and how to set it."""
    lines = []
    for item in error.errors():
        loc = [part for part in item["loc"] if part != "[key]"]  # pydantic appends "[key]" for a bad mapping key
        path = ".".join(str(part) for part in loc) or "settings"
        env = ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p).upper() for p in loc if not isinstance(p, int))
        given = item.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"{path}: {item['msg']}{shown} [set it with --set {path}=…, {env}, or a settings file]")
    return "invalid settings:\n  " + "\n  ".join(lines)
