"""accelerate launch configs (DDP, FSDP, DeepSpeed ZeRO) from settings; DDP and FSDP with two CPU processes through accelerate."""

from __future__ import annotations

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DistributedType
from pydantic import ValidationError
from safetensors.torch import load_file

from fragua.jobs.data import ingest_sources
from fragua.jobs.train import train_model
from fragua.settings import TrainSettings
from fragua.train.accelerate import accelerate_config, write_accelerate_config

from .conftest import EXAMPLES, make_settings


@pytest.mark.parametrize(
    ("accelerate", "gpus", "distributed_type"),
    [
        ({"strategy": "ddp"}, False, DistributedType.MULTI_GPU),
        ({"strategy": "ddp"}, True, DistributedType.MULTI_GPU),
        ({"strategy": "fsdp", "fsdp_sharding": "SHARD_GRAD_OP", "offload": "cpu"}, True, DistributedType.FSDP),
        ({"strategy": "deepspeed", "zero_stage": 3, "offload": "cpu"}, True, DistributedType.DEEPSPEED),
        ({"strategy": "deepspeed", "zero_stage": 2, "num_machines": 2, "machine_rank": 1, "main_process_ip": "10.0.0.1"}, True, DistributedType.DEEPSPEED),
    ],
)
def test_generated_configs_load_as_accelerate_configs(tmp_path, accelerate, gpus, distributed_type):
    settings = TrainSettings(num_processes=4, precision="bf16", gradient_accumulation_steps=2, accelerate=accelerate)
    path = write_accelerate_config(settings, tmp_path / "config.yaml", gpus=gpus)
    # accelerate's own loader rejects unknown keys and values, as `accelerate launch` would.
    loaded = ClusterConfig.from_yaml_file(str(path))
    assert loaded.distributed_type == distributed_type
    assert loaded.num_processes == 4 * settings.accelerate.num_machines
    assert loaded.use_cpu is (not gpus) and loaded.mixed_precision == ("bf16" if gpus else "no")
    if distributed_type == DistributedType.DEEPSPEED:
        assert loaded.deepspeed_config["zero_stage"] == settings.accelerate.zero_stage
        assert loaded.deepspeed_config["gradient_accumulation_steps"] == 2
        assert loaded.deepspeed_config["offload_param_device"] == ("cpu" if accelerate.get("zero_stage") == 3 else "none")
    if distributed_type == DistributedType.FSDP:
        assert loaded.fsdp_config["fsdp_sharding_strategy"] == "SHARD_GRAD_OP" and loaded.fsdp_config["fsdp_offload_params"] is True
    if settings.accelerate.num_machines > 1:
        assert loaded.machine_rank == 1 and loaded.main_process_ip == "10.0.0.1"


def test_multi_machine_needs_the_main_address_and_an_accelerate_strategy():
    with pytest.raises(ValidationError, match="main_process_ip"):
        TrainSettings(accelerate={"strategy": "ddp", "num_machines": 2})
    with pytest.raises(ValidationError, match="strategy"):
        TrainSettings(accelerate={"num_machines": 2, "main_process_ip": "10.0.0.1"})
    with pytest.raises(ValidationError, match="machine_rank"):
        TrainSettings(accelerate={"strategy": "ddp", "num_machines": 2, "machine_rank": 2, "main_process_ip": "10.0.0.1"})


def test_precision_auto_leaves_mixed_precision_to_the_trainer():
    assert accelerate_config(TrainSettings(accelerate={"strategy": "ddp"}), gpus=True)["mixed_precision"] == "no"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_cpu_processes_through_accelerate_launch_train(tmp_path, strategy):
    train = {"max_steps": 4, "save_steps": 4, "logging_steps": 2, "learning_rate": 3e-3, "batch_size": 4, "num_processes": 2, "accelerate": {"strategy": strategy}}
    settings = make_settings(tmp_path / "work", data={"sources": [{"path": str(EXAMPLES / "batch1")}]}, train=train)
    dataset = ingest_sources(settings)
    events = []
    report = train_model(settings, dataset.id, progress=events.append)
    assert report.num_processes == 2 and report.global_step == 4
    assert [e["step"] for e in events] == [2, 4]
    run = tmp_path / "work" / "runs" / report.run_id
    assert ClusterConfig.from_yaml_file(str(run / "accelerate_config.yaml")).num_processes == 2
    # The saved adapter is whole (FSDP shards parameters across the processes while training).
    adapter = load_file(run / "model" / "adapter_model.safetensors")
    lora_a = [t for name, t in adapter.items() if "lora_A" in name]
    assert lora_a and all(t.shape[0] == settings.train.lora.r and t.numel() > 0 for t in lora_a)
    assert any(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name), "lora_B starts at zero: training changed it"
