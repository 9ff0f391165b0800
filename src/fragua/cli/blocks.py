"""The `blocks` group: save Fragua's credentials and connections as Prefect blocks, register the block types."""

from __future__ import annotations

import os
from typing import Optional

import typer

from fragua.cli.common import console, run_flow

blocks_app = typer.Typer(help="Prefect blocks holding Fragua's credentials.", no_args_is_help=True)


@blocks_app.command("save-wandb-key")
def save_wandb_key_command(
    name: str = typer.Option("fragua-wandb-api-key", help="Block name; set tracking.api_key_block to it."),
) -> None:
    """Store the W&B API key (from WANDB_API_KEY, or typed at a hidden prompt) as a Prefect Secret block."""
    from fragua.blocks import save_wandb_key

    api_key = os.environ.get("WANDB_API_KEY") or typer.prompt("W&B API key", hide_input=True)
    saved = run_flow(lambda: save_wandb_key(api_key, name))
    console.print(f"saved Secret block {saved!r}; use it with FRAGUA_TRACKING__API_KEY_BLOCK={saved}", highlight=False)


@blocks_app.command("save-s3-credentials")
def save_s3_credentials_command(
    name: str = typer.Option("fragua-registry", help="Block name."),
    kind: str = typer.Option("aws", help="'aws' (AwsCredentials: AWS, R2, most services) or 'minio' (MinIOCredentials)."),
    region: Optional[str] = typer.Option(None, help="Region stored in the block (R2: auto, MinIO: us-east-1)."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="S3 endpoint stored in the block, for MinIO, R2, etc."),
) -> None:
    """Store S3 credentials (from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or typed at a prompt) as a prefect-aws block."""
    from fragua.blocks import save_s3_credentials

    key_id = os.environ.get("AWS_ACCESS_KEY_ID") or typer.prompt("S3 access key id")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or typer.prompt("S3 secret access key", hide_input=True)
    slug = run_flow(lambda: save_s3_credentials(key_id, secret, name, kind=kind, region=region, endpoint_url=endpoint_url))
    console.print(f"saved {slug}; use it with FRAGUA_REGISTRY__CREDENTIALS_BLOCK={slug}", highlight=False)


@blocks_app.command("register")
def blocks_register() -> None:
    """Register the block types Fragua uses (prefect-aws S3/credentials, Secret, webhook) with the Prefect API."""
    from fragua.blocks import register_block_types

    names = run_flow(register_block_types)
    console.print(f"registered block types: {', '.join(names)}", highlight=False)


@blocks_app.command("save-webhook")
def save_webhook_command(
    url: str = typer.Argument(..., help="Where notifications are POSTed (JSON {subject, body, name})."),
    name: str = typer.Option("fragua-alerts", help="Block name."),
) -> None:
    """Store a webhook as a Prefect custom-webhook notification block for deploy, rollback and failure messages."""
    from fragua.blocks import save_webhook

    slug = run_flow(lambda: save_webhook(url, name))
    console.print(f"saved {slug}; use it with FRAGUA_NOTIFICATIONS__BLOCK={slug}", highlight=False)


@blocks_app.command("save-storage")
def save_storage_command(
    bucket: str = typer.Argument(..., help="S3 bucket of the registry."),
    credentials_block: str = typer.Option(..., "--credentials-block", help="'aws-credentials/NAME' or 'minio-credentials/NAME' (see save-s3-credentials)."),
    prefix: str = typer.Option("", help="Key prefix inside the bucket (the block's bucket_folder)."),
    name: str = typer.Option("fragua-registry", help="Block name."),
) -> None:
    """Store the registry's storage connection as a prefect-aws S3Bucket block (bucket, folder, credentials)."""
    from fragua.blocks import save_storage

    slug = run_flow(lambda: save_storage(bucket, credentials_block, name, prefix=prefix))
    console.print(f"saved {slug}; use it with FRAGUA_REGISTRY__BACKEND=s3 FRAGUA_REGISTRY__STORAGE_BLOCK={slug}", highlight=False)
