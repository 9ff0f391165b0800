from __future__ import annotations

import pytest
import torch

from fragua.data.ingest import collect
from fragua.settings import DataSettings, TrainSettings
from fragua.train.batching import VARLEN_SDPA, BatchingPlan, plan_batching, register_attention
from fragua.train.data import encode_records
from fragua.train.trainer import train

from .conftest import EXAMPLES


@pytest.fixture(scope="module")
def rows(tiny_tokenizer):
    records = collect(DataSettings(sources=[{"path": str(EXAMPLES / "batch1")}])).records[:6]
    encoded = encode_records(tiny_tokenizer, records, max_length=256).rows
    assert len({len(r["input_ids"]) for r in encoded}) > 1  # examples of different lengths
    return encoded


def load(tiny_base, attention: str):
    from transformers import AutoModelForCausalLM

    register_attention()
    model = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation=attention).eval()
    model.config.use_cache = False  # as training loads it
    return model


def per_token_losses(model, batch) -> torch.Tensor:
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    labels = batch["labels"]
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none")
    return losses[labels[:, 1:].flatten() != -100]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_no_example_attends_to_another_in_a_padding_free_batch(tiny_base, tiny_tokenizer, rows, attention):
    from fragua.train.batching import packed_attention

    reference = load(tiny_base, attention)
    packed_model = load(tiny_base, packed_attention(attention))
    collate = BatchingPlan("padding_free", packed_attention(attention), "").collator(tiny_tokenizer)
    alone = torch.cat([per_token_losses(reference, collate([row])) for row in rows])
    together = per_token_losses(packed_model, collate(rows))
    assert collate(rows)["input_ids"].shape[0] == 1  # one row, no padding
    assert together.shape == alone.shape
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
    # The same batch padded (the plain recipe) scores the same tokens the same way.
    padded = BatchingPlan("padded", attention, "").collator(tiny_tokenizer)(rows)
    torch.testing.assert_close(per_token_losses(reference, padded), alone, atol=1e-4, rtol=1e-4)


def test_a_model_whose_attention_mixes_packed_examples_falls_back_to_length_grouped(tiny_base, rows):
    from torch.nn.functional import scaled_dot_product_attention
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    def causal_over_the_whole_row(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        out = scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("leaky_causal", causal_over_the_whole_row)
    AttentionMaskInterface.register("leaky_causal", flash_attention_mask)
    model = load(tiny_base, "leaky_causal")
    probe = [row["input_ids"][:16] for row in rows[:3]]
    plan = plan_batching(model, "padding_free", "leaky_causal", probe)
    assert plan.mode == "length_grouped" and plan.sampling_strategy == "group_by_length"
    assert "does not keep packed examples apart" in plan.note
    good = plan_batching(load(tiny_base, "sdpa"), "padding_free", "sdpa", probe)
    assert (good.mode, good.attn_implementation) == ("padding_free", VARLEN_SDPA)


def test_padding_free_training_follows_the_padded_loss_curve(tiny_base, tmp_path):
    records = collect(DataSettings(sources=[{"path": str(EXAMPLES / "batch1")}])).records
    train_records = [r for r in records if r.split == "train"][:48]

    def losses(batching: str) -> tuple[list[float], object]:
        settings = TrainSettings(max_steps=4, batch_size=8, logging_steps=1, save_steps=100, batching=batching)
        report = train(base_model=str(tiny_base), settings=settings, train_records=train_records, eval_records=[],
                       run_dir=tmp_path / batching, report_to=[], run_name=batching)
        return [e["loss"] for e in report.log_history if "loss" in e], report

    free, free_report = losses("padding_free")
    padded, padded_report = losses("padded")
    assert free == pytest.approx(padded, rel=2e-3)
    assert free_report.batching.startswith("padding-free") and padded_report.batching.startswith("padded")
    assert "output head on answer tokens only" in free_report.batching  # and yet the same losses
    assert free_report.tokens_per_second and padded_report.tokens_per_second
    assert all(e.get("tokens_per_second") for e in free_report.log_history if "loss" in e)
