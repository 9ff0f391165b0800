"""Sharded ingest and expand on a local Ray (prefect-ray RayTaskRunner) give the versions a plain run gives.

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

from fragua.data.ingest import ingest
from fragua.jobs.data import expand_dataset, ingest_sources
from fragua.settings import DataSettings, Settings


pytest.importorskip("prefect_ray")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from ingest import generate  # noqa: E402  (bench/ingest.py: mixed formats, duplicates, bad and broken rows)

ROOT = Path(__file__).resolve().parents[1]
RUN_ON_RAY = """
import json, sys
import ray
from prefect.client.orchestration import get_client
from fragua.flows.expand import expand_flow
from fragua.flows.ingest import ingest_flow
from fragua.settings import Settings

settings = Settings.model_validate_json(sys.argv[1])
manifest = ingest_flow(settings)
expanded = expand_flow(settings, manifest.id)
with get_client(sync_client=True) as client:
    names = [run.name for run in client.read_task_runs(limit=200)]
print(json.dumps({"manifest": json.loads(manifest.model_dump_json()), "expanded": expanded.id, "ray_left_running": ray.is_initialized(),
                  "shard_task_runs": sum(n.startswith("prepare ") for n in names),
                  "expand_task_runs": sum(n.startswith("survey ") or " parents from " in n for n in names)}))
"""


def _loopback_only_namespace() -> list[str] | None:
    """A command prefix running its command in a new network namespace with loopback up, or None."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    probe = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True)
    return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] if probe.returncode == 0 else None


@pytest.mark.slow
def test_ingest_and_expand_flows_on_a_local_ray_give_the_default_runners_ids(tmp_path):
    namespace = _loopback_only_namespace()
    if namespace is None:
        pytest.skip("needs `unshare -rn` (user and network namespaces) to keep the local Ray off the network")
    mixed = tmp_path / "mixed"
    generate(mixed, 2_000, seed=3)  # every bench format; small shards make many tasks of little data
    data = {"sources": [{"path": str(mixed)}], "max_rejected_fraction": 1.0, "batch_size": 1000}
    settings = {"work_dir": str(tmp_path / "ray-work"), "tracking": {"mode": "disabled"}, "data": data, "expand": {"expansion_factor": 2.0},
                "scale": {"task_runner": "ray", "workers": 2, "shard_bytes": 1 << 16, "expand_shard_rows": 250}}
    # Ray's socket paths must stay under 108 bytes, which pytest's tmp_path can exceed.
    ray_dir = tempfile.mkdtemp(prefix="ray-")
    env = {**os.environ, "HOME": str(tmp_path / "home"), "RAY_TMPDIR": ray_dir, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    # The suite's Prefect server is on the host's loopback, which the namespace cannot reach:
    # the flows report to a server of their own, started inside the namespace.
    env.pop("PREFECT_API_URL", None)
    with_server = [sys.executable, "-m", "tests.prefect_server", str(tmp_path / "prefect-server"), "--"]
    try:
        done = subprocess.run([*namespace, *with_server, sys.executable, "-c", RUN_ON_RAY, json.dumps(settings)],
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
    inline = Settings(**{**settings, "work_dir": tmp_path / "inline", "scale": {}})
    assert result["expanded"] == expand_dataset(inline, ingest_sources(inline).id).id
    assert result["expand_task_runs"] > 8, "expand's shards ran as prepare-expand-shard task runs"
