from __future__ import annotations

import os

import pytest

from fragua.blocks import save_wandb_key
from fragua.integrations.tracking import resolve_api_key
from fragua.settings import Settings


def test_wandb_key_from_a_secret_block(prefect_api):
    name = save_wandb_key("wandb-key-from-block-987")
    settings = Settings(tracking={"mode": "online", "api_key_block": name})
    assert resolve_api_key(settings.tracking) == "wandb-key-from-block-987"
    assert "wandb-key-from-block-987" not in str(settings.redacted())


def test_key_and_block_together_are_rejected():
    with pytest.raises(ValueError, match="not both"):
        Settings(tracking={"api_key": "k", "api_key_block": "b"})


def test_empty_key_is_rejected(prefect_api):
    with pytest.raises(ValueError, match="empty"):
        save_wandb_key("  ")


def test_register_block_types_in_process_and_with_the_prefect_cli(prefect_api, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from prefect.settings import PREFECT_API_URL

    from fragua.blocks import register_block_types

    assert set(register_block_types()) == {"aws-credentials", "minio-credentials", "s3-bucket", "secret", "custom-webhook"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "block", "register", "-m", "fragua.blocks"], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "s3-bucket" in done.stdout.replace("S3 Bucket", "s3-bucket") or "Successfully registered" in done.stdout


def test_registry_through_an_s3_bucket_block(prefect_api, s3_settings):
    from fragua.blocks import save_s3_credentials, save_storage
    from fragua.storage.s3 import S3Store

    credentials = save_s3_credentials(
        s3_settings.access_key_id, s3_settings.secret_access_key.get_secret_value(), "moto-minio",
        kind="minio", region=s3_settings.region, endpoint_url=s3_settings.endpoint_url,
    )
    storage = save_storage(s3_settings.bucket, credentials, "moto-bucket", prefix="teams/a")
    settings = Settings(registry={"backend": "s3", "storage_block": storage, "max_attempts": 2})
    store = S3Store.from_settings(settings.registry)
    store.put_bytes("hello.txt", b"from a block")
    assert (store.bucket, store.prefix) == (s3_settings.bucket, "teams/a")
    assert store.list_keys("") == ["hello.txt"]
    with pytest.raises(ValueError, match="storage_block"):
        Settings(registry={"backend": "s3", "storage_block": storage, "bucket": "other-bucket"})


def test_webhook_block_round_trip(prefect_api):
    from fragua.blocks import save_webhook
    from fragua.integrations.notify import load_notification_block

    slug = save_webhook("http://127.0.0.1:9/hook", "round-trip")
    assert slug == "custom-webhook/round-trip"
    assert load_notification_block(slug).url == "http://127.0.0.1:9/hook"
    with pytest.raises(ValueError, match="http"):
        save_webhook("ftp://example/hook")
