"""``accelerate launch`` config files for DDP, FSDP and DeepSpeed ZeRO, from train settings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from fragua.settings import TrainSettings

_MIXED_PRECISION = {"auto": "no", "fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def accelerate_config(settings: TrainSettings, *, gpus: bool) -> dict[str, Any]:
    """The config ``accelerate launch --config_file`` reads (the format ``accelerate config`` writes).

    Without GPUs only DDP can run (on CPU with gloo); FSDP and DeepSpeed configs are still
    generated so that they can be checked before they go to a GPU machine.
    """
    options = settings.accelerate
    # precision 'auto' lets the Trainer pick bf16/fp16 per GPU; accelerate must not force one.
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_processes": settings.num_processes * options.num_machines,
        "num_machines": options.num_machines,
        "machine_rank": options.machine_rank,
        "main_training_function": "main",
        "mixed_precision": _MIXED_PRECISION[settings.precision] if gpus else "no",
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": not gpus,
        "debug": False,
    }
    if options.num_machines > 1:
        config["main_process_ip"] = options.main_process_ip
    config["main_process_port"] = options.main_process_port
    if options.strategy in ("torchrun", "ddp"):
        # accelerate's own multi-CPU launcher needs mpirun; its torchrun launcher takes CPU
        # processes as well (each then picks gloo), so DDP uses MULTI_GPU on both.
        config["distributed_type"] = "MULTI_GPU"
    elif options.strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_sharding_strategy": options.fsdp_sharding,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_offload_params": options.offload == "cpu",
            "fsdp_use_orig_params": True,  # LoRA: frozen and trainable parameters share flat params
            # Process 0 loads the weights and broadcasts them; FSDP can do that on GPUs only, so
            # CPU processes (gloo) each load the model themselves.
            "fsdp_sync_module_states": gpus,
            "fsdp_cpu_ram_efficient_loading": gpus,
            "fsdp_forward_prefetch": False,
            "fsdp_activation_checkpointing": False,
        }
    else:
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "zero_stage": options.zero_stage,
            "gradient_accumulation_steps": settings.gradient_accumulation_steps,
            "gradient_clipping": 1.0,
            "offload_optimizer_device": options.offload,
            "offload_param_device": options.offload if options.zero_stage == 3 else "none",
            "zero3_init_flag": options.zero_stage == 3,
            "zero3_save_16bit_model": options.zero_stage == 3,
        }
    return config


def write_accelerate_config(settings: TrainSettings, path: Path, *, gpus: bool) -> Path:
    path.write_text(yaml.safe_dump(accelerate_config(settings, gpus=gpus), sort_keys=True))
    return path


def accelerate_command(config_file: Path, spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file), "-m", "fragua.train.worker", str(spec_path)]
