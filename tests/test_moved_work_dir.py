"""A work directory moved (or mounted) elsewhere keeps working: its versions name their base
model by content, so incremental training, rollback, export and chat find it at the new path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fragua.cli import app
from fragua.registry import open_registry
from fragua.settings import Settings

from .conftest import EXAMPLES

pytestmark = pytest.mark.e2e

QUICK = {
    "FRAGUA_TRACKING__MODE": "disabled",
    "FRAGUA_TRAIN__MAX_STEPS": "2",
    "FRAGUA_VALIDATE__MAX_EXAMPLES": "4",
    "FRAGUA_VALIDATE__MAX_NEW_TOKENS": "8",
    "FRAGUA_VALIDATE__MIN_SCORE": "0",
    "FRAGUA_VALIDATE__REQUIRE_BEAT_BASE": "false",
    "FRAGUA_VALIDATE__REGRESSION_TOLERANCE": "1",
    "FRAGUA_VALIDATE__MAX_DROP_FROM_BEST": "1",
}


@pytest.mark.slow(seconds=40)
def test_autotrain_rollback_export_and_chat_work_after_the_work_directory_moved(prefect_api, tmp_path, monkeypatch):
    env = {**QUICK, "FRAGUA_DATA__SOURCES": json.dumps([{"path": str(EXAMPLES / "batch1")}])}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    old, new = tmp_path / "demo-work", tmp_path / "elsewhere" / "loop"

    first = runner.invoke(app, ["--work-dir", str(old), "run"])
    assert first.exit_code == 0, first.output
    for i in range(3):
        added = runner.invoke(app, ["--work-dir", str(old), "add", f"What is the room code of guest {i}?", f"Room code R-{i * 7}."])
        assert added.exit_code == 0, added.output
    v1 = open_registry(Settings(work_dir=old)).manifest("fragua-tiny-v1")
    assert v1.lineage["base_model"] == str(old / "base" / "fragua-tiny") and v1.lineage["base_model_id"].startswith("sha256:")

    new.parent.mkdir()
    shutil.move(old, new)  # the old path is gone: nothing may still point there
    done = subprocess.run([sys.executable, "-m", "fragua.cli", "--work-dir", str(new), "autotrain", "--force"], check=False,
                          capture_output=True, text=True, timeout=900, env={**os.environ, **env, "COLUMNS": "200"})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "trained: 3 examples, version fragua-tiny-v2, production fragua-tiny-v2" in output, output

    registry = open_registry(Settings(work_dir=new))
    v2 = registry.manifest("fragua-tiny-v2")
    assert v2.lineage["trained_from"] == "fragua-tiny-v1" and v2.lineage["incremental"]["new_examples"] > 0
    assert v2.lineage["base_model"] == str(new / "base" / "fragua-tiny")
    assert v2.lineage["base_model_id"] == v1.lineage["base_model_id"]

    # v1's lineage still names the old path; it loads from the moved base for the smoke check, export and chat.
    rolled = runner.invoke(app, ["--work-dir", str(new), "rollback"])
    assert rolled.exit_code == 0, rolled.output
    assert registry.production().version == "fragua-tiny-v1"
    exported = runner.invoke(app, ["--work-dir", str(new), "export", "fragua-tiny-v1", "--merged", "-o", str(tmp_path / "exports")])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "exports" / "fragua-tiny-v1-merged" / "model.safetensors").is_file()
    chat = runner.invoke(app, ["--work-dir", str(new), "chat", "--greedy", "--max-new-tokens", "4"], input="What time is check-in?\n/exit\n")
    assert chat.exit_code == 0, chat.output
    assert "Chatting with fragua-tiny-v1 (production)" in chat.output
