"""Stream a dataset version's split straight from S3 (no download of the version).

Versions kept in the registry's bucket (``data.store = "registry"``) are Parquet files; a
reader on many machines or a training job on a fresh pod does not need the whole version
on local disk: pyarrow's S3 filesystem reads the footer, then row groups by range request.
"""

from __future__ import annotations

from typing import Any, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fragua.data.records import Record
from fragua.data.store import record_from_row
from fragua.settings import RegistrySettings

DATASETS_PREFIX = "datasets"


def s3_filesystem(registry: RegistrySettings) -> pafs.S3FileSystem:
    """The registry's bucket as a pyarrow filesystem: its endpoint, region and keys (or, without
    keys, the standard AWS chain: environment, ~/.aws, instance role)."""
    options: dict[str, Any] = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=registry.max_attempts)}
    if registry.endpoint_url:
        scheme, _, host = registry.endpoint_url.partition("://")
        options |= {"endpoint_override": host.rstrip("/"), "scheme": scheme}
    if registry.region:
        options["region"] = registry.region
    if registry.access_key_id:
        options["access_key"] = registry.access_key_id
        options["secret_key"] = registry.secret_access_key.get_secret_value() if registry.secret_access_key else ""
        if registry.session_token:
            options["session_token"] = registry.session_token.get_secret_value()
    if registry.addressing_style == "path" or registry.endpoint_url:
        options["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**options)


def split_path(registry: RegistrySettings, dataset_id: str, split: str) -> str:
    if registry.bucket is None:
        raise ValueError("streaming a dataset version from S3 needs registry.backend 's3' and registry.bucket")
    parts = [registry.bucket, registry.prefix.strip("/"), DATASETS_PREFIX, dataset_id, f"{split}.parquet"]
    return "/".join(p for p in parts if p)


def stream_split(registry: RegistrySettings, dataset_id: str, split: str, batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
    """The split's rows in stored order, ``batch_size`` at a time, read from S3 as they are consumed."""
    path = split_path(registry, dataset_id, split)
    filesystem = s3_filesystem(registry)
    try:
        handle = filesystem.open_input_file(path)
    except (FileNotFoundError, OSError) as exc:
        raise FileNotFoundError(f"s3://{path}: no such dataset split ({exc}); check the dataset id and registry.bucket/prefix") from exc
    with handle:
        yield from pq.ParquetFile(handle).iter_batches(batch_size=batch_size)


def stream_records(registry: RegistrySettings, dataset_id: str, split: str, domains: list[str] | None = None, batch_size: int = 1024) -> Iterator[Record]:
    """The split's records in stored order (only ``domains``, if given), read from S3 as they are consumed."""
    wanted = set(domains) if domains is not None else None
    for batch in stream_split(registry, dataset_id, split, batch_size):
        for row in batch.to_pylist():
            if wanted is None or row["domain"] in wanted:
                yield record_from_row(row)
