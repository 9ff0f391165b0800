"""Registry transfer throughput vs bare boto3, and rollback time, against one S3 server.

Starts moto's S3 server in a subprocess on 127.0.0.1 (so it does not share this process's
GIL), then, on the same bytes and the same server, in the same run:

* upload: ``Registry.publish`` (allocate, sha256, parallel multipart upload, manifest)
  vs ``boto3 upload_file``;
* download: ``Registry.fetch`` (parallel multipart download + sha256 verification of
  every file) vs ``boto3 download_file``;
* rollback: ``Registry.rollback`` between a small version and a 1 GB one (an alias move:
  it must not depend on the size of the version).

Each transfer is timed ``--repeats`` times and the median is reported. A ratio is
baseline time / registry time, so >= 1.0 means the registry is at least as fast.

    .venv/bin/python bench/registry.py                 # 256 MB file, 1 GB rollback version
    .venv/bin/python bench/registry.py --size-mb 64 --big-mb 128   # quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3

from fragua.registry.versions import Registry
from fragua.settings import RegistrySettings
from fragua.storage.s3 import S3Store, transfer_config

ACCESS_KEY, SECRET_KEY, REGION, BUCKET = "bench-key", "bench-secret", "us-east-1", "fragua-bench"
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("moto server did not start")


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        left = size
        while left:
            chunk = min(left, 8 * MB)
            handle.write(os.urandom(chunk))
            left -= chunk


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=256, help="Size of the file moved in the throughput comparison.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs of each transfer (median reported).")
    parser.add_argument("--big-mb", type=int, default=1024, help="Size of the big version in the rollback timing.")
    parser.add_argument("--rollbacks", type=int, default=10, help="Timed rollbacks in each direction.")
    args = parser.parse_args()

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = start_server(port)
    scratch = Path(tempfile.mkdtemp(prefix="fragua-bench-"))
    try:
        settings = RegistrySettings(
            backend="s3", bucket=BUCKET, endpoint_url=endpoint, region=REGION, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY
        )
        client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        client.create_bucket(Bucket=BUCKET)
        registry = Registry(S3Store.from_settings(settings), "bench")

        payload = scratch / "model.safetensors"
        write_random(payload, args.size_mb * MB)
        size = payload.stat().st_size
        same_config = transfer_config(settings)

        bare_up, bare_up_tuned, reg_up, bare_down, bare_down_tuned, reg_down = ([] for _ in range(6))
        target = scratch / "download.bin"
        for attempt in range(args.repeats):
            version = registry.allocate("bench")
            uploads = [
                (bare_up, lambda: client.upload_file(str(payload), BUCKET, "bare/model.safetensors")),
                (bare_up_tuned, lambda: client.upload_file(str(payload), BUCKET, "tuned/model.safetensors", Config=same_config)),
                (reg_up, lambda: registry.publish(version, {"model.safetensors": payload}, {})),
            ]
            downloads = [
                (bare_down, lambda: client.download_file(BUCKET, "bare/model.safetensors", str(target))),
                (bare_down_tuned, lambda: client.download_file(BUCKET, "tuned/model.safetensors", str(target), Config=same_config)),
                (reg_down, lambda: registry.fetch(version, scratch / "cache")),
            ]
            # Rotate the order every run: this machine is shared, so drift hits all three alike.
            for times, action in uploads[attempt % 3:] + uploads[:attempt % 3]:
                times.append(timed(action))
            for times, action in downloads[attempt % 3:] + downloads[:attempt % 3]:
                times.append(timed(action))
                target.unlink(missing_ok=True)
                shutil.rmtree(scratch / "cache", ignore_errors=True)
            # Keep the server's state the same size from run to run.
            leftovers = ["bare/model.safetensors", "tuned/model.safetensors"] + registry.store.list_keys(f"{registry.version_prefix(version)}/")
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": key} for key in leftovers]})

        def rate(seconds: list[float]) -> str:
            return f"{size / MB / statistics.median(seconds):7.1f} MB/s (median {statistics.median(seconds):.2f} s)"

        print(f"S3 server: moto {endpoint} (subprocess); file: {args.size_mb} MB random bytes; {args.repeats} runs each")
        print(f"registry transfer config: {settings.multipart_chunk_mb} MB parts, {settings.max_concurrency} parallel requests, threshold {settings.multipart_threshold_mb} MB")
        print(f"upload    bare boto3 upload_file (defaults)      {rate(bare_up)}")
        print(f"upload    bare boto3 upload_file (same config)   {rate(bare_up_tuned)}")
        print(f"upload    Registry.publish (+sha256, manifest)   {rate(reg_up)}")
        print(f"download  bare boto3 download_file (defaults)    {rate(bare_down)}")
        print(f"download  bare boto3 download_file (same config) {rate(bare_down_tuned)}")
        print(f"download  Registry.fetch (+sha256 verification)  {rate(reg_down)}")
        print(f"ratio upload   registry vs bare defaults:    {statistics.median(bare_up) / statistics.median(reg_up):.2f}x  (goal >= 1.0)")
        print(f"ratio upload   registry vs bare same config: {statistics.median(bare_up_tuned) / statistics.median(reg_up):.2f}x")
        print(f"ratio download registry vs bare defaults:    {statistics.median(bare_down) / statistics.median(reg_down):.2f}x  (goal >= 1.0)")
        print(f"ratio download registry vs bare same config: {statistics.median(bare_down_tuned) / statistics.median(reg_down):.2f}x")

        # Rollback between a small and a big version: only the alias object changes.
        rollback_registry = Registry(S3Store.from_settings(settings), "rollback")
        small_file = scratch / "small.safetensors"
        small_file.write_bytes(os.urandom(1024))
        big_file = scratch / "big.safetensors"
        with big_file.open("wb") as handle:  # sparse: generated on the fly, not kept in memory
            handle.truncate(args.big_mb * MB)
        small = rollback_registry.allocate("small")
        rollback_registry.publish(small, {"model.safetensors": small_file}, {})
        big = rollback_registry.allocate("big")
        big_upload = timed(lambda: rollback_registry.publish(big, {"model.safetensors": big_file}, {}))
        rollback_registry.promote(small, reason="bench")
        rollback_registry.promote(big, reason="bench")
        to_small, to_big = [], []
        for _ in range(args.rollbacks):
            to_small.append(timed(lambda: rollback_registry.rollback()))
            to_big.append(timed(lambda: rollback_registry.rollback()))
        assert rollback_registry.alias("production")[0].version == big
        print(f"big version: {args.big_mb} MB, published in {big_upload:.1f} s")
        print(f"rollback to small version (from {args.big_mb} MB one): median {statistics.median(to_small) * 1000:.1f} ms, max {max(to_small) * 1000:.1f} ms  (goal < 1 s)")
        print(f"rollback to {args.big_mb} MB version (from small one): median {statistics.median(to_big) * 1000:.1f} ms, max {max(to_big) * 1000:.1f} ms  (goal < 1 s)")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
