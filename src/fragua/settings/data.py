"""Sections ``data`` (sources, cleaning, routing, split) and ``expand`` (train-split augmentation)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from fragua.data.formats import FORMAT_NAMES
from fragua.settings.base import Section, resource_path

HF_PREFIX = "hf:"
DEFAULT_MAX_LINE_BYTES = 64 << 20  # above the 50 MB single rows the bad-input suite judges by data.max_chars


class SourceSpec(Section):
    path: str = Field(
        description=(
            "A file (JSONL, JSON, CSV, Parquet), a folder of such files, a folder written by "
            "datasets' save_to_disk, or 'hf:NAME' for a Hugging Face hub dataset."
        )
    )
    format: Literal[("auto", *FORMAT_NAMES)] = Field(
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
    max_line_bytes: int = Field(
        DEFAULT_MAX_LINE_BYTES, ge=4096, le=1 << 30,
        description=(
            "Longest JSONL line or CSV line/field read, in bytes: a longer one is quarantined (kind line_too_long) "
            "without being loaded; a .json file larger than this is streamed if it is a list of rows, else refused. "
            "Ingest memory grows with it."
        ),
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
