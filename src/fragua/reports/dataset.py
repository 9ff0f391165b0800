"""A dataset version as tables and markdown: records per domain and split, sources, quarantine."""

from __future__ import annotations

import json
from typing import Any

from fragua.reports.markdown import counts_line, plot, table


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
    """Markdown for a dataset version (the Prefect artifact): counts per split, domain and source,
    quarantine by reason, the statistics plot inlined."""
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
        f"- records per split: {counts_line(manifest.counts)}",
        f"- records per origin: {counts_line(manifest.origins)}",
        f"- parent version: `{manifest.parent}`" if manifest.parent else "- parent version: none (ingested)",
        f"- exact duplicates dropped: {manifest.duplicates:,}",
        f"- quarantined rows: {manifest.quarantined:,}" + (f" (see `{manifest.quarantine_file}`)" if manifest.quarantine_file else ""),
        f"- stored at `{manifest.path}`",
    ]
    if manifest.plot_file:
        lines.append(f"- statistics: `{manifest.stats_file}`, plot: `{manifest.plot_file}`")
    if stats:
        lines.append(f"- lengths in {stats['length_unit']}, from up to {stats['sample_per_domain']:,} sampled rows per domain")
    if manifest.plot_file:
        lines += ["", plot("Lengths per domain and rows per split", manifest.plot_file, inline=True)]
    lines += ["", "## Domains", "", table(domain_rows, domain_columns), "## Sources", "",
              table(sources, ["file", "format", "rows", "kept", "duplicates", "quarantined", "reasons", "sha256"])]
    if manifest.rejected:
        lines += ["## Quarantined by reason", "", table([{"reason": k, "rows": v} for k, v in manifest.rejected.items()], ["reason", "rows"])]
    if manifest.warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in manifest.warnings], ""]
    if expansion := manifest.report.get("expansion"):
        lines += ["## Expansion", "", "```json", json.dumps(expansion, indent=2, ensure_ascii=False), "```", ""]
    return "\n".join(lines)
