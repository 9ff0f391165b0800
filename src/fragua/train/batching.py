"""How encoded examples become training batches, and which attention kernel sees them.

``padding_free`` concatenates a batch into one row with ``position_ids`` restarting at every
example (transformers' ``DataCollatorWithFlattening``): no compute is spent on padding.
Examples must not attend to each other, and how that is ensured depends on the kernel:

- ``flash_attention_2`` reads the sequence boundaries (``cu_seq_lens_*``) natively;
- ``sdpa`` runs Fragua's variable-length SDPA (below): causal SDPA per example, so the cost
  is the sum of the squared example lengths. (transformers' own ``sdpa`` would also keep the
  examples apart, through a block-diagonal mask over the whole flattened batch, but that
  mask costs the *square of the batch's total tokens* in compute and memory.)
- ``eager`` uses transformers' block-diagonal mask built from ``position_ids`` (which it
  only builds without a KV cache: training loads the model with ``use_cache=False``).

Before training, :func:`packing_is_exact` checks on the real model that a packed batch gives
the same logits as each example alone under the configured kernel; a model where it does not
(a custom architecture that ignores ``position_ids``, sliding-window or soft-capped attention
that the per-example SDPA does not reproduce) falls back to ``length_grouped`` batches:
padded to the longest example of a batch whose examples have similar lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fragua.models.templates import IGNORE_INDEX
from fragua.train.cache import TrainingCache

VARLEN_SDPA = "fragua_varlen_sdpa"


def varlen_sdpa_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal SDPA on each example of a flattened batch (query: 1 x heads x tokens x dim)."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention

    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError(
            f"attention {VARLEN_SDPA!r} runs on flattened (padding-free) batches only; "
            "load the model with attn_implementation 'sdpa' for padded batches"
        )
    boundaries = kwargs.get("cu_seq_lens_q")
    if boundaries is None:
        boundaries = sequence_boundaries(kwargs["position_ids"][0]) if kwargs.get("position_ids") is not None else None
    lengths = [query.shape[2]] if boundaries is None else torch.diff(boundaries.to("cpu")).tolist()
    gqa = query.shape[1] != key.shape[1]
    outputs = [
        scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=gqa)
        for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def sequence_boundaries(position_ids):
    """Cumulative example lengths (0, l1, l1+l2, ...) of a row whose positions restart per example."""
    import torch

    starts = torch.nonzero(torch.diff(position_ids, prepend=position_ids[:1] - 1) != 1).flatten()
    return torch.cat([starts, torch.tensor([position_ids.numel()], device=position_ids.device)])


def register_attention() -> None:
    """Make VARLEN_SDPA a valid ``attn_implementation`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention)
    # Like flash attention it needs no mask on flattened batches (and rejects padded ones).
    AttentionMaskInterface.register(VARLEN_SDPA, flash_attention_mask)


def packed_attention(configured: str) -> str:
    """The kernel that runs flattened batches for the configured one."""
    return VARLEN_SDPA if configured == "sdpa" else configured


def answer_positions(labels):
    """Positions of a flattened row whose next token is trained (the only logits the loss reads)."""
    import torch

    return torch.nonzero(labels[0, 1:] != IGNORE_INDEX).flatten()


class AnswerLogitsCollator:
    """Adds ``logits_to_keep``: the output head runs on answer positions only, not on prompts."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        batch["logits_to_keep"] = answer_positions(batch["labels"])
        return batch


def answer_token_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None):
    """Cross-entropy of the kept logits against the next tokens they predict (Trainer compute_loss_func).

    Normalised like transformers' own causal-LM loss: by the answer tokens of the whole
    accumulated batch when the Trainer passes that count, else by this batch's.
    """
    from torch.nn.functional import cross_entropy

    shifted = labels[:, 1:]
    targets = shifted[shifted != IGNORE_INDEX]
    logits = outputs.logits[0].float()
    loss = cross_entropy(logits, targets.to(logits.device), reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else max(targets.numel(), 1))


def accepts_logits_to_keep(model: Any) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(type(model).forward).parameters


@dataclass(frozen=True)
class BatchingPlan:
    mode: str
    attn_implementation: str
    note: str
    answer_logits_only: bool = False

    def collator(self, tokenizer: Any):
        from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

        if self.mode == "padding_free":
            flattening = DataCollatorWithFlattening(return_flash_attn_kwargs=True, separator_id=IGNORE_INDEX)
            return AnswerLogitsCollator(flattening) if self.answer_logits_only else flattening
        return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)

    @property
    def loss_function(self):
        """Trainer compute_loss_func: None keeps the model's own loss."""
        return answer_token_loss if self.answer_logits_only else None

    @property
    def sampling_strategy(self) -> str:
        return "group_by_length" if self.mode == "length_grouped" else "random"

    @property
    def token_count(self) -> str:
        """TrainingArguments.include_num_input_tokens_seen: flattened batches hold no padding at all."""
        return "all" if self.mode == "padding_free" else "non_padding"


def plan_batching(model: Any, requested: str, configured_attention: str, probe_rows: list[list[int]], cache: TrainingCache | None = None) -> BatchingPlan:
    """Padding-free where the loaded model provably keeps packed examples apart, else length-grouped.

    ``cache`` remembers the check's verdict for this architecture, kernels and library versions.
    """
    if requested != "padding_free":
        return BatchingPlan(requested, configured_attention, f"{requested} batches ({configured_attention} attention), as configured")
    candidate = packed_attention(configured_attention)
    if _packing_verdict(model, probe_rows, configured_attention, candidate, cache):
        how = {
            VARLEN_SDPA: "per-example causal SDPA",
            "flash_attention_2": "flash-attention varlen kernels",
        }.get(candidate, "a block-diagonal mask from position_ids")
        # Prompt positions carry no loss; a model that can keep only some logits skips the
        # output head (the vocabulary-wide matmul and softmax) there.
        answer_only = accepts_logits_to_keep(model)
        note = f"padding-free batches: examples concatenated, kept apart by {how}"
        return BatchingPlan("padding_free", candidate, note + ("; output head on answer tokens only" if answer_only else ""), answer_only)
    model.set_attn_implementation(configured_attention)
    return BatchingPlan(
        "length_grouped",
        configured_attention,
        f"length-grouped batches: this model's {configured_attention} attention does not keep packed examples apart "
        "(checked before training), so padding-free batching is off",
    )


def _packing_verdict(model: Any, probe_rows: list[list[int]], reference: str, candidate: str, cache: TrainingCache | None) -> bool:
    """packing_is_exact, or the verdict an earlier run reached for the same question."""
    if cache is None:
        return packing_is_exact(model, probe_rows, reference=reference, candidate=candidate)
    from fragua.train.cache import packing_key

    key = packing_key(model, reference, candidate)
    known = cache.packing_verdict(key)
    if known is not None:
        return known
    exact = packing_is_exact(model, probe_rows, reference=reference, candidate=candidate)
    # Too few rows to pack proves nothing about the model: not remembered.
    if len([row for row in probe_rows if len(row) >= 2]) >= 2:
        cache.store_packing_verdict(key, exact)
    return exact


def packing_is_exact(model: Any, rows: list[list[int]], *, reference: str, candidate: str) -> bool:
    """Logits of each example alone (reference kernel) equal its logits inside a packed row (candidate)."""
    import torch
    from transformers import DataCollatorWithFlattening

    rows = [row for row in rows if len(row) >= 2][:3]
    if len(rows) < 2:
        return True  # nothing to pack: every batch holds one example
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.set_attn_implementation(reference)
            alone = [model(input_ids=torch.tensor([row], device=device)).logits[0].float() for row in rows]
            model.set_attn_implementation(candidate)
            packed = DataCollatorWithFlattening(return_flash_attn_kwargs=True)([{"input_ids": row} for row in rows])
            packed.pop("labels")
            inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in packed.items()}
            together = model(**inputs).logits[0].float().split([len(row) for row in rows])
    except (RuntimeError, ValueError, TypeError):
        return False
    finally:
        model.train(was_training)
    exact_dtype = model.dtype == torch.float32 and not getattr(model, "is_quantized", False)
    tolerance = 1e-3 if exact_dtype else 5e-2
    return all(
        (a - b).abs().max().item() <= tolerance * max(1.0, a.abs().max().item()) for a, b in zip(alone, together)
    )
