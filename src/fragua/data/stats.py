"""Dataset statistics: token lengths per domain (from a deterministic sample) and a plot.

The sample is, per domain, the rows with the smallest record ids (ids are content hashes,
so this is a uniform sample that does not depend on row order). Lengths are counted with
the base model's tokenizer when one is available locally, else as whitespace-separated
words; ``stats.json`` says which.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fragua.data.splits import SPLITS

STATS_FILE = "stats.json"
PLOT_FILE = "stats.png"
HISTOGRAM_BINS = 30


@dataclass
class _Sample:
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    texts: list[str] = field(default_factory=list)


class StatsSampler:
    """Keeps, per domain, the ``size`` rows with the smallest ids seen so far."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.samples: dict[str, _Sample] = {}

    def add(self, ids: np.ndarray, domains: pa.Array, conversations: pa.ListArray, kept: np.ndarray) -> None:
        """Rows of a batch (the ``kept`` ones count); ``conversations``: each row's message
        texts, joined only for rows that make the cut."""
        encoded = pc.dictionary_encode(domains)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        for code, domain in enumerate(encoded.dictionary.to_pylist()):
            sample = self.samples.setdefault(domain, _Sample())
            rows = np.flatnonzero((codes == code) & kept)
            if len(sample.ids) >= self.size:
                rows = rows[ids[rows] < sample.ids.max()]
            if not len(rows):
                continue
            texts = pc.binary_join(conversations.take(pa.array(rows)), "\n").to_pylist()
            merged_ids = np.concatenate([sample.ids, ids[rows]])
            merged_texts = sample.texts + texts
            if len(merged_ids) > self.size:
                keep = np.argpartition(merged_ids, self.size - 1)[: self.size]
                keep.sort()
                merged_ids = merged_ids[keep]
                merged_texts = [merged_texts[i] for i in keep.tolist()]
            sample.ids, sample.texts = merged_ids, merged_texts


def load_counter(tokenizer_file: Path | None) -> tuple[str, Any]:
    """(unit, function texts -> lengths): the tokenizer's tokens, or words without one."""
    if tokenizer_file is not None and tokenizer_file.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        return f"tokens ({tokenizer_file.parent.name} tokenizer)", lambda texts: [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    return "words (no tokenizer available at ingest)", lambda texts: [len(t.split()) for t in texts]


def summarise(sampler: StatsSampler, domains: dict[str, dict[str, int]], tokenizer_file: Path | None) -> dict[str, Any]:
    unit, count = load_counter(tokenizer_file)
    lengths = {d: np.asarray(count(s.texts), dtype=np.int64) for d, s in sorted(sampler.samples.items()) if s.texts}
    top = max((int(np.percentile(v, 99)) for v in lengths.values()), default=1)
    edges = np.linspace(0, max(top, 1), HISTOGRAM_BINS + 1)
    per_domain = {}
    for domain, values in lengths.items():
        histogram, _ = np.histogram(np.minimum(values, edges[-1]), bins=edges)
        per_domain[domain] = {
            "sampled": int(len(values)),
            "mean": round(float(values.mean()), 2),
            "p50": int(np.percentile(values, 50)),
            "p90": int(np.percentile(values, 90)),
            "max": int(values.max()),
            "histogram": histogram.tolist(),
        }
    return {
        "length_unit": unit,
        "sample_per_domain": sampler.size,
        "histogram_edges": [round(float(e), 2) for e in edges],
        "counts": domains,
        "lengths": per_domain,
    }


def preload_plotting() -> threading.Thread:
    """Import matplotlib on a background thread (it takes most of a second) while ingest works."""
    thread = threading.Thread(target=lambda: (import_module("matplotlib.figure"), import_module("matplotlib.backends.backend_agg")), daemon=True)
    thread.start()
    return thread


def write_stats(folder: Path, stats: dict[str, Any]) -> None:
    (folder / STATS_FILE).write_text(json.dumps(stats, indent=2, ensure_ascii=False), encoding="utf-8")
    plot(stats, folder / PLOT_FILE)


def plot(stats: dict[str, Any], path: Path) -> None:
    """Length histogram per domain (left) and rows per split and domain (right)."""
    # The object-oriented API without pyplot: no GUI backend, a fraction of the import time.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    domains = sorted(stats["counts"])
    edges = np.asarray(stats["histogram_edges"])
    figure = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(figure)
    lengths, splits = figure.subplots(1, 2)
    for domain in domains:
        entry = stats["lengths"].get(domain)
        if entry:
            lengths.stairs(np.asarray(entry["histogram"]) / max(entry["sampled"], 1), edges, label=f"{domain} (n={entry['sampled']})")
    lengths.set_xlabel(f"length in {stats['length_unit']} (last bin: p99 and longer)")
    lengths.set_ylabel("share of sampled rows")
    lengths.set_title("Length per domain")
    if domains:
        lengths.legend(fontsize="small")
    positions = np.arange(len(domains))
    shown = [s for s in SPLITS if s != "test" or any(stats["counts"][d].get(s) for d in domains)]
    width = 0.8 / len(shown)
    for number, split in enumerate(shown):
        values = [stats["counts"][d].get(split, 0) for d in domains]
        bars = splits.bar(positions + (number - (len(shown) - 1) / 2) * width, values, width, label=split)
        splits.bar_label(bars, fontsize="x-small")
    splits.set_xticks(positions, domains, rotation=30, ha="right")
    splits.set_ylabel("rows")
    splits.set_title("Rows per split and domain")
    splits.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
