"""The expansion report of a dataset version as tables and markdown (Prefect artifacts, CLI)."""

from __future__ import annotations

from typing import Any

from fragua.reports.markdown import clip, counts_line, table, wrappable

EXAMPLE_CHARS = 240


def strategy_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per strategy: what it was asked for, added, and rejected (by reason)."""
    rows = []
    for name, tally in report["strategies"].items():
        rows.append({
            "strategy": name, "weight": tally["weight"], "eligible rows": tally["eligible"], "asked": tally["target"],
            "added": tally["added"], "factor": tally["factor"], "duplicates": tally["duplicates"],
            "rejected": ", ".join(f"{k}={v}" for k, v in tally["rejected"].items()) or "-",
            "generated": tally.get("generated", "-"),
        })
    return rows


def domain_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per domain: train rows before and after, the factor reached, rows added per strategy."""
    strategies = list(report["strategies"])
    rows = []
    for domain, counts in report["per_domain"].items():
        rows.append({"domain": domain, "before": counts["before"], "after": counts["after"], "factor": counts["factor"],
                     **{name: counts["added"].get(name, 0) for name in strategies}})
    rows.append({"domain": "all", "before": report["train_before"], "after": report["train_after"], "factor": report["achieved_factor"],
                 **{name: report["strategies"][name]["added"] for name in strategies}})
    return rows


def example_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"strategy": name, "parent question": clip(example["parent"], EXAMPLE_CHARS), "new prompt": clip(example["prompt"], EXAMPLE_CHARS),
         "answer": clip(example["answer"], EXAMPLE_CHARS)}
        for name, examples in report["examples"].items()
        for example in examples
    ]


def expansion_summary(manifest: Any) -> str:
    """Markdown: before/after counts per strategy and domain, leakage checks, examples, notes."""
    report = manifest.report.get("expansion")
    if not report:
        return f"# Dataset version `{manifest.id}`\n\nNot expanded (expand.expansion_factor is 1.0).\n"
    leakage = report["leakage"]
    domains = domain_rows(report)
    lines = [
        f"# Expanded dataset `{manifest.id}`",
        "",
        f"- parent version: `{manifest.parent}`",
        f"- train rows: {report['train_before']:,} -> {report['train_after']:,}: factor {report['achieved_factor']} of {report['target_factor']} wanted (seed {report['seed']})",
        f"- records per split: {counts_line(manifest.counts)} (validation and test unchanged)",
        (f"- held-out guard: {leakage['held_out_records']} validation/test records; {leakage['train_rows_not_expanded']} train rows resembling one were not expanded, "
        f"{leakage['rejected']} generated rows rejected as leaks (threshold {leakage['threshold']})"),
        f"- generator model: {report['generator'] or 'none (rule-based strategies only)'}",
        f"- rejected candidates: {manifest.quarantined}" + (f" (see `{manifest.quarantine_file}`)" if manifest.quarantine_file else ""),
        "",
        "## Per strategy",
        "",
        table(strategy_rows(report), ["strategy", "weight", "eligible rows", "asked", "added", "factor", "duplicates", "rejected", "generated"]),
        "## Per domain (train rows)",
        "",
        table(domains, list(domains[0])),
        "## Examples",
        "",
        table([{k: wrappable(v) for k, v in row.items()} for row in example_rows(report)], ["strategy", "parent question", "new prompt", "answer"]),
    ]
    if report["notes"]:
        lines += ["## Notes", "", *[f"- {note}" for note in report["notes"]], ""]
    return "\n".join(lines)
