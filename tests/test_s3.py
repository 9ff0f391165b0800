"""Configuring the S3 registry: settings, environment, credentials blocks, errors, CLI, progress."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fragua.cli import app
from fragua.registry import open_registry
from fragua.registry.versions import Registry
from fragua.settings import Settings
from fragua.storage.progress import transfer_progress
from fragua.storage.store import StoreConfigurationError

from .s3server import ACCESS_KEY, REGION, SECRET_KEY

runner = CliRunner()


def publish_one(registry: Registry, tmp_path: Path, payload: str = "x") -> str:
    (tmp_path / "w.safetensors").write_bytes(payload.encode() * 1000)
    version = registry.allocate("tiny")
    registry.publish(version, {"adapter_model.safetensors": tmp_path / "w.safetensors"}, {})
    return version


def test_s3_from_environment_variables_and_the_standard_aws_chain(s3_settings, monkeypatch, tmp_path):
    monkeypatch.setenv("FRAGUA_REGISTRY__BACKEND", "s3")
    monkeypatch.setenv("FRAGUA_REGISTRY__BUCKET", s3_settings.bucket)
    monkeypatch.setenv("FRAGUA_REGISTRY__ENDPOINT_URL", s3_settings.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    settings = Settings.load(work_dir=str(tmp_path / "work"))
    assert settings.registry.access_key_id is None  # the keys come from boto3's own chain
    registry = open_registry(settings)
    assert registry.describe() == f"s3://{s3_settings.bucket}/models/fragua"
    version = publish_one(registry, tmp_path)
    assert [m.version for m in registry.versions()] == [version]
    assert not (tmp_path / "work" / "registry").exists()


def test_credentials_from_a_prefect_aws_block(prefect_api, s3_settings, tmp_path):
    from fragua.blocks import save_s3_credentials

    slug = save_s3_credentials(ACCESS_KEY, SECRET_KEY, "test-minio", kind="minio", region=REGION, endpoint_url=s3_settings.endpoint_url)
    assert slug == "minio-credentials/test-minio"
    settings = Settings(work_dir=tmp_path, registry={"backend": "s3", "bucket": s3_settings.bucket, "credentials_block": slug})
    registry = open_registry(settings)  # endpoint and keys both come from the block
    version = publish_one(registry, tmp_path)
    assert registry.manifest(version).number == 1
    assert SECRET_KEY not in json.dumps(settings.redacted())

    aws = save_s3_credentials(ACCESS_KEY, SECRET_KEY, "test-aws", kind="aws", region=REGION)
    with_endpoint = {"backend": "s3", "bucket": s3_settings.bucket, "credentials_block": aws, "endpoint_url": s3_settings.endpoint_url}
    assert [m.version for m in open_registry(Settings(work_dir=tmp_path, registry=with_endpoint)).versions()] == [version]


def test_a_missing_credentials_block_is_a_clear_error(prefect_api, s3_settings, tmp_path):
    settings = Settings(work_dir=tmp_path, registry={"backend": "s3", "bucket": s3_settings.bucket, "credentials_block": "aws-credentials/nope"})
    with pytest.raises(StoreConfigurationError, match="aws-credentials/nope.*fragua blocks save-s3-credentials"):
        open_registry(settings)


def test_a_missing_bucket_is_a_clear_permanent_error(s3_settings, tmp_path):
    from fragua.tasks import PERMANENT_ERRORS

    settings = Settings(work_dir=tmp_path, registry={**s3_settings.model_dump(), "bucket": "no-such-bucket-here", "secret_access_key": SECRET_KEY})
    with pytest.raises(StoreConfigurationError, match="no-such-bucket-here.*bucket does not exist") as caught:
        open_registry(settings).allocate("tiny")
    assert isinstance(caught.value, PERMANENT_ERRORS)  # Prefect does not retry it


@pytest.mark.parametrize(
    "registry, message",
    [
        ({"backend": "s3"}, "needs registry.bucket"),
        ({"bucket": "my-bucket"}, "registry.backend is 'local'"),
        ({"backend": "s3", "bucket": "UPPER"}, "invalid registry.bucket"),
        ({"backend": "s3", "bucket": "ok-bucket", "prefix": "a/../b"}, "registry.prefix"),
        ({"backend": "s3", "bucket": "ok-bucket", "access_key_id": "k"}, "go together"),
        ({"backend": "s3", "bucket": "ok-bucket", "access_key_id": "k", "secret_access_key": "s", "credentials_block": "aws-credentials/b"}, "not both"),
        ({"backend": "s3", "bucket": "ok-bucket", "credentials_block": "secret/b"}, "aws-credentials/NAME"),
        ({"backend": "s3", "bucket": "ok-bucket", "endpoint_url": "minio:9000"}, "endpoint_url"),
        ({"backend": "s3", "bucket": "ok-bucket", "root": "/tmp/x"}, "registry.root is for the local backend"),
        ({"multipart_chunk_mb": 128}, "must not exceed registry.multipart_threshold_mb"),
        ({"keep_last": 0}, "keep_last"),
    ],
)
def test_invalid_registry_settings_are_rejected_before_any_work(registry, message):
    with pytest.raises(ValueError, match=message):
        Settings(registry=registry)


def test_the_secret_key_never_reaches_a_dump():
    settings = Settings(registry={"backend": "s3", "bucket": "ok-bucket", "access_key_id": "k", "secret_access_key": "very-secret-value"})
    assert "very-secret-value" not in json.dumps(settings.redacted())
    assert "very-secret-value" not in repr(settings)


def test_registry_gc_command_on_s3(s3_settings, tmp_path, monkeypatch):
    for name, value in {"BACKEND": "s3", "BUCKET": s3_settings.bucket, "ENDPOINT_URL": s3_settings.endpoint_url, "REGION": REGION,
                        "ACCESS_KEY_ID": ACCESS_KEY, "SECRET_ACCESS_KEY": SECRET_KEY}.items():
        monkeypatch.setenv(f"FRAGUA_REGISTRY__{name}", value)
    settings = Settings(work_dir=tmp_path)
    registry = open_registry(settings)
    versions = [publish_one(registry, tmp_path, str(i)) for i in range(4)]
    registry.promote(versions[0], reason="test")
    half = registry.allocate("tiny")
    registry.store.put_bytes(f"{registry.version_prefix(half)}/adapter_model.safetensors", b"half")

    dry = runner.invoke(app, ["--work-dir", str(tmp_path), "registry", "gc", "--keep-last", "2", "--grace-minutes", "0", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would delete" in dry.output and "fragua-tiny-v2" in dry.output and len(registry.versions()) == 4
    done = runner.invoke(app, ["--work-dir", str(tmp_path), "registry", "gc", "--keep-last", "2", "--grace-minutes", "0"])
    assert done.exit_code == 0, done.output
    assert [m.version for m in registry.versions()] == [versions[0], versions[2], versions[3]]
    assert registry.store.list_keys(f"{registry.version_prefix(half)}/") == []
    history = runner.invoke(app, ["--work-dir", str(tmp_path), "history"])
    assert history.exit_code == 0 and versions[0] in history.output


def test_progress_is_logged_when_not_on_a_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="fragua.registry"):
        with transfer_progress("uploading v1", 1000) as advance:
            for _ in range(10):
                advance(100)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == ["uploading v1: 25 % of 1000 B", "uploading v1: 50 % of 1000 B", "uploading v1: 75 % of 1000 B"]
    assert lines[-1].startswith("uploading v1: 1000 B in")


def test_publish_reports_progress_over_all_files(store, tmp_path):
    seen: dict[str, int] = {}

    from contextlib import contextmanager

    @contextmanager
    def recorder(description: str, total: int):
        seen["total"] = total
        seen["moved"] = 0

        def advance(count: int) -> None:
            seen["moved"] += count

        yield advance

    registry = Registry(store, "acme", progress=recorder)
    (tmp_path / "a.safetensors").write_bytes(b"a" * 6_000_000)
    (tmp_path / "b.json").write_text("{}")
    version = registry.allocate("tiny")
    registry.publish(version, {"a.safetensors": tmp_path / "a.safetensors", "b.json": tmp_path / "b.json"}, {})
    assert seen == {"total": 6_000_002, "moved": 6_000_002}
    registry.fetch(version, tmp_path / "cache")
    assert seen == {"total": 6_000_002, "moved": 6_000_002}
