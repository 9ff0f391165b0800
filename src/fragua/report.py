"""Human-readable reports: the validation report and each version's model card."""

from __future__ import annotations

import json
import math
from typing import Any

from .evaluation import SCORE_METRICS, Evaluation, ItemResult, MetricSet
from .gates import Decision

ALL_COLUMNS = ("n", "loss", "perplexity", *SCORE_METRICS)
PLOT_TITLES = {"loss_curve": "Training and validation loss", "metrics_by_domain": "Metrics per domain"}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: the table artifact shows them as empty cells."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def measured_columns(evaluations: list[Evaluation | None]) -> list[str]:
    """n, loss, perplexity and every score any of the evaluations has."""
    present = {m for e in evaluations if e for m in e.overall.measured()}
    return ["n", "loss", "perplexity", *[m for m in SCORE_METRICS if m in present]]


def comparison_rows(evaluations: dict[str, Evaluation | None]) -> list[dict[str, Any]]:
    """One row per model and domain (overall first), every metric: the table artifact's rows."""
    rows = []
    for label, evaluation in evaluations.items():
        if evaluation is None:
            continue
        for domain, metrics in [("overall", evaluation.overall), *evaluation.per_domain.items()]:
            rows.append({"model": label, "domain": domain, **{c: _finite(getattr(metrics, c)) for c in ALL_COLUMNS}})
    return rows


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_escape(_cell(row.get(c))) for c in columns) + " |\n" for row in rows)


