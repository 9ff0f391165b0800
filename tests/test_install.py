"""The project as `pip install .` leaves it: everything under the `fragua` name, every module
importable from anywhere, and the layer contracts of pyproject.toml kept (lint-imports)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "fragua"
ORCHESTRATION = ("flows", "tasks", "blocks")


def source_modules() -> list[str]:
    """Every module of the source tree, by the name it installs under."""
    names = []
    for path in sorted((ROOT / "src" / "fragua").rglob("*.py")):
        names.append(".".join(path.relative_to(ROOT / "src").with_suffix("").parts))
    for folder in ORCHESTRATION:
        names += [f"fragua.{folder}.{path.stem}" for path in sorted((ROOT / folder).glob("*.py"))]
    return [name.removesuffix(".__init__") for name in names if not name.endswith("__main__")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv holding a non-editable install of a copy of the tree; its
    dependencies come from the test environment's site-packages (no download)."""
    base = tmp_path_factory.mktemp("install")
    # A copy, so that the build's own folders (build/, *.egg-info) never land in the repository.
    tree = base / "tree"
    keep = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("src", *ORCHESTRATION):
        shutil.copytree(ROOT / folder, tree / folder, ignore=keep)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # Only the dependencies' folder, as a plain path entry: its .pth files (the editable
    # install of this checkout among them) are not processed there.
    (purelib / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(tree)],
                          capture_output=True, text=True, cwd=base)
    assert done.returncode == 0, done.stdout + done.stderr
    return python


def run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_the_install_holds_only_fragua_and_every_module_imports_from_another_directory(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = (
        "import importlib, json, sys, sysconfig\n"
        "import fragua, fragua.flows.pipeline\n"
        "failed = {}\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed[name] = repr(exc)\n"
        "print(json.dumps({'fragua': fragua.__file__, 'pipeline': fragua.flows.pipeline.__file__,\n"
        "                  'purelib': sysconfig.get_paths()['purelib'], 'failed': failed}))\n"
    )
    done = run(installed, "-c", check, json.dumps(source_modules()), cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    purelib = Path(found["purelib"])
    assert Path(found["fragua"]).is_relative_to(purelib) and Path(found["pipeline"]) == purelib / "fragua" / "flows" / "pipeline.py"
    assert found["failed"] == {}
    assert not [name for name in ORCHESTRATION if (purelib / name).exists()], "generic top-level packages in site-packages"
    assert sorted(p.name for p in purelib.iterdir() if not p.name.endswith((".dist-info", ".pth")) and p.name != "__pycache__") == ["fragua"]
    # the data files ship too: every file under src/fragua that is not Python
    shipped = purelib / "fragua"
    data = [p.relative_to(SRC) for p in SRC.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert data and [path for path in data if not (shipped / path).is_file()] == []


def test_the_layer_contracts_hold(installed):
    # Run from the repository root for pyproject.toml; `fragua` resolves to the installed copy
    # (the root holds no fragua package), where fragua.flows/tasks/blocks are real subpackages.
    done = run(installed, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()", "--no-cache", cwd=ROOT)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
