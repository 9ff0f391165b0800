"""Loading models runs no code from the model folder: safetensors only, remote code off by default."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from fragua.models.loading import ModelLoadError, load_causal_lm, load_for_inference
from fragua.settings import Settings, TrainSettings


def test_remote_code_is_off_by_default():
    assert Settings().train.trust_remote_code is False


def test_a_pickle_checkpoint_is_refused(tiny_base, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_base, folder)
    weights = folder / "model.safetensors"
    torch.save(load_file(weights), folder / "pytorch_model.bin")  # the same weights, as a pickle
    weights.unlink()
    with pytest.raises(ModelLoadError, match="safetensors weights only"):
        load_causal_lm(str(folder), TrainSettings())


def test_an_adapter_saved_as_a_pickle_is_refused(validated_work, tmp_path):
    work, run_id = validated_work
    adapter = tmp_path / "adapter"
    shutil.copytree(work / "runs" / run_id / "model", adapter)
    weights = adapter / "adapter_model.safetensors"
    torch.save(load_file(weights), adapter / "adapter_model.bin")
    weights.unlink()
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_for_inference(adapter, TrainSettings())


def test_custom_code_in_a_model_folder_is_not_run(tiny_base, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_base, folder)
    ran = tmp_path / "the-code-ran"
    (folder / "evil_model.py").write_text(f"open({str(ran)!r}, 'w').write('yes')\nfrom transformers import LlamaForCausalLM as EvilModel\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil_model.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    try:
        load_causal_lm(str(folder), TrainSettings())
    except (ValueError, OSError, ModelLoadError):
        pass  # refusing is fine; running the file is not
    assert not ran.exists()
