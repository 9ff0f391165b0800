"""Sources -> canonical records -> quality checks -> dedupe -> domains -> split -> dataset version.

Ingest streams: each source is read in batches of ``data.batch_size`` rows, batches are
prepared on two threads (:mod:`fragua.data.prepare`: format adapter, length and quality checks, normalisation and
hashing, domain routing, split) and finished in order on the calling thread (exact and
near-duplicate removal, quarantine, Parquet). Memory is bounded by the batch size, plus
8 bytes per distinct row for the duplicate index (and the MinHash index when near-dedupe is
on). Every row of every source is accounted for:
``rows = kept + duplicates + quarantined`` per source, and every quarantined row is in
``quarantine.jsonl`` with its source, location (line or record path) and reason.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from fragua.data.formats import FORMAT_NAMES
from fragua.data.prepare import Prepared, choose_format, prepare
from fragua.data.quality import NearDuplicates
from fragua.data.readers import read_batches
from fragua.data.records import Record
from fragua.data.shards import ShardMapper, ShardWork, plan_shards
from fragua.data.sources import IngestError, RawBatch, Source, expand_sources, source_fingerprint
from fragua.data.splits import SPLITS
from fragua.data.stats import PLOT_FILE, STATS_FILE, StatsSampler, preload_plotting, summarise, write_stats
from fragua.data.store import MANIFEST, QUARANTINE, DatasetManifest, DatasetStore, LocalDatasetStore, SourceReport, build_manifest, load_manifest
from fragua.data.version_writer import VersionWriter
from fragua.settings import DataSettings

__all__ = ["IngestError", "IngestResult", "Quarantined", "collect", "ingest", "sources_fingerprint"]

IN_FLIGHT = 3  # prepared batches waiting to be finished: bounds memory, keeps both threads busy


@dataclass
class Quarantined:
    source: str
    location: str
    reason: str
    kind: str
    row: Any = None
    text: str | None = None  # the raw line, for rows that did not even parse

    def as_json(self) -> dict[str, Any]:
        entry = {"source": self.source, "location": self.location, "kind": self.kind, "reason": self.reason, "row": self.row}
        if self.text is not None:
            entry["text"] = self.text
        return entry


@dataclass
class _Tally:
    source: Source
    format: str = "?"
    rows: int = 0
    kept: int = 0
    duplicates: int = 0
    quarantined: int = 0
    unanswerable: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    first_rejection: Quarantined | None = None

    def report(self) -> SourceReport:
        return SourceReport(
            path=self.source.name, sha256=source_fingerprint(self.source), format=self.format, rows=self.rows,
            kept=self.kept, duplicates=self.duplicates, quarantined=self.quarantined,
            reasons=dict(sorted(self.reasons.items())), unanswerable=self.unanswerable,
        )


class SeenIds:
    """Ids of the rows kept so far, 8 bytes each: sorted runs merged size-tiered, so that
    membership is a vectorised binary search per run and there are O(log n) runs."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def first_sightings(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` (in order) were not seen before, nor earlier in ``ids``; they are now."""
        order = np.argsort(ids, kind="stable")
        ordered = ids[order]
        first = np.ones(len(ids), dtype=bool)  # first of its value within the batch
        first[1:] = ordered[1:] != ordered[:-1]
        unique, first_rows = ordered[first], order[first]
        known = np.zeros(len(unique), dtype=bool)
        for run in self.runs:
            position = np.minimum(np.searchsorted(run, unique), len(run) - 1)
            known |= run[position] == unique
        fresh = np.zeros(len(ids), dtype=bool)
        fresh[first_rows[~known]] = True
        if (~known).any():
            self.runs.append(unique[~known])
            while len(self.runs) > 1 and len(self.runs[-1]) * 2 >= len(self.runs[-2]):
                newest = self.runs.pop()
                # Disjoint sorted runs: their concatenation sorts in linear time.
                self.runs[-1] = np.sort(np.concatenate([self.runs[-1], newest]), kind="stable")
        return fresh