def _delta(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or not (math.isfinite(ours) and math.isfinite(theirs)):
        return "-"
    return f"{ours - theirs:+.4f}"


def overall_comparison(candidate: Evaluation, production: Evaluation | None, production_label: str, base: Evaluation | None) -> str:
    """Candidate vs production vs base, one row per metric, with differences."""
    columns = ["metric", "better", "candidate"]
    if production:
        columns += [production_label, "Δ vs production"]
    if base:
        columns += ["base", "Δ vs base"]
    rows = []
    for metric in measured_columns([candidate, production, base])[1:]:
        ours = candidate.overall.value(metric)
        row = {"metric": metric, "better": "lower" if metric in ("loss", "perplexity") else "higher", "candidate": ours}
        if production:
            row[production_label] = production.overall.value(metric)
            row["Δ vs production"] = _delta(ours, row[production_label])
        if base:
            row["base"] = base.overall.value(metric)
            row["Δ vs base"] = _delta(ours, row["base"])
        rows.append(row)
    return _table(rows, columns)


def _sample_scores(sample: ItemResult) -> str:
    if sample.chosen is not None:
        verdict = "" if sample.mc_correct is None else (" (right)" if sample.mc_correct else " (wrong)")
        return f"chose {sample.chosen}{verdict}, per char {sample.chosen_norm}"
    parts = [f"{label} {value:.2f}" for label, value in (("F1", sample.token_f1), ("ROUGE-L", sample.rouge_l), ("EM", sample.exact_match), ("num", sample.numeric_match)) if value is not None]
    return ", ".join(parts) or "-"


def validation_report(
    *,
    run_id: str,
    dataset_id: str,
    candidate: Evaluation,
    base: Evaluation | None,
    production: Evaluation | None,
    production_version: str | None,
    decision: Decision,
    plots: dict[str, str] | None = None,
    embed_plots: bool = True,
) -> str:
    """The validation report. ``plots`` maps a plot name to its file: embedded as images (a
    path relative to the report) or, for viewers that cannot reach the file, listed by path."""
    verdict = "PASSED" if decision.passed else "FAILED"
    overall = candidate.overall
    production_label = f"production {production_version}" if production_version else "production"
    primary = "not measured" if decision.candidate is None else f"**{decision.candidate:.4f}**"
    lines = [
        f"# Validation of run `{run_id}`: {verdict}",
        "",
        "## Summary",
        "",
        f"- dataset version: `{dataset_id}`, {overall.n} validation examples "
        f"({overall.n_generated} free-form, {overall.n_choice} multiple-choice, {overall.n_numeric} with a numeric answer)",
        f"- primary metric: `{decision.primary_metric}` = {primary}",
        f"- compared with `{production_version}` (production) and the base model on the same examples"
        if production_version else "- no production version yet: compared with the base model only",
        f"- verdict: {'promotable' if decision.passed else 'not promotable: ' + ', '.join(decision.failed_metrics)}",
        "",
        "## Decision",
        "",
        *[f"- {reason}" for reason in decision.reasons],
        "",
        "## Candidate vs production vs base",
        "",
        overall_comparison(candidate, production, production_label, base),
        "## Per domain",
        "",
        _table(
            comparison_rows({"candidate": candidate, production_label: production, "base": base}),
            ["model", "domain", *measured_columns([candidate, production, base])],
        ),
    ]
    if plots:
        lines += ["## Plots", ""]
        for name, location in plots.items():
            title = PLOT_TITLES.get(name, name)
            lines.append(f"![{title}]({location})" if embed_plots else f"- {title}: `{location}`")
        lines.append("")
    lines += [
        "## Sample answers",
        "",
        _table(
            [{**s.model_dump(), "scores": _sample_scores(s)} for s in candidate.samples],
            ["domain", "question", "reference", "prediction", "scores"],
        ),
    ]
    return "\n".join(lines)


def model_card(*, version: str, manifest_fields: dict[str, Any], metrics: MetricSet, report: str) -> str:
    lineage = manifest_fields["lineage"]
    adapter = lineage["method"] != "full"
    loader_module, loader = ("peft", "AutoPeftModelForCausalLM") if adapter else ("transformers", "AutoModelForCausalLM")
    return "\n".join(
        [
            f"# {version}",
            "",
            f"A {lineage['method']} fine-tune of `{lineage['base_model']}` made by Fragua.",
            "",
            "## Data",
            "",
            f"- dataset version `{lineage['dataset_id']}`: {lineage['dataset_counts']}",
            f"- parent version: {lineage.get('parent_version') or 'none'}",
            "",
            "## Metrics on the validation split",
            "",
            _table([metrics.model_dump()], ["n", "loss", "perplexity", *metrics.measured()]),
            "## Intended use",
            "",
            "Answering questions in the domains of its training data, in the style of those answers. "
            "It inherits the limitations of its base model; check the validation report before relying on it.",
            "",
            "## How to load",
            "",
            "```python",
            f"from {loader_module} import {loader}",
            "from transformers import AutoTokenizer",
            "",
            f"model = {loader}.from_pretrained(\"PATH/TO/{version}\")",
            "tokenizer = AutoTokenizer.from_pretrained(\"PATH/TO/" + version + "\")  # carries the chat template",
            "```",
            "",
            "or `fragua versions` / `fragua rollback` to manage it in the registry. Weights are safetensors only; "
            "nothing here needs `trust_remote_code`.",
            "",
            f"`fragua export {version} --merged` writes the adapter merged into its base as a standalone safetensors model; "
            f"`fragua export {version} --gguf` also writes a GGUF file for Ollama/llama.cpp (needs llama.cpp's converter).",
            "",
            "## Validation report",
            "",
            report,
        ]
    )


def _splits(manifest: Any) -> list[str]:
    present = {split for counts in manifest.domains.values() for split in counts}
    return [s for s in ("train", "validation", "test") if s in present or s != "test"]


def dataset_rows(manifest: Any, stats: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per domain: records per split and, with stats, sampled length percentiles."""
    lengths = (stats or {}).get("lengths", {})
    rows = []
    for domain, counts in manifest.domains.items():
        row: dict[str, Any] = {"domain": domain, **{split: counts.get(split, 0) for split in _splits(manifest)}, "total": sum(counts.values())}
        if domain in lengths:
            row.update({"length p50": lengths[domain]["p50"], "length p90": lengths[domain]["p90"], "length max": lengths[domain]["max"]})
        rows.append(row)
    return rows


def dataset_summary(manifest: Any, stats: dict[str, Any] | None = None) -> str:
    """Markdown for a dataset version: counts per split, domain and source, quarantine by reason."""
    sources = [
        {"file": s.path, "format": s.format, "rows": s.rows, "kept": s.kept, "duplicates": s.duplicates, "quarantined": s.quarantined,
         "reasons": ", ".join(f"{k}={v}" for k, v in s.reasons.items()) or "-", "sha256": (s.sha256 or "-")[:12]}
        for s in manifest.sources
    ]
    domain_rows = dataset_rows(manifest, stats)
    domain_columns = list(domain_rows[0]) if domain_rows else ["domain", *_splits(manifest), "total"]
    lines = [
        f"# Dataset version `{manifest.id}`",
        "",
        f"- records per split: {manifest.counts}",
        f"- records per origin: {manifest.origins}",
        f"- parent version: `{manifest.parent}`" if manifest.parent else "- parent version: none (ingested)",
        f"- exact duplicates dropped: {manifest.duplicates}",
        f"- quarantined rows: {manifest.quarantined}" + (f" (see `{manifest.quarantine_file}`)" if manifest.quarantine_file else ""),
        f"- stored at `{manifest.path}`",
    ]
    if manifest.plot_file:
        lines.append(f"- statistics: `{manifest.stats_file}`, plot: `{manifest.plot_file}`")
    if stats:
        lines.append(f"- lengths in {stats['length_unit']}, from up to {stats['sample_per_domain']} sampled rows per domain")
    lines += ["", "## Domains", "", _table(domain_rows, domain_columns), "## Sources", "",
              _table(sources, ["file", "format", "rows", "kept", "duplicates", "quarantined", "reasons", "sha256"])]
    if manifest.rejected:
        lines += ["## Quarantined by reason", "", _table([{"reason": k, "rows": v} for k, v in manifest.rejected.items()], ["reason", "rows"])]
    if manifest.warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in manifest.warnings], ""]
    if expansion := manifest.report.get("expansion"):
        lines += ["## Expansion", "", "```json", json.dumps(expansion, indent=2, ensure_ascii=False), "```", ""]
    return "\n".join(lines)


def training_summary(report: Any) -> str:
    evals = [
        {"epoch": entry.get("epoch"), "step": entry.get("step"), "eval_loss": entry["eval_loss"]}
        for entry in report.log_history
        if "eval_loss" in entry
    ]
    lines = [
        f"# Training run `{report.run_id}`",
        "",
        f"- base model: `{report.base_model}` ({report.base_parameters:,} parameters), method `{report.method}`",
        f"- {report.global_step} optimiser steps, {report.epochs:g} epochs, {report.seconds:.1f} s",
        f"- train loss {report.train_loss}, validation loss {report.eval_loss}",
        f"- {report.examples} examples, {report.trained_tokens} answer tokens; {report.truncated} truncated, {report.dropped} dropped (no answer left after truncation)",
        f"- resumed from `{report.resumed_from}`" if report.resumed_from else "- started from scratch",
        f"- {report.batching}; {report.tokens_per_second or '-'} tokens/s (non-padding) over {report.num_processes} process(es)",
        f"- continued production version `{report.parent_version}`: {report.incremental}" if report.parent_version else "- trained from the base model",
        f"- added and trained tokens: {', '.join(report.added_tokens)}" if report.added_tokens else "",
        f"- stopped early at step {report.global_step} of {report.max_steps}; best checkpoint `{report.best_checkpoint}`" if report.stopped_early else "",
        f"- tracking run: {report.tracking_run or 'disabled'}",
        "",
        _table(evals, ["epoch", "step", "eval_loss"]) if evals else "",
    ]
    return "\n".join(lines)


def hpo_summary(result: Any) -> str:
    """Markdown for a hyperparameter search: the winner and every trial."""
    from .hpo import trial_rows

    best = result.best
    lines = [
        f"# Hyperparameter search on dataset `{result.dataset_id}`",
        "",
        (
            f"- best: trial {best.trial.number} (learning rate {best.trial.learning_rate:g}, r {best.trial.r}, alpha {best.trial.alpha}, "
            f"epochs {best.trial.epochs:g}) with validation loss **{best.eval_loss:.4f}**, run `{best.run_id}`"
            if best else "- no trial produced a validation loss"
        ),
        f"- validate and deploy it with `fragua validate --run {best.run_id}` and `fragua deploy --run {best.run_id}`" if best else "",
        f"- tracking run: {result.tracking_run or 'disabled'}",
        "",
        _table(trial_rows(result.trials), ["trial", "learning_rate", "r", "alpha", "epochs", "status", "eval_loss", "steps", "seconds", "run_id"]),
    ]
    return "\n".join(lines)
