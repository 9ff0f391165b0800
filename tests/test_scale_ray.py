"""Sharded ingest on a local Ray (prefect-ray RayTaskRunner) gives the version a plain ingest gives.

A local Ray listens on the machine's address, never on loopback alone (Ray replaces
127.0.0.1 by the node's IP). Servers started by tests must be reachable from this machine
only, so the flow runs in a child process inside its own network namespace, where the
loopback interface is the only one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fragua.ingest import ingest
from fragua.settings import DataSettings

from .test_scale import mixed  # noqa: F401  (module fixture: every bench format, 12,000 rows)

pytest.importorskip("prefect_ray")

ROOT = Path(__file__).resolve().parents[1]
RUN_ON_RAY = """
import json, sys
import ray
from prefect.client.orchestration import get_client
from flows.ingest import ingest_flow
from fragua.settings import Settings

manifest = ingest_flow(Settings.model_validate_json(sys.argv[1]))
with get_client(sync_client=True) as client:
    shard_runs = [run for run in client.read_task_runs(limit=200) if run.name.startswith("prepare ")]
print(json.dumps({"manifest": json.loads(manifest.model_dump_json()), "ray_left_running": ray.is_initialized(),
                  "shard_task_runs": len(shard_runs)}))
"""


def _loopback_only_namespace() -> list[str] | None:
    """A command prefix running its command in a new network namespace with loopback up, or None."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    probe = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True)
    return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] if probe.returncode == 0 else None


def test_ingest_flow_on_a_local_ray_gives_the_default_runners_id(mixed, tmp_path):  # noqa: F811
    namespace = _loopback_only_namespace()
    if namespace is None:
        pytest.skip("needs `unshare -rn` (user and network namespaces) to keep the local Ray off the network")
    data = {"sources": [{"path": str(mixed)}], "max_rejected_fraction": 1.0, "batch_size": 1000}
    settings = {"work_dir": str(tmp_path / "ray-work"), "tracking": {"mode": "disabled"}, "data": data,
                "scale": {"task_runner": "ray", "workers": 2, "shard_bytes": 1 << 18}}
    # Ray's socket paths must stay under 108 bytes, which pytest's tmp_path can exceed.
    ray_dir = tempfile.mkdtemp(prefix="ray-")
    env = {**os.environ, "HOME": str(tmp_path / "home"), "RAY_TMPDIR": ray_dir, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    try:
        done = subprocess.run([*namespace, sys.executable, "-c", RUN_ON_RAY, json.dumps(settings)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    on_ray = result["manifest"]
    plain = ingest(DataSettings(**data), tmp_path / "plain")
    assert on_ray["id"] == plain.id
    expected = json.loads(plain.model_dump_json(include={"counts", "duplicates", "quarantined", "domains"}))
    assert {key: on_ray[key] for key in expected} == expected
    assert not result["ray_left_running"], "the task runner shuts down the Ray it started"
    assert result["shard_task_runs"] > 3, "the shards ran as prepare-shard task runs"
