"""`fragua export`: a verified copy, the adapter merged into its base (safetensors), GGUF via llama.cpp."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fragua.cli import app
from fragua.jobs.registry import export_version, publish_run
from fragua.registry import open_registry
from fragua.settings import Settings

from .conftest import QUICK
from .test_cli import fragua_process

pytestmark = pytest.mark.e2e

runner = CliRunner()


@pytest.fixture
def published(validated_work, tmp_path) -> tuple[Settings, str]:
    template, run_id = validated_work
    work = tmp_path / "work"
    shutil.copytree(template, work)
    settings = Settings(work_dir=work, **QUICK)
    return settings, publish_run(settings, run_id).version


def test_the_model_card_covers_what_a_user_needs(published):
    settings, version = published
    card = (open_registry(settings).fetch(version) / "README.md").read_text()
    for section in ("## Data", "## Metrics on the validation split", "## Intended use", "## How to load", "## Validation report"):
        assert section in card
    assert "fine-tune of `" in card and "dataset version" in card and f"fragua export {version} --merged" in card


def test_merged_export_loads_without_peft_and_matches_the_adapter(published, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from fragua.models.loading import load_for_inference

    settings, version = published
    result = runner.invoke(app, ["--work-dir", str(settings.work_dir), "--set", "tracking.mode=disabled", "export", version, "--merged", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    merged = tmp_path / "out" / f"{version}-merged"
    files = {p.name for p in merged.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "manifest.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files) and "adapter_config.json" not in files

    standalone = AutoModelForCausalLM.from_pretrained(merged, use_safetensors=True, trust_remote_code=False).eval()
    adapter = load_for_inference(open_registry(settings).fetch(version), settings.train).model
    tokens = torch.tensor([[5, 17, 99, 230, 41]])
    with torch.no_grad():
        assert torch.allclose(standalone(tokens).logits, adapter(tokens).logits, atol=1e-4)


def test_plain_export_is_a_verified_copy(published, tmp_path):
    settings, version = published
    outcome = export_version(settings, version, tmp_path / "out", merged=False)
    assert (Path(outcome.folder) / "adapter_model.safetensors").is_file() and not outcome.merged


def test_gguf_without_a_converter_names_what_to_install(published, tmp_path, monkeypatch):
    settings, version = published
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    result = runner.invoke(app, ["--work-dir", str(settings.work_dir), "export", version, "--gguf", "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "convert_hf_to_gguf.py" in result.output and "llama.cpp" in result.output and "requirements-convert_hf_to_gguf.txt" in result.output
    assert (tmp_path / "out" / f"{version}-merged" / "model.safetensors").is_file()  # the merged model is written anyway


def test_gguf_runs_the_converter_and_reports_its_failure(published, tmp_path):
    from fragua.registry.export import ExportError

    settings, version = published
    working = tmp_path / "convert_hf_to_gguf.py"
    # Stands in for llama.cpp's script: checks the arguments Fragua passes and writes the file.
    working.write_text(
        "import sys, pathlib\n"
        "folder, flag, outfile, typeflag, outtype = sys.argv[1:]\n"
        "assert flag == '--outfile' and typeflag == '--outtype' and outtype == 'q8_0'\n"
        "assert (pathlib.Path(folder) / 'model.safetensors').is_file()\n"
        "pathlib.Path(outfile).write_bytes(b'GGUF')\n"
    )
    outcome = export_version(settings, version, tmp_path / "out", merged=True, gguf=True, converter=working, gguf_type="q8_0")
    assert Path(outcome.gguf).read_bytes() == b"GGUF" and outcome.gguf.endswith(f"{version}.gguf")
    broken = tmp_path / "broken.py"
    broken.write_text("import sys\nprint('BPE pre-tokenizer was not recognized', file=sys.stderr)\nsys.exit(3)\n")
    with pytest.raises(ExportError, match=r"(?s)exit 3.*BPE pre-tokenizer was not recognized.*llama.cpp does not know this tokenizer"):
        export_version(settings, version, tmp_path / "out2", merged=True, gguf=True, converter=broken)
    assert not list((tmp_path / "out2").glob("*.gguf"))


# Destinations: nothing the user put there is ever deleted ------------------------------------------------------


def export_process(settings: Settings, version: str, *args: str) -> tuple[int, str]:
    """`fragua export` as a user runs it: its own process, what the terminal shows."""
    return fragua_process("--work-dir", str(settings.work_dir), "--set", "tracking.mode=disabled", "export", version, *args, env=dict(os.environ))


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_export_never_deletes_the_users_files_and_overwrite_replaces_only_its_own(published, tmp_path):
    settings, version = published
    mine = tmp_path / "mine"
    for folder in (mine / version, mine / f"{version}-merged"):
        folder.mkdir(parents=True)
        (folder / "notes.txt").write_text("my notes")
        (folder / "config.json").write_text("{\"mine\": true}")
    for extra in ([], ["--merged"]):
        code, output = export_process(settings, version, "-o", str(mine), *extra)
        assert code == 1 and "Traceback" not in output, output
        [line] = error_lines(output)
        assert str(mine / (f"{version}-merged" if extra else version)) in line and "pass --overwrite to replace a previous Fragua export" in line
        # --overwrite replaces only a folder Fragua exported (it has the marker): this one has none
        code, output = export_process(settings, version, "-o", str(mine), "--overwrite", *extra)
        assert code == 1 and "Traceback" not in output, output
        [line] = error_lines(output)
        assert "is not a Fragua export" in line and "fragua-export.json" in line
    for folder in (mine / version, mine / f"{version}-merged"):
        assert {p.name for p in folder.iterdir()} == {"notes.txt", "config.json"} and (folder / "config.json").read_text() == "{\"mine\": true}"
    assert [p.name for p in mine.iterdir() if p.name.startswith(".")] == []  # no staging folder left behind

    exports = tmp_path / "exports"
    code, output = export_process(settings, version, "-o", str(exports))
    assert code == 0, output
    first = exports / version
    marker = json.loads((first / "fragua-export.json").read_text())
    assert marker["version"] == version and marker["kind"] == "copy"
    assert set(marker["files"]) == {str(p.relative_to(first)) for p in first.rglob("*") if p.is_file()} - {"fragua-export.json"}
    assert "adapter_model.safetensors" in marker["files"]
    (first / "Modelfile").write_text("FROM .")  # the user's file next to the export
    (first / "adapter_model.safetensors").write_bytes(b"damaged")  # a file the export wrote

    code, output = export_process(settings, version, "-o", str(exports))
    assert code == 1 and "Traceback" not in output and "pass --overwrite" in output, output
    assert (first / "adapter_model.safetensors").read_bytes() == b"damaged"

    code, output = export_process(settings, version, "-o", str(exports), "--overwrite")
    assert code == 0, output
    assert (first / "Modelfile").read_text() == "FROM ."
    assert (first / "adapter_model.safetensors").read_bytes() == (open_registry(settings).fetch(version) / "adapter_model.safetensors").read_bytes()
    assert "Modelfile" not in json.loads((first / "fragua-export.json").read_text())["files"]
    assert sorted(p.name for p in exports.iterdir()) == [version]  # no staging or previous folder left behind


def test_overwriting_a_merged_export_keeps_the_users_files(published, tmp_path):
    settings, version = published
    exports = tmp_path / "exports"
    assert export_process(settings, version, "-o", str(exports), "--merged")[0] == 0
    merged = exports / f"{version}-merged"
    (merged / "Modelfile").write_text("FROM .")
    (merged / "eval").mkdir()
    (merged / "eval" / "my-results.csv").write_text("a,b\n")
    code, output = export_process(settings, version, "-o", str(exports), "--merged", "--overwrite")
    assert code == 0, output
    assert (merged / "Modelfile").read_text() == "FROM ." and (merged / "eval" / "my-results.csv").read_text() == "a,b\n"
    assert (merged / "model.safetensors").is_file() and json.loads((merged / "fragua-export.json").read_text())["kind"] == "merged"


def test_a_users_file_named_like_an_export_file_stops_the_overwrite(published, tmp_path):
    settings, version = published
    exports = tmp_path / "exports"
    export_version(settings, version, exports, merged=False)
    folder = exports / version
    marker = json.loads((folder / "fragua-export.json").read_text())
    (folder / "fragua-export.json").write_text(json.dumps({**marker, "files": [f for f in marker["files"] if f != "README.md"]}))
    (folder / "README.md").write_text("my own readme")  # not listed: the user's, though the new export writes one
    from fragua.registry.export import ExportError

    with pytest.raises(ExportError, match="README.md"):
        export_version(settings, version, exports, merged=False, overwrite=True)
    assert (folder / "README.md").read_text() == "my own readme"
    assert sorted(p.name for p in exports.iterdir()) == [version]


def test_output_naming_a_file_is_one_clear_line(published, tmp_path):
    settings, version = published
    taken = tmp_path / "model.bin"
    taken.write_bytes(b"user data")
    for output in (taken, taken / "below"):
        code, text = export_process(settings, version, "-o", str(output))
        assert code == 1 and "Traceback" not in text and "NotADirectoryError" not in text, text
        [line] = error_lines(text)
        assert str(taken) in line
    assert taken.read_bytes() == b"user data"


def test_gguf_refuses_a_file_it_did_not_write_even_with_overwrite(published, tmp_path):
    from fragua.registry.export import ExportError

    settings, version = published
    converter = tmp_path / "convert_hf_to_gguf.py"
    converter.write_text("import sys, pathlib\npathlib.Path(sys.argv[3]).write_bytes(b'GGUF')\n")
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / f"{version}.gguf").write_bytes(b"my own gguf")
    for overwrite in (False, True):
        with pytest.raises(ExportError, match=f"{version}.gguf"):
            export_version(settings, version, exports, merged=True, gguf=True, converter=converter, overwrite=overwrite)
    assert (exports / f"{version}.gguf").read_bytes() == b"my own gguf" and not (exports / f"{version}-merged").exists()
    (exports / f"{version}.gguf").unlink()
    export_version(settings, version, exports, merged=True, gguf=True, converter=converter)
    (exports / f"{version}.gguf").write_bytes(b"old")
    outcome = export_version(settings, version, exports, merged=True, gguf=True, converter=converter, overwrite=True)  # its own: replaced
    assert Path(outcome.gguf).read_bytes() == b"GGUF"
