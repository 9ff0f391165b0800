"""The tokenizer and the model one run trains: the base (full precision or 4-bit), rows for added tokens, the batching plan, the adapters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fragua.settings import TrainSettings
from fragua.train.batching import BatchingPlan, packed_attention, plan_batching, register_attention
from fragua.train.cache import TrainingCache


def setup_tokenizer(base_model: str, settings: TrainSettings, init_adapter: Path | None) -> Any:
    """The base model's tokenizer, or the saved adapter's when training continues one (it may carry added tokens)."""
    from fragua.models.loading import load_tokenizer

    if init_adapter is not None:
        return load_tokenizer(str(init_adapter), trust_remote_code=settings.trust_remote_code)
    return load_tokenizer(base_model, trust_remote_code=settings.trust_remote_code, gguf_file=settings.gguf_file)


@dataclass
class BuiltModel:
    model: Any
    base_parameters: int
    plan: BatchingPlan
    added_tokens: list[str]


def build_model(
    base_model: str, settings: TrainSettings, tokenizer: Any, probe_rows: list[list[int]], *, init_adapter: Path | None = None,
    cache: TrainingCache | None = None,
) -> BuiltModel:
    """The model to train, how its batches are formed (``cache`` may know the packing check's verdict), and the base model's parameter count."""
    from fragua.models.loading import load_causal_lm

    register_attention()
    model = load_causal_lm(base_model, settings, for_training=True)
    # Training needs no KV cache, and with one transformers skips its packed-sequence masks
    # (eager/sdpa would let packed examples attend to each other).
    model.config.use_cache = False
    if settings.method == "qlora":
        keep_cpu_4bit_training_layout(model)
    known = model.get_input_embeddings().num_embeddings
    new_token_ids = list(range(known, len(tokenizer)))
    if new_token_ids:
        model.resize_token_embeddings(len(tokenizer))
    parameters = model.num_parameters()
    plan = plan_batching(model, settings.batching, settings.attn_implementation, probe_rows, cache)
    if plan.mode == "padding_free":
        model.set_attn_implementation(packed_attention(settings.attn_implementation))
    added = tokenizer.convert_ids_to_tokens(new_token_ids)
    if settings.method == "full":
        return BuiltModel(model, parameters, plan, added)
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if settings.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing)
    if init_adapter is not None:
        return BuiltModel(PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True), parameters, plan, added)
    return BuiltModel(get_peft_model(model, _peft_config(settings, new_token_ids)), parameters, plan, added)


def _peft_config(settings: TrainSettings, new_token_ids: list[int]):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora.r,
        lora_alpha=settings.lora.alpha,
        lora_dropout=settings.lora.dropout,
        target_modules=settings.lora.target_modules,
        use_dora=settings.method == "dora",
        # Rows of tokens the base model never had (ChatML markers added for the template)
        # are random: they must train, or the model cannot read or end a turn.
        trainable_token_indices=new_token_ids or None,
        task_type="CAUSAL_LM",
    )


def keep_cpu_4bit_training_layout(model: Any) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference during training.

    On CPUs with AVX512-BF16, the first no-grad forward in eval mode (the batching probe, every
    evaluation) repacks a Linear4bit's weights in place into an inference layout. That layout
    needs in_features divisible by the quantisation block size (it crashes otherwise), and
    training after it leaves the LoRA weights unchanged. The training layout serves both.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
