"""Recognisable secrets go in; the pipeline runs on the tiny model (W&B offline, registry on the
S3 server); then every log line, Prefect artifact, flow-run parameter, file under the work
dir, HOME and W&B's folders, and every object in the bucket is searched for them."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import boto3
import pytest

from ..s3server import ACCESS_KEY, REGION

pytestmark = pytest.mark.e2e


def canary(kind: str) -> str:
    return f"canary{kind}{uuid.uuid4().hex}"[:40]  # 40 characters, like a W&B key


async def prefect_outputs() -> list[str]:
    """Everything the Prefect API holds about the runs: logs, artifacts, flow and task run parameters."""
    from prefect import get_client

    async with get_client() as client:
        logs = await client.read_logs()
        artifacts = await client.read_artifacts()
        flow_runs = await client.read_flow_runs()
        task_runs = await client.read_task_runs()
    texts = [log.message for log in logs]
    texts += [f"{a.key} {a.description} {a.data}" for a in artifacts]
    texts += [repr(run.parameters) for run in flow_runs]
    texts += [repr(run.task_inputs) for run in task_runs]
    return texts


def files_holding(folder: Path, secrets: list[str]) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}: {secret[:12]}…" for secret in secrets if secret.encode() in data]
    return found


@pytest.mark.slow(seconds=95)
def test_secrets_never_reach_logs_artifacts_wandb_manifests_or_files(prefect_api, s3_settings, s3_server, fragua_cli, tmp_path):
    from prefect.blocks.system import Secret

    secrets = {kind: canary(kind) for kind in ("wandbkey", "wandbblock", "s3secret", "awssecret", "awstoken")}
    block = f"wandb-canary-{uuid.uuid4().hex[:8]}"
    Secret(value=secrets["wandbblock"]).save(block)
    home, wandb_dir = tmp_path / "home", tmp_path / "wandb-dirs"
    work = tmp_path / "work"
    env = {
        "HOME": str(home),
        "WANDB_DIR": str(wandb_dir / "runs"), "WANDB_CACHE_DIR": str(wandb_dir / "cache"), "WANDB_DATA_DIR": str(wandb_dir / "data"),
        "WANDB_API_KEY": secrets["wandbkey"],
        # the standard AWS chain's variables: present, but the registry's own keys take precedence
        "AWS_SECRET_ACCESS_KEY": secrets["awssecret"], "AWS_SESSION_TOKEN": secrets["awstoken"], "AWS_ACCESS_KEY_ID": "AKIACANARYCANARY",
        "FRAGUA_REGISTRY__BACKEND": "s3", "FRAGUA_REGISTRY__BUCKET": s3_settings.bucket, "FRAGUA_REGISTRY__PREFIX": "secrets",
        "FRAGUA_REGISTRY__ENDPOINT_URL": s3_server.endpoint, "FRAGUA_REGISTRY__REGION": REGION,
        "FRAGUA_REGISTRY__ACCESS_KEY_ID": ACCESS_KEY, "FRAGUA_REGISTRY__SECRET_ACCESS_KEY": secrets["s3secret"],
    }
    flags = ["--set", "tracking.mode=offline", "--set", "train.max_steps=2", "--set", "validate.max_examples=4",
             "--set", "validate.min_score=0.0", "--set", "validate.require_beat_base=false", "--set", "validate.max_new_tokens=8"]
    # The W&B key once from a Prefect Secret block, once as the SecretStr setting.
    first_code, first = fragua_cli(*flags, "--set", f"tracking.api_key_block={block}", "run", work_dir=work, extra_env=env)
    assert first_code == 0, first[-3000:]
    second_code, second = fragua_cli(*flags, "run", work_dir=work, extra_env={**env, "FRAGUA_TRACKING__API_KEY": secrets["wandbkey"]})
    assert second_code == 0, second[-3000:]
    assert "fragua-tiny-v1" in first and "fragua-tiny-v2" in second

    leaks = [f"console output: {s[:12]}…" for s in secrets.values() if s in first + second]
    leaks += [f"Prefect API: {s[:12]}… in {text[:200]}" for text in asyncio.run(prefect_outputs()) for s in secrets.values() if s in text]
    for folder in (work, home, wandb_dir):
        leaks += files_holding(folder, list(secrets.values()))
    bucket = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=secrets["s3secret"])
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket=s3_settings.bucket)["Contents"]]
    manifests = []
    for key in keys:
        body = bucket.get_object(Bucket=s3_settings.bucket, Key=key)["Body"].read()
        leaks += [f"s3://{s3_settings.bucket}/{key}: {s[:12]}…" for s in secrets.values() if s.encode() in body]
        if key.endswith("/manifest.json"):
            manifests.append(body.decode())
    assert leaks == []

    # The search had something to search: W&B runs with their config, manifests with the settings.
    offline_runs = list((work / "wandb").rglob("offline-run-*"))  # train + validate, then validate (the training is reused)
    assert len(offline_runs) >= 3
    logged = b"".join(p.read_bytes() for run in offline_runs for p in run.glob("*.wandb"))
    assert block.encode() in logged and b"api_key" in logged  # the run config (settings, redacted) was in what we searched
    assert len(manifests) == 2 and all('"secret_access_key": "**********"' in m for m in manifests)
    assert any(f'"api_key_block": "{block}"' in m for m in manifests)  # the lineage holds the settings the run trained with
    assert b"**********" in logged  # the second run's tracking.api_key, masked in its W&B config
