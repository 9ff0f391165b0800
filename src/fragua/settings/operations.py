"""Sections about where runs keep and report things and where they run: ``registry``, ``tracking``,
``intake``, ``notifications`` and ``scale``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from fragua.settings.base import Section, check_name

S3_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
CREDENTIALS_BLOCK_PATTERN = re.compile(r"^(aws-credentials|minio-credentials)/[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class CanarySettings(Section):
    """When the `canary` flow promotes a canary version to production, drops it, or waits."""

    min_requests: int = Field(
        200, ge=1, le=100_000_000,
        description="Requests the canary must have served since it started before the flow judges it; fewer: it waits.",
    )
    max_error_rate_increase: float = Field(
        0.01, ge=0.0, le=1.0,
        description="Most the canary's error rate (failed / served) may exceed production's over the same time, as a fraction (0.01 = one point); more drops it.",
    )
    min_ratings: int = Field(
        20, ge=0, le=100_000_000,
        description="Feedback ratings each of canary and production needs before their mean ratings are compared; with fewer, ratings do not count.",
    )
    max_rating_drop: float = Field(
        0.1, ge=0.0, le=2.0,
        description="Most the canary's mean rating (-1 bad .. 1 good) may fall below production's; a larger drop drops the canary.",
    )
    max_duration_hours: float = Field(
        72.0, gt=0, le=8_760,
        description="A canary that has not served min_requests this long after it started is dropped: too little traffic to judge it.",
    )


class RegistrySettings(Section):
    backend: Literal["local", "s3"] = Field(
        "local", description="Where versions live: 'local' is a directory (work_dir/registry unless root is set); 's3' is a bucket on AWS S3, MinIO, R2 or any S3-compatible service."
    )
    root: Path | None = Field(None, description="Directory of the local registry; None means work_dir/registry.")
    model_name: str = Field("fragua", description="Name of the model family: versions are <model_name>-<size>-v<N>.")
    size_label: str = Field("auto", description="Size in version names; 'auto' reads the parameter count ('tiny' under 50M, else e.g. '500m', '7b').")
    auto_deploy: bool = Field(True, description="Move the 'production' alias to a version that passes validation; off, versions are only registered.")
    bucket: str | None = Field(None, description="S3 bucket of the registry (backend 's3'); it must exist.")
    prefix: str = Field("", description="Key prefix inside the bucket, e.g. 'team-a/registry', so several registries can share one bucket.")
    endpoint_url: str | None = Field(
        None, pattern=r"^https?://[^\s/]+(/.*)?$",
        description="S3 endpoint for MinIO, Cloudflare R2, Ceph... (e.g. http://127.0.0.1:9000); None means AWS, or AWS_ENDPOINT_URL_S3 / the credentials block's endpoint.",
    )
    region: str | None = Field(None, pattern=r"^[a-z0-9-]{1,40}$", description="S3 region; None uses AWS_DEFAULT_REGION / the AWS config (R2 wants 'auto', MinIO 'us-east-1').")
    access_key_id: str | None = Field(None, min_length=1, description="S3 access key id; None reads the credentials block or the standard AWS chain (AWS_ACCESS_KEY_ID, ~/.aws, instance role).")
    secret_access_key: SecretStr | None = Field(None, description="S3 secret key that goes with access_key_id; prefer credentials_block or the environment.")
    session_token: SecretStr | None = Field(None, description="Temporary-credentials session token that goes with access_key_id.")
    credentials_block: str | None = Field(
        None, description="Prefect block with the S3 credentials, as 'aws-credentials/NAME' or 'minio-credentials/NAME' (see `fragua blocks save-s3-credentials`)."
    )
    storage_block: str | None = Field(
        None,
        pattern=r"^s3-bucket/[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="prefect-aws S3Bucket block ('s3-bucket/NAME', see `fragua blocks save-storage`) holding bucket, folder and credentials; replaces registry.bucket, prefix and credentials.",
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="Bucket in the path (MinIO and most self-hosted servers) or in the host name (AWS); 'auto' lets boto3 decide."
    )
    max_attempts: int = Field(5, ge=1, le=20, description="Attempts per S3 request (botocore 'standard' retries with backoff) before a task-level retry takes over.")
    multipart_threshold_mb: int = Field(16, ge=5, le=5_120, description="Files at least this large go up and down in parts, in parallel.")
    multipart_chunk_mb: int = Field(8, ge=5, le=5_120, description="Part size of multipart transfers; S3 allows at most 10,000 parts per object.")
    max_concurrency: int = Field(16, ge=1, le=128, description="Parallel requests of one version's upload or download (parts and files together).")
    keep_last: int | None = Field(
        None, ge=1, description="Retention: after each deploy (and in `fragua registry gc`) delete all but the newest N versions; versions an alias points to are always kept. None keeps everything."
    )
    gc_grace_minutes: float = Field(
        60.0, ge=0.0, description="`fragua registry gc` removes unfinished versions (no manifest) only when allocated at least this long ago, so it never races an upload in progress."
    )
    canary: CanarySettings = Field(
        default_factory=CanarySettings, description="Gradual rollout: when the `canary` flow promotes or drops a version deployed with `fragua deploy --canary`."
    )

    @field_validator("model_name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "registry.model_name")

    @field_validator("size_label")
    @classmethod
    def _size(cls, value: str) -> str:
        return check_name(value, "registry.size_label")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        if value is not None and (not S3_BUCKET_PATTERN.fullmatch(value) or ".." in value):
            raise ValueError(f"invalid registry.bucket {value!r}: 3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip("/")
        for part in value.split("/") if value else []:
            check_name(part, "registry.prefix part")
        return value

    @field_validator("credentials_block")
    @classmethod
    def _block(cls, value: str | None) -> str | None:
        if value is not None and not CREDENTIALS_BLOCK_PATTERN.fullmatch(value):
            raise ValueError(f"invalid registry.credentials_block {value!r}: use 'aws-credentials/NAME' or 'minio-credentials/NAME'")
        return value

    @model_validator(mode="after")
    def _backend(self) -> RegistrySettings:
        s3_only = ("bucket", "endpoint_url", "region", "access_key_id", "secret_access_key", "session_token", "credentials_block", "storage_block")
        if self.storage_block is not None and (self.bucket or self.prefix or self.credentials_block or self.access_key_id):
            raise ValueError("registry.storage_block holds the bucket, folder and credentials: do not also set registry.bucket, prefix, credentials_block or access keys")
        if self.backend == "s3":
            if self.bucket is None and self.storage_block is None:
                raise ValueError("registry.backend 's3' needs registry.bucket (FRAGUA_REGISTRY__BUCKET) or registry.storage_block")
            if self.root is not None:
                raise ValueError("registry.root is for the local backend; with registry.backend 's3' use registry.bucket and registry.prefix")
        else:
            given = [name for name in s3_only if getattr(self, name) is not None]
            if given:
                raise ValueError(f"registry.{given[0]} is set but registry.backend is 'local'; set registry.backend to 's3' to use it, or remove it")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("registry.access_key_id and registry.secret_access_key go together: set both or neither")
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("registry.session_token needs registry.access_key_id and registry.secret_access_key")
        if self.access_key_id is not None and self.credentials_block is not None:
            raise ValueError("set registry.access_key_id/secret_access_key or registry.credentials_block, not both")
        if self.multipart_chunk_mb > self.multipart_threshold_mb:
            raise ValueError(
                f"registry.multipart_chunk_mb ({self.multipart_chunk_mb}) must not exceed registry.multipart_threshold_mb ({self.multipart_threshold_mb})"
            )
        return self


class TrackingSettings(Section):
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="W&B mode: offline writes runs under work_dir/wandb for 'wandb sync'; online needs an API key."
    )
    project: str = Field("fragua", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (team or user); None uses the key's default.")
    api_key: SecretStr | None = Field(None, description="W&B API key for online mode; else api_key_block or WANDB_API_KEY is used.")
    api_key_block: str | None = Field(
        None, description="Name of a Prefect Secret block holding the W&B API key (see `fragua blocks save-wandb-key`)."
    )

    @model_validator(mode="after")
    def _key(self) -> TrackingSettings:
        if self.api_key is not None and self.api_key_block is not None:
            raise ValueError("set tracking.api_key or tracking.api_key_block, not both")
        if self.mode == "online" and self.api_key is None and self.api_key_block is None and not os.environ.get("WANDB_API_KEY"):
            raise ValueError(
                "tracking.mode 'online' needs tracking.api_key (FRAGUA_TRACKING__API_KEY), tracking.api_key_block or WANDB_API_KEY"
            )
        return self


class IntakeSettings(Section):
    # A secret: the URL may carry the database password, and settings go into manifests and W&B.
    database_url: SecretStr | None = Field(
        None, description="SQLAlchemy URL of the intake queue (kept secret: it may hold a password); None means SQLite at work_dir/intake.db."
    )
    min_new_examples: int = Field(10, ge=1, description="autotrain runs the pipeline once this many new examples are pending.")
    max_examples_per_run: int | None = Field(
        None, ge=1, description="autotrain trains on at most this many pending examples per run (oldest first); None takes them all."
    )
    claim_timeout_minutes: float = Field(
        720.0, gt=0, le=100_000,
        description="Examples a run claimed (status 'training') go back to pending when the claim is older than this: the run crashed without releasing them. Keep it above your longest training.",
    )
    api_token: SecretStr | None = Field(
        None, description="Bearer token the HTTP API requires (Authorization: Bearer TOKEN); `fragua serve-api` refuses to start without one."
    )
    api_host: str = Field("127.0.0.1", min_length=1, description="Address `fragua serve-api` binds; 0.0.0.0 exposes it on every interface.")
    api_port: int = Field(8765, ge=0, le=65_535, description="Port of `fragua serve-api`; 0 picks a free one (printed at start).")
    max_request_bytes: int = Field(
        1_048_576, ge=1024, le=1_073_741_824, description="Largest HTTP request body the API accepts; larger ones get 413."
    )
    max_batch_examples: int = Field(1_000, ge=1, le=100_000, description="Most examples one POST /examples/batch may carry; more get 422.")
    max_example_chars: int = Field(20_000, ge=1, le=1_000_000, description="Longest question, answer or message the API and CLI accept, in characters.")
    max_meta_depth: int = Field(
        32, ge=1, le=200,
        description="Deepest nesting of an example's meta the API accepts (meta itself is level 1; each object or list inside adds one); deeper gets 422.",
    )
    force_deployment: str = Field(
        "autotrain/on-demand",
        pattern=r"^[^/\s]+/[^/\s]+$",
        description="Deployment ('flow/deployment') that POST /training/force and `fragua autotrain --force --deployment` start when a Prefect server is configured (PREFECT_API_URL).",
    )


class NotificationSettings(Section):
    """Messages about deploys, canary moves, rollbacks and failed runs, sent through a Prefect notification block."""

    block: str | None = Field(
        None,
        pattern=r"^[a-z0-9-]+/[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="Prefect notification block as 'TYPE/NAME', e.g. 'custom-webhook/fragua-alerts' (see `fragua blocks save-webhook`); None sends nothing.",
    )
    events: list[Literal["deploy", "canary", "rollback", "failure"]] = Field(
        default_factory=lambda: ["deploy", "canary", "rollback", "failure"],
        description="Which events are sent: 'canary' is a canary started, promoted or dropped.",
    )


class ScaleSettings(Section):
    """Where per-shard work (ingest's row preparation, expand's row checks and variants, batch evaluation) runs: here, or a Dask / Ray cluster."""

    task_runner: Literal["threads", "dask", "ray"] = Field(
        "threads",
        description=(
            "Prefect task runner of the per-shard tasks: 'threads' (this process: ThreadPoolTaskRunner for batch evaluation; "
            "ingest streams with its own reader/writer threads and expand runs its shards inline, faster here than per-shard task runs), 'dask' "
            "(prefect-dask DaskTaskRunner: a local cluster, or scale.address), 'ray' (prefect-ray RayTaskRunner: "
            "a local Ray, or scale.address). The dataset version id does not depend on it."
        ),
    )
    address: str | None = Field(
        None, min_length=1,
        description="Scheduler of an existing cluster: 'tcp://host:8786' for Dask, 'ray://host:10001' or 'auto' for Ray; None starts a local cluster for the run.",
    )
    workers: int = Field(
        2, ge=1, le=1024, description="Worker threads (threads), worker processes of the local Dask cluster, or CPUs of the local Ray; ignored with an address."
    )
    shard_bytes: int = Field(
        16 << 20, ge=1 << 16, le=1 << 34,
        description="Target size of one shard: JSONL files are cut at the first line start after every this many bytes, Parquet files between row groups; other inputs are one shard each.",
    )
    expand_shard_rows: int = Field(
        8192, ge=1, le=1_000_000,
        description="Most train rows per expand shard (leakage check and eligibility), and parents per shard of rule-based variants; the expanded dataset does not depend on it.",
    )
    eval_shard_items: int = Field(
        256, ge=1, le=1_000_000, description="Questions per shard of a batch evaluation (each shard loads the model once: one per worker or GPU)."
    )
    shards_in_flight: int = Field(
        3, ge=1, le=4096, description="Shards submitted and not yet merged: bounds the memory of the results waiting to be merged in order (expand asks for variant shards as its merge needs them)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ScaleSettings:
        if self.task_runner == "threads" and self.address is not None:
            raise ValueError(f"scale.address ({self.address!r}) needs scale.task_runner 'dask' or 'ray'; threads run in this process")
        return self