class _Build:
    """The order-dependent half of ingest: one instance per dataset version being built."""

    def __init__(self, settings: DataSettings, folder: Path, *, sample: bool) -> None:
        self.settings = settings
        self.writer = VersionWriter(folder, settings.parquet_compression)
        self.quarantine_path = folder / QUARANTINE
        self._quarantine = self.quarantine_path.open("wb")
        self._rejected_lines: list[bytes] = []
        self.quarantined = 0
        self.rejected: Counter[str] = Counter()
        self.seen = SeenIds()
        self.near = NearDuplicates(settings.near_dedupe_threshold, settings.near_dedupe_num_perm, settings.near_dedupe_ngram) if settings.near_dedupe else None
        self.sampler = StatsSampler(settings.stats_sample_size) if sample else None
        self.tallies: list[_Tally] = []
        # Parquet encoding and digests run on their own thread, in order, off the critical path.
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fragua-write")
        self._writes: deque[Future[None]] = deque()

    def _write(self, split: str, table: pa.Table) -> None:
        self._writes.append(self._writer_thread.submit(self.writer.write, split, table))
        while len(self._writes) > IN_FLIGHT * len(SPLITS):
            self._writes.popleft().result()

    def reject(self, tally: _Tally, entry: Quarantined) -> None:
        self._rejected_lines.append(orjson.dumps(entry.as_json(), default=str))
        tally.quarantined += 1
        tally.reasons[entry.kind] += 1
        self.rejected[entry.kind] += 1
        self.quarantined += 1
        if tally.first_rejection is None:
            tally.first_rejection = entry

    def failures(self, tally: _Tally, raw: RawBatch) -> None:
        tally.rows += raw.rows
        for location, error, text in raw.failures:
            self.reject(tally, Quarantined(tally.source.name, location, str(error), error.kind, None, text))
        self._flush_quarantine()

    def finish(self, tally: _Tally, prepared: Prepared) -> None:
        self.failures(tally, prepared.raw)
        errors = prepared.errors
        locations = prepared.raw.locations
        for row in np.flatnonzero(~errors.ok).tolist():
            self.reject(tally, Quarantined(tally.source.name, locations[row].as_py(), errors.reasons[row], errors.kind(row), prepared.raw.original(row)))
        tally.unanswerable += int(prepared.unanswerable.sum())
        keep = errors.ok.copy()
        if self.settings.dedupe:
            candidates = np.flatnonzero(keep)
            repeated = candidates[~self.seen.first_sightings(prepared.ids[candidates])]
            keep[repeated] = False
            tally.duplicates += len(repeated)
        if self.near is not None and prepared.near_texts is not None:
            hexed = prepared.output.column("id")
            for row in np.flatnonzero(keep).tolist():
                if match := self.near.check(prepared.near_texts[row], hexed[row].as_py()):
                    keep[row] = False
                    reason = f"near-duplicate of record {match[0]} (estimated similarity {match[1]:.2f} >= data.near_dedupe_threshold={self.near.threshold})"
                    self.reject(tally, Quarantined(tally.source.name, locations[row].as_py(), reason, "near_duplicate", prepared.raw.original(row)))
        tally.kept += int(keep.sum())
        for code, split in enumerate(SPLITS):
            chosen = keep & (prepared.split_codes == code)
            if chosen.any():
                self._write(split, prepared.output.filter(pa.array(chosen)))
        if self.sampler is not None:
            self.sampler.add(prepared.ids, prepared.output.column("domain").combine_chunks(), prepared.conversations, keep)
        self._flush_quarantine()

    def _flush_quarantine(self) -> None:
        if self._rejected_lines:
            self._quarantine.write(b"\n".join(self._rejected_lines) + b"\n")
            self._rejected_lines.clear()

    def close(self) -> None:
        try:
            while self._writes:
                self._writes.popleft().result()
        finally:
            self._writer_thread.shutdown(wait=True, cancel_futures=True)
            self._quarantine.close()
            self.writer.close()
        if not self.quarantined:
            self.quarantine_path.unlink()


