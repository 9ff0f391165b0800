"""Section ``validate`` (metrics and promotion gates) and section ``chat`` (generation of `fragua chat`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from fragua.settings.base import NAME_PATTERN, Section
from fragua.settings.benchmarks import BenchmarkSpec
from fragua.settings.judge import JudgeSettings

# Scores in [0, 1], higher is better: what min_score, min_metrics and the regression check read.
ScoreMetric = Literal["token_f1", "exact_match", "rouge_l", "bleu", "numeric_accuracy", "mc_accuracy", "mc_accuracy_norm", "judge_score"]
# What "beat the base model" can be judged on: validation loss (lower is better) or a score.
BaseComparisonMetric = Literal["loss", ScoreMetric]


class ValidateSettings(Section):
    primary_metric: ScoreMetric = Field(
        "token_f1",
        description=(
            "Score in [0, 1] that min_score and the regression check apply to. Free-form answers (greedy generation): "
            "token_f1, exact_match (SQuAD normalisation), rouge_l, bleu (sacrebleu corpus BLEU / 100), numeric_accuracy "
            "(answers that are numbers). Multiple-choice records (log-likelihood of each option): mc_accuracy (summed), "
            "mc_accuracy_norm (per character of the option, like lm-eval-harness acc_norm). With validate.judge: judge_score "
            "(correct 1, partially correct 0.5, incorrect 0)."
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
    max_drop_from_best: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description=(
            "Largest drop of the primary metric (and of each min_metrics metric) vs the best version ever promoted to "
            "production (or reference_version), on the validation questions both were scored on: unlike "
            "regression_tolerance, which is measured against the current production version, it cannot ratchet down cycle by cycle."
        ),
    )
    reference_version: str | None = Field(
        None,
        pattern=NAME_PATTERN.pattern,
        description="Pin the version max_drop_from_best compares with (e.g. 'fragua-tiny-v3'); None: the best promoted version.",
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
    squad_normalization: Literal["fragua", "official"] = Field(
        "fragua",
        description=(
            "Answer normalisation of exact_match and token_f1: 'official' is the SQuAD script's (lower case, ASCII "
            "punctuation, English articles, spaces); 'fragua' also removes Unicode punctuation such as '¿', '¡', '«' and '…'."
        ),
    )
    judge: JudgeSettings = Field(default_factory=JudgeSettings, description="The judge behind judge_score and the win rate against production.")
    min_win_rate: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description=(
            "Promotion needs the candidate's win rate against production (the judge's pairwise verdicts in both orders, "
            "a tie counting half) to reach this; None: reported, not gated. Needs validate.judge."
        ),
    )
    max_new_tokens: int = Field(48, ge=1, le=4096, description="Generation budget per validation answer.")
    batch_size: int = Field(32, ge=1, le=4096, description="Sequences per evaluation batch (forward passes and generation).")
    max_examples: int | None = Field(None, ge=1, description="Evaluate at most this many validation examples (a deterministic prefix).")
    report_samples: int = Field(12, ge=0, le=1000, description="Answers shown in the validation report and kept in eval.json.")

    # Forgetting: general benchmarks (lm-evaluation-harness) and the team's own trained examples.
    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=list,
        description=(
            "lm-evaluation-harness tasks run on the base model, the production version and the candidate (loaded as Fragua "
            "loads it: base + adapter), e.g. [{task = 'fragua_general_knowledge'}, {task = 'arc_easy', limit = 200, metric = "
            "'acc_norm'}]; the report shows them side by side and validate.max_benchmark_drop gates them. Empty: none run."
        ),
    )
    benchmark_include_path: list[str] = Field(
        default_factory=list,
        description="Folders of lm-eval task YAML files (lm-eval's --include_path), searched with Fragua's shipped tasks before lm-eval's own registry.",
    )
    benchmark_chat_template: bool = Field(
        False,
        description=(
            "Ask benchmark questions through the model's chat template (lm-eval's apply_chat_template), as a chat fine-tune "
            "is used; off, the plain prompts that published scores use."
        ),
    )
    max_benchmark_drop: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description=(
            "Largest drop of each validate.benchmarks metric vs the production version (measured on the same questions); "
            "a bigger drop means the candidate forgot general ability, and it is not promoted."
        ),
    )
    retention_samples: int = Field(
        16,
        ge=0,
        le=1000,
        description=(
            "Trained examples the report scores per group: a sample of what the candidate trained on and, when it follows a "
            "production (or parent) version, of the examples new since it and of the older ones it trained on; each on base, "
            "that version and the candidate. 0 turns the table off."
        ),
    )
    retention_seed: int = Field(0, ge=0, description="Seed of the retention samples: the same data gives the same sample, version after version.")

    @model_validator(mode="after")
    def _beat_base(self) -> ValidateSettings:
        if self.require_beat_base and not self.beat_base_metrics:
            raise ValueError("validate.beat_base_metrics is empty while validate.require_beat_base is true: name at least one metric (e.g. 'loss')")
        if not self.judge.configured:
            wanted = [name for name, uses in (
                ("validate.primary_metric", self.primary_metric == "judge_score"),
                ("validate.min_metrics", "judge_score" in self.min_metrics),
                ("validate.beat_base_metrics", self.require_beat_base and "judge_score" in self.beat_base_metrics),
            ) if uses]
            if wanted:
                raise ValueError(f"{' and '.join(wanted)} use judge_score but validate.judge.model is not set: name a judge model")
            if self.min_win_rate is not None:
                raise ValueError("validate.min_win_rate is set but validate.judge.model is not: the win rate needs a judge")
        return self

    @model_validator(mode="after")
    def _distinct_benchmarks(self) -> ValidateSettings:
        tasks = [spec.task for spec in self.benchmarks]
        repeated = sorted({task for task in tasks if tasks.count(task) > 1})
        if repeated:
            raise ValueError(f"validate.benchmarks names {', '.join(repeated)} more than once: give each task one entry")
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
