"""Data jobs: ingest the sources into a dataset version, expand its train split."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from pathlib import Path
from typing import Any

from fragua import __version__
from fragua.data import store as dataset_store
from fragua.data.expand import expand_train
from fragua.data.expand_shards import InProcess, Sharding, ShardRunner
from fragua.data.ingest import IngestError, ingest, sources_fingerprint
from fragua.data.records import Record
from fragua.data.remote import split_path, stream_records
from fragua.data.shards import ShardMapper
from fragua.data.sources import file_sha256
from fragua.data.store import DatasetManifest, DatasetStore, open_dataset_store
from fragua.registry.versions import RegistryError
from fragua.settings import Settings
from fragua.train.data import StreamedSplit

logger = logging.getLogger("fragua.jobs")


def dataset_split(settings: Settings, dataset: DatasetManifest, split: str) -> list[Record]:
    """A split of a dataset version as training and evaluation see it: only data.domains, if set."""
    return dataset_store.load_records(dataset, split, settings.data.domains)


def streamed_split(settings: Settings, dataset: DatasetManifest, split: str) -> StreamedSplit:
    """A split read from the registry's S3 bucket pass by pass (train.stream_data), only data.domains if set."""
    unknown = sorted(set(settings.data.domains or ()) - set(dataset.domains))
    if unknown:
        raise ValueError(f"data.domains: dataset {dataset.id} has no domain {', '.join(map(repr, unknown))}; it has {', '.join(dataset.domains)}")
    location = "s3://" + split_path(settings.registry, dataset.id, split)
    return StreamedSplit(lambda: stream_records(settings.registry, dataset.id, split, settings.data.domains), location)


def stats_tokenizer(settings: Settings) -> Path | None:
    """The base model's tokenizer.json when it is on local disk (token lengths in the dataset stats)."""
    candidate = Path(settings.base_model_ref).expanduser() / "tokenizer.json"
    return candidate if candidate.is_file() else None


def ingest_inputs_key(settings: Settings, store: DatasetStore) -> str | None:
    """What an ingest's result depends on: source contents, data settings, the store, the
    stats tokenizer and Fragua's version. None when a source cannot be fingerprinted (an
    unpinned hub dataset) or does not exist (ingest will say why)."""
    try:
        fingerprints = list(sources_fingerprint(settings.data))
    except (IngestError, OSError):
        return None
    if any(fingerprint is None for _, fingerprint in fingerprints):
        return None
    tokenizer = stats_tokenizer(settings)
    payload = {
        "fragua": __version__,
        "sources": fingerprints,
        "data": settings.data.ingest_fingerprint(),
        "store": [store.describe(), store.instance()],
        "tokenizer": file_sha256(tokenizer) if tokenizer else None,
    }
    return "ingest-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def ingest_cache_key(settings: Settings) -> str | None:
    """The ingest task's cache key: its inputs key, unless the version those inputs produced
    has been deleted since (a cache hit would then point at nothing)."""
    store = open_dataset_store(settings)
    key = ingest_inputs_key(settings, store)
    if key is None:
        return None
    recorded = store.recall(key)
    if recorded is not None and store.open(recorded) is None:
        return f"{key}-rebuild-{uuid.uuid4().hex}"
    return key


def ingest_sources(settings: Settings, map_shards: ShardMapper | None = None) -> DatasetManifest:
    """``map_shards``: run the per-shard work elsewhere (Prefect tasks on scale.task_runner)."""
    store = open_dataset_store(settings)
    return ingest(
        settings.data, store=store, tokenizer_file=stats_tokenizer(settings), ingest_key=ingest_inputs_key(settings, store),
        map_shards=map_shards, shard_bytes=settings.scale.shard_bytes,
    )


def expansion_generator(settings: Settings) -> tuple[Any, str]:
    """The text generator of the model-based expansion strategies and a label for the report:
    expand.generation.model (a registry version, a local folder or a hub id), else the
    production version, else the base model while nothing is deployed."""
    from fragua.inference.choice import ModelChoice, load_model, resolve_model
    from fragua.inference.generation import TextGenerator
    from fragua.models.tiny import ensure_base_model

    wanted = settings.expand.generation.model
    if wanted is None:
        try:
            choice = resolve_model(settings)
        except RegistryError:
            base = ensure_base_model(settings)
            choice = ModelChoice(label=f"base model {base} (no production version yet)", folder=base)
    elif Path(wanted).expanduser().is_dir():
        choice = resolve_model(settings, path=wanted)
    else:
        try:
            choice = resolve_model(settings, version=wanted)
        except RegistryError:
            choice = ModelChoice(label=wanted, folder=wanted)  # a hub id; loading says so if it is none
    return TextGenerator(load_model(settings, choice), settings.expand.generation), choice.label


def expand_dataset(settings: Settings, dataset_id: str, runner: ShardRunner | None = None) -> DatasetManifest:
    """A child dataset version whose train split is expanded; validation and test copied unchanged.
    With expand.expansion_factor 1.0 the version itself is returned. ``runner``: where expand's
    shards run (Prefect tasks on scale.task_runner); the version does not depend on it."""
    store = open_dataset_store(settings)
    parent = store.find(dataset_id)
    if settings.expand.expansion_factor <= 1.0:
        return parent
    train_records = dataset_store.load_records(parent, "train")
    held_out = dataset_store.load_records(parent, "validation") + dataset_store.load_records(parent, "test")
    generator, label = expansion_generator(settings) if settings.expand.model_strategies else (None, None)
    expansion = expand_train(
        train_records, settings.expand, settings.data, held_out=held_out, generator=generator, generator_label=label,
        sharding=Sharding(runner or InProcess(), settings.scale.expand_shard_rows, settings.scale.shards_in_flight),
    )
    logger.info("expanded %s: %s", parent.id, {k: expansion.report[k] for k in ("train_before", "train_after", "achieved_factor")})
    return dataset_store.write_dataset_version(
        store,
        expansion.records + held_out,
        quarantine=expansion.rejected,
        sources=parent.sources,
        settings={**parent.settings, "expand": settings.expand.model_dump(mode="json")},
        parent=parent.id,
        report={"expansion": expansion.report},
    )