def _check_source(tally: _Tally, settings: DataSettings, *, detected: bool) -> None:
    if not detected and tally.rows and set(tally.reasons) == {"line_too_long"}:
        first = tally.first_rejection
        assert first is not None
        raise IngestError(f"{tally.source.name}: no row could be read: {first.location}: {first.reason}")
    if not detected and tally.rows:
        raise IngestError(
            f"{tally.source.name}: unknown format (no row is a JSON object; first: {tally.first_rejection.location}: "
            f"{tally.first_rejection.reason}); tried {', '.join(FORMAT_NAMES)}"
        )
    if not tally.rows:
        raise IngestError(f"{tally.source.name}: the file has no rows")
    if tally.quarantined / tally.rows > settings.max_rejected_fraction:
        first = tally.first_rejection
        assert first is not None
        raise IngestError(
            f"{tally.source.name}: {tally.quarantined} of {tally.rows} rows are unusable as {tally.format} "
            f"(first: {first.location}: {first.reason}); above data.max_rejected_fraction="
            f"{settings.max_rejected_fraction}. Fix the file or set the source's format."
        )


def _prefetched(reader: ThreadPoolExecutor, batches: Iterator[RawBatch]) -> Iterator[RawBatch]:
    """The batches, each read (and parsed) on ``reader`` while the previous one is worked on."""
    upcoming = reader.submit(next, batches, None)
    while (batch := upcoming.result()) is not None:
        upcoming = reader.submit(next, batches, None)
        yield batch


def _run(settings: DataSettings, folder: Path, *, sample: bool) -> _Build:
    build = _Build(settings, folder, sample=sample)
    try:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="fragua-ingest") as pool, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="fragua-read") as reader:
            for source in expand_sources(settings.sources):
                tally = _Tally(source)
                build.tallies.append(tally)
                pending: deque[Future[Prepared]] = deque()
                fmt: str | None = None
                for raw in _prefetched(reader, read_batches(source, settings.batch_size, settings.max_line_bytes)):
                    if not raw.tables:
                        build.failures(tally, raw)
                        continue
                    if fmt is None:
                        fmt = tally.format = choose_format(source, raw.tables[0])
                    pending.append(pool.submit(prepare, raw, fmt, source, settings))
                    while len(pending) >= IN_FLIGHT:
                        build.finish(tally, pending.popleft().result())
                while pending:
                    build.finish(tally, pending.popleft().result())
                _check_source(tally, settings, detected=fmt is not None)
    finally:
        build.close()
    return build


def _source_format(source: Source, settings: DataSettings) -> str | None:
    """The format of a source, from its first batch of parsed rows (None: no row parsed)."""
    if source.spec.format != "auto":
        return source.spec.format
    batches = read_batches(source, settings.batch_size, settings.max_line_bytes)
    try:
        for raw in batches:
            if raw.tables:
                return choose_format(source, raw.tables[0])
    finally:
        batches.close()
    return None


def _run_sharded(settings: DataSettings, folder: Path, *, sample: bool, map_shards: ShardMapper, shard_bytes: int) -> _Build:
    """As :func:`_run`, with the row-local work of every shard done by ``map_shards``
    (threads, or tasks on a cluster) and the results merged here in shard order."""
    build = _Build(settings, folder, sample=sample)
    results: Iterator[list[Any]] | None = None
    try:
        plan = [(source, _source_format(source, settings), plan_shards(source, shard_bytes)) for source in expand_sources(settings.sources)]
        results = map_shards(ShardWork(shard, fmt, settings) for _, fmt, shards in plan for shard in shards)
        for source, fmt, shards in plan:
            tally = _Tally(source)
            build.tallies.append(tally)
            for _ in shards:
                for item in next(results):
                    if isinstance(item, Prepared):
                        tally.format = fmt or "?"
                        build.finish(tally, item)
                    else:
                        build.failures(tally, item)
            _check_source(tally, settings, detected=fmt is not None)
    finally:
        if results is not None and hasattr(results, "close"):
            results.close()
        build.close()
    return build


# Public entry points ----------------------------------------------------------------------


@dataclass
class IngestResult:
    records: list[Record]
    quarantined: list[Quarantined]
    sources: list[SourceReport]


