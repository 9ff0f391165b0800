"""Prefect blocks Fragua uses: connection details and credentials only, never hyperparameters.

The W&B API key lives in a Prefect ``Secret`` block; ``tracking.api_key_block`` names it,
so flows started from deployments get the key without it appearing in parameters or env.
S3 credentials for the registry live in a prefect-aws ``AwsCredentials`` or
``MinIOCredentials`` block, named by ``registry.credentials_block``; or the whole storage
connection (bucket, folder, credentials) in an ``S3Bucket`` block, named by
``registry.storage_block``. Notifications go through a ``custom-webhook`` block (or any
Prefect notification block), named by ``notifications.block``.

Every block class imported here is registered by ``fragua blocks register`` and by
``prefect block register -m blocks``.
"""

from __future__ import annotations

from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.blocks.system import Secret
from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket

BLOCK_TYPES = (AwsCredentials, MinIOCredentials, S3Bucket, Secret, CustomWebhookNotificationBlock)

DEFAULT_WANDB_KEY_BLOCK = "fragua-wandb-api-key"
DEFAULT_S3_CREDENTIALS_BLOCK = "fragua-registry"


def save_wandb_key(api_key: str, name: str = DEFAULT_WANDB_KEY_BLOCK) -> str:
    """Store (or replace) the W&B API key as a Secret block; returns the block name."""
    if not api_key.strip():
        raise ValueError("the W&B API key is empty")
    Secret(value=api_key).save(name, overwrite=True)
    return name


def save_s3_credentials(
    access_key_id: str,
    secret_access_key: str,
    name: str = DEFAULT_S3_CREDENTIALS_BLOCK,
    *,
    kind: str = "aws",
    region: str | None = None,
    endpoint_url: str | None = None,
) -> str:
    """Store S3 credentials (and the endpoint, for MinIO/R2) as a prefect-aws block.

    Returns what ``registry.credentials_block`` takes: 'aws-credentials/NAME' or 'minio-credentials/NAME'."""
    from prefect_aws import AwsClientParameters, AwsCredentials, MinIOCredentials

    if not access_key_id.strip() or not secret_access_key.strip():
        raise ValueError("the S3 access key id and secret key must not be empty")
    parameters = AwsClientParameters(endpoint_url=endpoint_url)
    if kind == "aws":
        block = AwsCredentials(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, region_name=region, aws_client_parameters=parameters
        )
        slug = "aws-credentials"
    elif kind == "minio":
        block = MinIOCredentials(
            minio_root_user=access_key_id, minio_root_password=secret_access_key, region_name=region, aws_client_parameters=parameters
        )
        slug = "minio-credentials"
    else:
        raise ValueError(f"unknown credentials kind {kind!r}: use 'aws' or 'minio'")
    block.save(name, overwrite=True)
    return f"{slug}/{name}"


DEFAULT_WEBHOOK_BLOCK = "fragua-alerts"
DEFAULT_STORAGE_BLOCK = "fragua-registry"


def register_block_types() -> list[str]:
    """Register every block type Fragua uses with the Prefect API; returns their slugs."""
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema()
    return [block_type.get_block_type_slug() for block_type in BLOCK_TYPES]


def save_webhook(url: str, name: str = DEFAULT_WEBHOOK_BLOCK) -> str:
    """A custom-webhook block that POSTs {subject, body, name} as JSON; returns what notifications.block takes."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"webhook URL {url!r} must start with http:// or https://")
    CustomWebhookNotificationBlock(
        name=name, url=url, method="POST", json_data={"subject": "{{subject}}", "body": "{{body}}", "name": "{{name}}"},
    ).save(name, overwrite=True)
    return f"{CustomWebhookNotificationBlock.get_block_type_slug()}/{name}"


def save_storage(bucket: str, credentials_block: str, name: str = DEFAULT_STORAGE_BLOCK, *, prefix: str = "") -> str:
    """An S3Bucket block (bucket, folder, and the credentials block it contains); returns what registry.storage_block takes."""
    from fragua.storage.s3 import load_credentials_block

    credentials = load_credentials_block(credentials_block)
    S3Bucket(bucket_name=bucket, bucket_folder=prefix.strip("/"), credentials=credentials).save(name, overwrite=True)
    return f"{S3Bucket.get_block_type_slug()}/{name}"
