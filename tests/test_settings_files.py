"""A settings file that is not a mapping of sections, or does not parse, is one clear line from the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("list.yaml", "- data\n- train\n", "expected a mapping of sections (data:, train:, ...), got a list"),
        ("scalar.yaml", "just some words\n", "expected a mapping of sections (data:, train:, ...), got a str"),
        ("broken.yaml", "data: [1,\n", "invalid YAML (while parsing a flow node expected the node content"),
        ("broken.toml", "[data]\nbatch_size = \n", "invalid TOML (Invalid value (at line 2, column 14))"),
    ],
    ids=["list", "scalar", "bad-yaml", "bad-toml"],
)
def test_a_settings_file_that_is_not_a_mapping_of_sections_is_one_clear_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    done = subprocess.run(
        [sys.executable, "-m", "fragua.cli", "--settings", str(path), "--work-dir", str(tmp_path / "work"), "versions"],
        capture_output=True, text=True, timeout=300, env=os.environ | {"COLUMNS": "400"},
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, output
    assert output.startswith(f"error: settings file {path}: {message}"), output
    assert len(output.splitlines()) == 1 and "Traceback" not in output
    assert not (tmp_path / "work").exists()