def collect(settings: DataSettings) -> IngestResult:
    """Ingest into memory (for small data and tests): the records, quarantine and per-source counts."""
    folder = Path(tempfile.mkdtemp(prefix="fragua-collect-"))
    try:
        build = _run(settings, folder, sample=False)
        records = []
        for split in SPLITS:
            path = folder / f"{split}.parquet"
            if path.is_file():
                for row in pq.read_table(path).to_pylist():
                    row["meta"] = orjson.loads(row["meta"])
                    records.append(Record.model_validate(row))
        quarantined = []
        if build.quarantine_path.is_file():
            for line in build.quarantine_path.read_bytes().splitlines():
                entry = orjson.loads(line)
                quarantined.append(Quarantined(entry["source"], entry["location"], entry["reason"], entry["kind"], entry["row"], entry.get("text")))
        return IngestResult(records, quarantined, [t.report() for t in build.tallies])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _warnings(counts: dict[str, dict[str, int]], settings: DataSettings) -> list[str]:
    wanted = ["validation"] + (["test"] if settings.test_fraction > 0 else [])
    notes = []
    for domain, per_split in counts.items():
        missing = [s for s in ["train", *wanted] if not per_split.get(s)]
        if missing:
            notes.append(f"domain {domain!r} has no {' or '.join(missing)} rows ({sum(per_split.values())} rows in all): per-domain metrics will not cover it")
    return notes


def ingest(
    settings: DataSettings,
    datasets_root: Path | None = None,
    *,
    store: DatasetStore | None = None,
    tokenizer_file: Path | None = None,
    ingest_key: str | None = None,
    map_shards: ShardMapper | None = None,
    shard_bytes: int = 16 << 20,
) -> DatasetManifest:
    """Read, clean, route and split every source into a dataset version (idempotent).

    ``tokenizer_file``: a ``tokenizer.json`` to count token lengths for the statistics.
    ``ingest_key``: the cache key of these inputs, remembered next to the version.
    ``map_shards``: prepare shards of about ``shard_bytes`` with it (e.g. as tasks on a
    cluster) instead of on this process's threads; the version is the same either way.
    """
    if store is None:
        if datasets_root is None:
            raise ValueError("ingest needs datasets_root or store")
        store = LocalDatasetStore(datasets_root)
    staging = store.staging()
    plotting = preload_plotting()
    try:
        if map_shards is None:
            build = _run(settings, staging, sample=True)
        else:
            build = _run_sharded(settings, staging, sample=True, map_shards=map_shards, shard_bytes=shard_bytes)
        counts = dict(build.writer.counts)
        required = ["train", "validation"] + (["test"] if settings.test_fraction > 0 else [])
        for split in required:
            if not counts.get(split):
                raise IngestError(
                    f"the {split} split is empty ({sum(counts.values())} usable rows in "
                    f"{', '.join(t.source.name for t in build.tallies)}); add data or change data.validation_fraction / data.test_fraction"
                )
        domains = {d: dict(c) for d, c in sorted(build.writer.domains.items())}
        assert build.sampler is not None
        plotting.join()
        write_stats(staging, summarise(build.sampler, domains, tokenizer_file))
        split_settings = {k: getattr(settings, k) for k in ("validation_fraction", "test_fraction", "split_seed")}
        ident = build.writer.dataset_id({"parent": None, "split": split_settings})
        location = store.location(ident)
        manifest = build_manifest(
            ident, location, build.writer,
            sources=[t.report() for t in build.tallies],
            quarantined=build.quarantined,
            rejected=dict(sorted(build.rejected.items())),
            duplicates=sum(t.duplicates for t in build.tallies),
            settings={"data": settings.ingest_fingerprint()},
            stats_file=f"{location}/{STATS_FILE}",
            plot_file=f"{location}/{PLOT_FILE}",
            warnings=_warnings(domains, settings),
        )
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    stored = load_manifest(store.commit(staging, ident))
    if ingest_key:
        store.remember(ingest_key, stored.id)
    return stored


def sources_fingerprint(settings: DataSettings) -> Iterator[tuple[str, str | None]]:
    """(source, content fingerprint) for the cache key; a None fingerprint means uncacheable."""
    for source in expand_sources(settings.sources):
        yield source.name, source_fingerprint(source)
