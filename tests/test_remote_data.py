"""Dataset splits streamed from S3 (moto server) match the stored version, without downloading it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fragua.data.ingest import ingest
from fragua.data.remote import stream_records, stream_split
from fragua.data.store import ObjectDatasetStore, load_records
from fragua.settings import DataSettings
from fragua.storage.s3 import S3Store

from .conftest import EXAMPLES


@pytest.fixture
def stored(s3_settings, tmp_path):
    store = ObjectDatasetStore(S3Store.from_settings(s3_settings), tmp_path / "writer-cache")
    manifest = ingest(DataSettings(sources=[{"path": str(EXAMPLES)}]), store=store)
    return s3_settings, manifest


def test_split_streams_in_stored_order_in_batches(stored, tmp_path):
    registry, manifest = stored
    expected = pq.read_table(manifest.split_path("train"))
    batches = list(stream_split(registry, manifest.id, "train", batch_size=7))
    assert len(batches) > 1 and max(b.num_rows for b in batches) == 7
    assert pa.Table.from_batches(batches).equals(expected)


def test_records_stream_as_the_stored_split_reads(stored):
    registry, manifest = stored
    assert list(stream_records(registry, manifest.id, "validation", batch_size=4)) == load_records(manifest, "validation")
    domain = sorted(manifest.domains)[0]
    assert list(stream_records(registry, manifest.id, "train", [domain], batch_size=5)) == load_records(manifest, "train", [domain])


def test_missing_split_names_the_object(stored):
    registry, _ = stored
    with pytest.raises(FileNotFoundError, match="no such dataset split"):
        list(stream_split(registry, "0" * 20, "train"))
