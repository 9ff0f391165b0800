"""`fragua export`: a verified copy, the adapter merged into its base (safetensors), GGUF via llama.cpp."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fragua.cli import app
from fragua.jobs.registry import export_version, publish_run
from fragua.registry import open_registry
from fragua.settings import Settings

from .conftest import QUICK

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
