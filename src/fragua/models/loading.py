"""Loading tokenizers and models: hub ids, local folders and registry versions alike.

Only safetensors weights are loaded and remote code stays off unless Settings allow it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fragua.models.templates import ensure_chat_template
from fragua.settings import TrainSettings

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says which and what to do."""


def quiet_transformers() -> None:
    """Progress bars per weight shard drown the run logs; our own progress reporting stays."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def resolve_precision(precision: str) -> str:
    """'auto' becomes bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU."""
    import torch

    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[resolve_precision(precision)]


def model_source(name_or_path: str, gguf_file: str | None = None) -> tuple[str, dict[str, Any]]:
    """The from_pretrained target and its extra arguments: a .gguf path loads through gguf_file=."""
    if gguf_file:
        return name_or_path, {"gguf_file": gguf_file}
    if name_or_path.endswith(".gguf"):
        path = Path(name_or_path)
        if path.is_file():
            return str(path.parent), {"gguf_file": path.name}
        repo, _, filename = name_or_path.rpartition("/")
        if not repo:
            raise ModelLoadError(f"GGUF file {name_or_path!r} does not exist; give a path to a .gguf file or a hub repo plus train.gguf_file")
        return repo, {"gguf_file": filename}
    return name_or_path, {}


def _require_gguf(extra: dict[str, Any]) -> None:
    if "gguf_file" in extra:
        try:
            import gguf  # noqa: F401
        except ImportError as exc:
            raise ModelLoadError(
                f"loading GGUF file {extra['gguf_file']!r} needs the gguf package (pip install 'fragua[gguf]'), which is not installed"
            ) from exc


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    quiet_transformers()
    source, extra = model_source(name_or_path, gguf_file)
    _require_gguf(extra)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **extra)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load a tokenizer from {name_or_path!r}: {exc}. Use a local folder, a reachable hub id, "
            "or run `fragua init-base` for the tiny local base model."
        ) from exc
    ensure_chat_template(tokenizer)
    return tokenizer


def require_quantization_backend() -> None:
    """Fail before anything is loaded where 4/8-bit weights cannot be used."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            "train.method 'qlora' needs bitsandbytes (pip install 'fragua[quant]'), which is not installed; "
            "use train.method 'lora' instead"
        ) from exc
    import torch
    from bitsandbytes.functional import quantize_4bit

    device = pick_device()
    try:
        quantize_4bit(torch.ones(64, dtype=torch.bfloat16, device=device), quant_type="nf4")
    except Exception as exc:  # any failure of the kernel means no 4-bit on this machine
        raise ModelLoadError(
            f"train.method 'qlora': bitsandbytes cannot quantise to 4 bit on this machine ({device}: {exc}); "
            "it needs CUDA or a working CPU backend. Use train.method 'lora' instead"
        ) from exc


def quantization_config(settings: TrainSettings):
    """bitsandbytes config for method 'qlora'."""
    import torch
    from transformers import BitsAndBytesConfig

    require_quantization_backend()

    quant = settings.quant
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, quant.compute_dtype),
    )


def load_causal_lm(name_or_path: str, settings: TrainSettings, *, for_training: bool = False, attn_implementation: str | None = None):
    """A causal LM on the best device, in the configured precision and attention kernel."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    source, extra = model_source(name_or_path, settings.gguf_file if name_or_path == settings.base_model else None)
    _require_gguf(extra)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(settings.precision),
        "attn_implementation": attn_implementation or settings.attn_implementation,
        "trust_remote_code": settings.trust_remote_code,
        # A GGUF file is not safetensors; transformers dequantises it into torch weights.
        "use_safetensors": None if extra else True,
        **extra,
    }
    if "gguf_file" in extra:
        from transformers import GgufConfig

        # Unpacked into ordinary torch weights: what training (and peft) needs.
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    if for_training and settings.method == "qlora":
        kwargs["quantization_config"] = quantization_config(settings)
        kwargs["device_map"] = {"": 0} if pick_device() == "cuda" else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load model {name_or_path!r}: {exc}. Fragua loads safetensors weights only; "
            "check the id or path, or run `fragua init-base` for the tiny local base model."
        ) from exc
    if "gguf_file" in extra:
        # The weights are plain tensors now; the GGUF marker would make the Trainer refuse them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if "device_map" not in kwargs:
        model.to(pick_device())
    return model


def is_adapter(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: str


def load_for_inference(path_or_id: str | Path, settings: TrainSettings, *, base_model: str | None = None) -> LoadedModel:
    """A merged model, a plain model, or an adapter over its base: detected from the folder."""
    path = Path(path_or_id)
    if path.is_dir() and is_adapter(path):
        from peft import PeftModel

        if not (path / ADAPTER_WEIGHTS).is_file():
            # peft would fall back to adapter_model.bin through torch.load (a pickle)
            raise ModelLoadError(f"{path}: no {ADAPTER_WEIGHTS}; Fragua loads safetensors weights only (save the adapter with safetensors)")
        base = base_model or json.loads((path / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
        tokenizer = load_tokenizer(str(path), trust_remote_code=settings.trust_remote_code)
        model = load_causal_lm(base, settings)
        if model.get_input_embeddings().num_embeddings != len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
        model.to(pick_device())
    else:
        tokenizer = load_tokenizer(str(path_or_id), trust_remote_code=settings.trust_remote_code)
        model = load_causal_lm(str(path_or_id), settings)
    model.eval()
    return LoadedModel(model, tokenizer, str(path_or_id))
