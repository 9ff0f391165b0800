"""The S3 backend of the object store: AWS S3, MinIO, Cloudflare R2 or any S3-compatible server.

Conditional writes are S3's own: ``If-None-Match: *`` for create-only objects (version
allocations, manifests, events) and ``If-Match: <ETag>`` for compare-and-swap (aliases).
Version files move through one boto3 transfer manager per call, so big files go in
parts and all files of a version share one pool of ``registry.max_concurrency`` requests.
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.subscribers import BaseSubscriber

from fragua.integrations.prefect_blocks import load_block
from fragua.settings import RegistrySettings
from fragua.storage.store import READ_CHUNK, Fingerprint, NotFound, ObjectStore, PreconditionFailed, Progress, StoreConfigurationError, StoreError, check_key

MB = 1024 * 1024
# Codes that no retry can fix: the message tells the user what to change instead.
_CONFIGURATION_CODES = {
    "NoSuchBucket": "the bucket does not exist; create it or fix registry.bucket",
    "AccessDenied": "access denied; check the credentials and the bucket policy",
    "InvalidAccessKeyId": "the access key id is not known to this endpoint; check the credentials and registry.endpoint_url",
    "SignatureDoesNotMatch": "the secret key does not match the access key id",
    "PermanentRedirect": "the bucket is in another region; set registry.region",
    "AuthorizationHeaderMalformed": "the region in the request is wrong for this bucket; set registry.region",
    "InvalidBucketName": "the bucket name is not valid for this endpoint",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
# 409 ConditionalRequestConflict: S3's answer when two conditional writes to one key overlap.
_PRECONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class _ProgressSubscriber(BaseSubscriber):
    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        self._progress(bytes_transferred)


class S3Store(ObjectStore):
    """Objects in ``bucket`` under ``prefix``; every key is checked like the local backend's."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, transfer: TransferConfig | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.transfer = transfer or TransferConfig()

    @classmethod
    def from_settings(cls, settings: RegistrySettings) -> S3Store:
        if settings.storage_block is not None:
            block = load_storage_block(settings.storage_block)
            credentials = block.credentials
            endpoint = settings.endpoint_url or credentials.aws_client_parameters.endpoint_url
            client = _client(settings, credentials.get_boto3_session(), endpoint)
            return cls(client, block.bucket_name, block.bucket_folder or "", transfer=transfer_config(settings))
        if settings.bucket is None:
            raise StoreConfigurationError("registry.backend 's3' needs registry.bucket")
        return cls(s3_client(settings), settings.bucket, settings.prefix, transfer=transfer_config(settings))

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1:] if self.prefix else full_key

    def _error(self, exc: Exception, key: str, action: str) -> StoreError:
        where = f"{action} {key} in {self.describe()}"
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _PRECONDITION_CODES or status == 412:
                return PreconditionFailed(f"{where}: the object exists or changed ({code})")
            if code in _CONFIGURATION_CODES:
                return StoreConfigurationError(f"{where}: {_CONFIGURATION_CODES[code]} ({code})")
            if code in _NOT_FOUND_CODES or status == 404:
                return NotFound(f"{key} not found in {self.describe()}")
            return StoreError(f"{where} failed: {code or status} {exc.response.get('Error', {}).get('Message', '')}".rstrip())
        if isinstance(exc, BotoCoreError):
            return StoreError(f"{where} failed: {exc}")
        return StoreError(f"{where} failed: {exc!r}")

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if if_none_match:
            arguments["IfNoneMatch"] = "*"
        if if_match is not None:
            arguments["IfMatch"] = if_match
        try:
            return self.client.put_object(**arguments)["ETag"]
        except (ClientError, BotoCoreError) as exc:
            error = self._error(exc, key, "writing")
            if isinstance(error, NotFound) and if_match is not None:
                # If-Match on a key that is gone: the compare part of compare-and-swap failed.
                raise PreconditionFailed(f"{key} was deleted in {self.describe()} (expected ETag {if_match})") from exc
            raise error from exc

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read(), response["ETag"]
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key, "reading") from exc

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key, "checking") from exc

    def fingerprint(self, key: str) -> Fingerprint:
        """The ETag changes with the content (and LastModified with every write); both come from one HEAD."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key, "checking") from exc
        return Fingerprint(size=int(head["ContentLength"]), identity=f"{head['ETag']}:{head['LastModified'].isoformat()}")

    def read_chunks(self, key: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            with body:
                yield from body.iter_chunks(READ_CHUNK)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key, "reading") from exc

    def put_file(self, key: str, path: Path, progress: Progress | None = None) -> None:
        self.put_files([(key, path)], progress)

    def get_file(self, key: str, destination: Path, progress: Progress | None = None) -> None:
        self.get_files([(key, destination)], progress)

    def put_files(self, pairs: list[tuple[str, Path]], progress: Progress | None = None) -> None:
        subscribers = [_ProgressSubscriber(progress)] if progress else None
        self._transfer(
            "uploading",
            [(key, lambda manager, key=key, path=path: manager.upload(str(path), self.bucket, self._key(key), subscribers=subscribers)) for key, path in pairs],
        )

    def get_files(self, pairs: list[tuple[str, Path]], progress: Progress | None = None) -> None:
        subscribers = [_ProgressSubscriber(progress)] if progress else None
        for _, destination in pairs:
            destination.parent.mkdir(parents=True, exist_ok=True)
        self._transfer(
            "downloading",
            [(key, lambda manager, key=key, dest=destination: manager.download(self.bucket, self._key(key), str(dest), subscribers=subscribers)) for key, destination in pairs],
        )

    def _transfer(self, action: str, submissions: list[tuple[str, Any]]) -> None:
        """Submit every transfer to one manager; the first failure cancels the rest."""
        with create_transfer_manager(self.client, self.transfer) as manager:
            futures = [(key, submit(manager)) for key, submit in submissions]
            for key, future in futures:
                try:
                    future.result()
                except (ClientError, BotoCoreError) as exc:
                    raise self._error(exc, key, action) from exc

    def list_keys(self, prefix: str) -> list[str]:
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(self._relative(item["Key"]) for item in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, prefix, "listing") from exc
        return sorted(keys)

    def list_children(self, prefix: str) -> list[str]:
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        children: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full, Delimiter="/"):
                children.extend(item["Prefix"][len(full):].rstrip("/") for item in page.get("CommonPrefixes", []))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, prefix, "listing") from exc
        return sorted(children)

    def delete(self, key: str) -> None:
        self.delete_many([key])

    def delete_many(self, keys: list[str]) -> None:
        # DeleteObjects takes at most 1000 keys per request.
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True}
                )
            except (ClientError, BotoCoreError) as exc:
                raise self._error(exc, batch[0], "deleting") from exc
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise StoreError(f"deleting {len(errors)} objects in {self.describe()} failed, first {first.get('Key')}: {first.get('Code')} {first.get('Message', '')}")

    def delete_if_match(self, key: str, etag: str | None) -> None:
        if etag is None:
            raise PreconditionFailed(f"{key} in {self.describe()}: nothing to compare with")
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key), IfMatch=etag)
        except (ClientError, BotoCoreError) as exc:
            error = self._error(exc, key, "deleting")
            raise (PreconditionFailed(f"{key} was already deleted in {self.describe()}") if isinstance(error, NotFound) else error) from exc

    def abort_unfinished_uploads(self, prefix: str, *, older_than: datetime) -> int:
        """Abort multipart uploads under ``prefix`` begun before ``older_than``: what a killed
        process leaves behind (S3 keeps, and bills, their parts until they are aborted)."""
        full = self._key(prefix)
        aborted = 0
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=full):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] > older_than:
                        continue
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted += 1
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, prefix, "aborting uploads under") from exc
        return aborted


def transfer_config(settings: RegistrySettings) -> TransferConfig:
    return TransferConfig(
        multipart_threshold=settings.multipart_threshold_mb * MB,
        multipart_chunksize=settings.multipart_chunk_mb * MB,
        max_concurrency=settings.max_concurrency,
        use_threads=True,
    )


def load_credentials_block(slug: str) -> Any:
    """A prefect-aws ``AwsCredentials`` or ``MinIOCredentials`` block, by 'type/name'."""
    return load_block(
        slug, setting="registry.credentials_block", kind="credentials", how_to_create="`fragua blocks save-s3-credentials`",
        types_module="prefect_aws", error=StoreConfigurationError,
    )


def _session_and_endpoint(settings: RegistrySettings) -> tuple[boto3.Session, str | None]:
    if settings.credentials_block is not None:
        block = load_credentials_block(settings.credentials_block)
        session = block.get_boto3_session()
        endpoint = settings.endpoint_url or block.aws_client_parameters.endpoint_url
        return session, endpoint
    if settings.access_key_id is not None and settings.secret_access_key is not None:
        session = boto3.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key.get_secret_value(),
            aws_session_token=settings.session_token.get_secret_value() if settings.session_token else None,
            region_name=settings.region,
        )
        return session, settings.endpoint_url
    # The standard AWS chain: AWS_ACCESS_KEY_ID/..., AWS_PROFILE, ~/.aws, an instance role;
    # boto3 itself also honours AWS_ENDPOINT_URL_S3 when endpoint_url is None.
    return boto3.Session(region_name=settings.region), settings.endpoint_url


def load_storage_block(slug: str) -> Any:
    """A prefect-aws ``S3Bucket`` block (bucket, folder and its credentials block), by 's3-bucket/name'."""
    return load_block(
        slug, setting="registry.storage_block", kind="storage", how_to_create="`fragua blocks save-storage`",
        types_module="prefect_aws", error=StoreConfigurationError,
    )


def s3_client(settings: RegistrySettings) -> Any:
    session, endpoint = _session_and_endpoint(settings)
    return _client(settings, session, endpoint)


def _client(settings: RegistrySettings, session: boto3.Session, endpoint: str | None) -> Any:
    config = Config(
        retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
        s3={"addressing_style": settings.addressing_style},
        # Enough connections for every part and file of one transfer at once.
        max_pool_connections=max(10, settings.max_concurrency + 2),
        connect_timeout=10,
        read_timeout=60,
    )
    region = settings.region or session.region_name or "us-east-1"
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=config)


_STORES: dict[tuple[str, tuple[str | None, ...]], S3Store] = {}
_STORES_LOCK = threading.Lock()
_STORES_KEPT = 16


def open_s3_store(settings: RegistrySettings) -> S3Store:
    """One store (client, connection pool, loaded credentials block) per distinct configuration."""
    secrets = tuple(s.get_secret_value() if s else None for s in (settings.secret_access_key, settings.session_token))
    key = (settings.model_dump_json(), secrets)
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = S3Store.from_settings(settings)
            if len(_STORES) >= _STORES_KEPT:
                _STORES.pop(next(iter(_STORES)))
            _STORES[key] = store
    return store
