"""Dataset versions: content-addressed ids, Parquet + manifest, stores, statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fragua.data.ingest import IngestError, ingest
from fragua.data.store import LocalDatasetStore, ObjectDatasetStore, find_dataset, load_records, load_stats
from fragua.data.version_writer import SCHEMA
from fragua.settings import DataSettings

from .conftest import EXAMPLES


def settings(*paths: Path, **extra) -> DataSettings:
    return DataSettings(sources=[{"path": str(p)} for p in paths], **extra)


def test_same_data_same_id_and_the_existing_version_is_kept(tmp_path):
    first = ingest(settings(EXAMPLES), tmp_path)
    again = ingest(settings(EXAMPLES), tmp_path)
    assert again.id == first.id and again.created_at == first.created_at
    assert LocalDatasetStore(tmp_path).ids() == [first.id]
    elsewhere = ingest(settings(EXAMPLES), tmp_path / "other")
    assert elsewhere.id == first.id


def test_id_changes_with_content_and_split_settings_but_not_batch_size(tmp_path):
    base = ingest(settings(EXAMPLES), tmp_path).id
    assert ingest(settings(EXAMPLES, batch_size=64), tmp_path).id == base
    assert ingest(settings(EXAMPLES, split_seed=5), tmp_path).id != base
    assert ingest(settings(EXAMPLES, test_fraction=0.1), tmp_path).id != base
    assert ingest(settings(EXAMPLES / "batch1"), tmp_path).id != base


def test_manifest_lists_sources_with_hashes_and_counts_per_split_domain_reason(tmp_path):
    bad = tmp_path / "in" / "bad.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"instruction": "Where is the gym?", "output": "Basement."}\n{"instruction": "", "output": "x"}\n{oops\n' * 1 +
                   "".join(json.dumps({"instruction": f"Question {i}?", "output": f"Answer {i}."}) + "\n" for i in range(30)))
    manifest = ingest(settings(EXAMPLES, bad, validation_fraction=0.3), tmp_path / "store")
    stored = json.loads((Path(manifest.path) / "manifest.json").read_text())
    import hashlib

    source = next(s for s in stored["sources"] if s["path"] == str(bad))
    assert source["sha256"] == hashlib.sha256(bad.read_bytes()).hexdigest()
    assert (source["rows"], source["kept"], source["quarantined"], source["reasons"]) == (33, 31, 2, {"empty": 1, "invalid_json": 1})
    assert stored["rejected"] == {"empty": 1, "invalid_json": 1} and stored["quarantined"] == 2
    assert sum(stored["counts"].values()) == sum(sum(c.values()) for c in stored["domains"].values())
    assert stored["settings"]["data"]["validation_fraction"] == 0.3
    assert {"train.parquet", "validation.parquet", "manifest.json", "quarantine.jsonl", "stats.json", "stats.png"} <= {p.name for p in Path(manifest.path).iterdir()}


def test_parquet_splits_have_the_canonical_schema_and_round_trip(tmp_path):
    manifest = ingest(settings(EXAMPLES), tmp_path)
    table = pq.read_table(manifest.split_path("train"))
    assert table.schema.equals(SCHEMA)
    records = load_records(manifest, "train")
    assert len(records) == manifest.counts["train"] and all(r.split == "train" and r.origin == "original" for r in records)
    assert all(r.meta["location"].startswith("line ") for r in records)
    assert len({r.id for r in records}) == len(records)


def test_statistics_file_and_plot_next_to_the_version(tmp_path, tiny_base):
    words = ingest(settings(EXAMPLES), tmp_path / "a")
    stats = load_stats(words)
    assert stats["length_unit"].startswith("words")
    assert set(stats["lengths"]) == {"hotel", "ml"} and stats["counts"] == words.domains
    hotel = stats["lengths"]["hotel"]
    assert hotel["sampled"] == sum(words.domains["hotel"].values()) and sum(hotel["histogram"]) == hotel["sampled"]
    assert len(stats["histogram_edges"]) == len(hotel["histogram"]) + 1
    assert Path(words.plot_file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tokens = ingest(settings(EXAMPLES, stats_sample_size=50), tmp_path / "b", tokenizer_file=tiny_base / "tokenizer.json")
    token_stats = load_stats(tokens)
    assert token_stats["length_unit"].startswith("tokens") and token_stats["lengths"]["hotel"]["sampled"] == 50
    assert token_stats["lengths"]["hotel"]["p50"] > stats["lengths"]["hotel"]["p50"]  # BPE pieces outnumber words
    assert tokens.id == words.id  # statistics are about the data, not part of it


def test_versions_in_an_object_store_local_or_s3(store, tmp_path):
    # `store` (conftest): a local-directory ObjectStore and an S3 bucket on a real S3-protocol server.
    versions = ObjectDatasetStore(store, tmp_path / "cache")
    manifest = ingest(settings(EXAMPLES), store=versions)
    assert manifest.id == ingest(settings(EXAMPLES), tmp_path / "local").id
    assert store.exists(f"datasets/{manifest.id}/manifest.json") and store.exists(f"datasets/{manifest.id}/train.parquet")
    assert versions.ids() == [manifest.id] and versions.find(manifest.id[:6]).id == manifest.id
    elsewhere = ObjectDatasetStore(store, tmp_path / "other-cache")
    opened = elsewhere.manifest(manifest.id)
    assert Path(opened.path).parent == tmp_path / "other-cache"
    assert len(load_records(opened, "validation")) == manifest.counts["validation"]
    assert ingest(settings(EXAMPLES), store=versions).created_at == manifest.created_at
    assert versions.instance() == elsewhere.instance()
    versions.remember("k", manifest.id)
    assert elsewhere.recall("k") == manifest.id and elsewhere.recall("other") is None


def test_local_store_lookup_by_prefix_and_newest(tmp_path):
    older = ingest(settings(EXAMPLES / "batch1"), tmp_path)
    newer = ingest(settings(EXAMPLES), tmp_path)
    assert find_dataset(tmp_path, None).id == newer.id
    assert find_dataset(tmp_path, older.id[:8]).id == older.id
    with pytest.raises(FileNotFoundError, match="no dataset versions match 'zzz'"):
        find_dataset(tmp_path, "zzz")
    store = LocalDatasetStore(tmp_path)
    assert store.instance() == LocalDatasetStore(tmp_path).instance()


def test_a_failed_ingest_leaves_no_version_or_staging_behind(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"instruction": "Only one?", "output": "Yes."}) + "\n")
    with pytest.raises(IngestError, match="split is empty"):
        ingest(settings(path), tmp_path / "store")
    assert [p.name for p in (tmp_path / "store").iterdir()] == []


def test_dataset_versions_in_the_registry_s3_bucket(s3_settings, tmp_path):
    from fragua.data.store import open_dataset_store
    from fragua.jobs.data import dataset_split, expand_dataset, ingest_cache_key, ingest_sources

    from .conftest import make_settings

    config = make_settings(tmp_path / "work", registry=s3_settings, data={"store": "registry", "sources": [{"path": str(EXAMPLES)}]},
                           expand={"expansion_factor": 2.0})
    manifest = ingest_sources(config)
    store = open_dataset_store(config)
    assert isinstance(store, ObjectDatasetStore) and store.describe().startswith("s3://")
    assert store.find(None).id == manifest.id
    assert not (tmp_path / "work" / "datasets").exists()
    expanded = expand_dataset(config, manifest.id)
    assert expanded.parent == manifest.id and store.find(expanded.id[:8]).counts["train"] > manifest.counts["train"]
    assert len(dataset_split(config, store.find(manifest.id), "validation")) == manifest.counts["validation"]
    assert ingest_cache_key(config) == ingest_cache_key(config)
