from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from fragua.ingest import collect
from fragua.settings import DataSettings, TrainSettings
from fragua.training import COMPLETE_MARKER, latest_complete_checkpoint, train

from .conftest import EXAMPLES


@pytest.fixture(scope="module")
def records():
    collected = collect(DataSettings(sources=[{"path": str(EXAMPLES / "batch1")}])).records
    return [r for r in collected if r.split == "train"][:64], [r for r in collected if r.split == "validation"][:16]


def run(tiny_base, records, run_dir, **overrides):
    settings = TrainSettings(**{"max_steps": 6, "save_steps": 2, "batch_size": 8, "logging_steps": 2, "save_total_limit": 5, **overrides})
    train_records, eval_records = records
    events = []
    report = train(
        base_model=str(tiny_base), settings=settings, train_records=train_records, eval_records=eval_records,
        run_dir=run_dir, report_to=[], run_name=run_dir.name, progress=events.append,
    )
    return report, events


def test_lora_weights_change_and_the_adapter_carries_the_chat_template(tiny_base, records, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    report, events = run(tiny_base, records, tmp_path / "run")
    assert report.global_step == 6 and report.resumed_from is None
    assert [e["step"] for e in events] == [2, 4, 6]
    adapter = load_file(str(tmp_path / "run" / "model" / "adapter_model.safetensors"))
    assert any("lora_B" in name for name in adapter)
    # LoRA B starts at zero: any non-zero B proves the adapters trained.
    assert all(tensor.abs().sum() > 0 for name, tensor in adapter.items() if "lora_B" in name)
    set_seed(42)
    fresh = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), LoraConfig(r=64, lora_alpha=128, target_modules="all-linear"))
    fresh_a = {n: p for n, p in fresh.named_parameters() if "lora_A" in n}
    assert fresh_a and any(not torch.equal(adapter[n.replace(".default", "")], p.detach()) for n, p in fresh_a.items())
    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    assert "<|im_start|>" in saved.chat_template
    assert report.base_parameters > 100_000 and report.trained_tokens > 0 and report.eval_loss is not None


def test_resume_skips_a_checkpoint_without_completion_marker(tiny_base, records, tmp_path):
    run_dir = tmp_path / "run"
    complete, _ = run(tiny_base, records, run_dir)
    checkpoints = run_dir / "checkpoints"
    assert latest_complete_checkpoint(checkpoints).name == "checkpoint-6"
    # Simulate a save killed half-way at step 6: no marker, and step 4 is the newest complete one.
    (checkpoints / "checkpoint-6" / COMPLETE_MARKER).unlink()
    (checkpoints / "checkpoint-6" / "optimizer.pt").write_bytes(b"truncated")
    assert latest_complete_checkpoint(checkpoints).name == "checkpoint-4"
    resumed, events = run(tiny_base, records, run_dir)
    assert resumed.resumed_from.endswith("checkpoint-4")
    assert [e["step"] for e in events] == [6]
    assert resumed.global_step == 6
    assert resumed.train_loss == pytest.approx(complete.train_loss, rel=1e-4)
    marker = json.loads((checkpoints / "checkpoint-6" / COMPLETE_MARKER).read_text())
    assert marker["global_step"] == 6


def test_full_fine_tuning_saves_a_whole_model(tiny_base, records, tmp_path):
    report, _ = run(tiny_base, records, tmp_path / "full", method="full", max_steps=2)
    saved = tmp_path / "full" / "model"
    assert (saved / "model.safetensors").is_file() and not (saved / "adapter_config.json").exists()
    assert report.method == "full"
    shutil.rmtree(saved)


def test_qlora_without_bitsandbytes_fails_before_loading(tiny_base, records, tmp_path, monkeypatch):
    import builtins

    from fragua.modeling import ModelLoadError

    real_import = builtins.__import__

    def no_bitsandbytes(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bitsandbytes)
    with pytest.raises(ModelLoadError, match="use train.method 'lora' instead"):
        run(tiny_base, records, tmp_path / "q", method="qlora")
