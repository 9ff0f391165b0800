"""The training cache: tokenised splits and the packing check's verdict, reused only for the same content."""

from __future__ import annotations

import pytest

from fragua.data.ingest import collect
from fragua.settings import DataSettings, TrainSettings
from fragua.train.batching import plan_batching
from fragua.train.cache import PACKING_FOLDER, SPLITS_FOLDER, TrainingCache, packing_key, tokenizer_fingerprint
from fragua.train.data import encode_records, setup_data

from .conftest import EXAMPLES


@pytest.fixture(scope="module")
def records():
    collected = collect(DataSettings(sources=[{"path": str(EXAMPLES / "batch1")}])).records
    return [r for r in collected if r.split == "train"][:40], [r for r in collected if r.split == "validation"][:10]


def _rows(dataset) -> list[dict]:
    return [dict(row) for row in dataset]


def test_a_tokenised_split_comes_back_from_the_cache_only_for_the_same_rows_tokenizer_and_length(tiny_tokenizer, records, tmp_path):
    train_records, eval_records = records
    settings = TrainSettings(max_seq_length=24)
    cache = TrainingCache(tmp_path / "cache", {"train": "dataset-a/train/", "validation": "dataset-a/validation/"})
    first = setup_data(tiny_tokenizer, train_records, eval_records, settings, cache=cache)
    expected = encode_records(tiny_tokenizer, train_records, 24)
    assert _rows(first.train) == expected.rows
    assert (first.tally.examples, first.tally.truncated, first.tally.trained_tokens) == (len(expected.rows), expected.truncated, expected.trained_tokens)
    assert first.tally.truncated > 0  # 24 tokens cut some examples: the counts must survive the cache
    assert len(list((tmp_path / "cache" / SPLITS_FOLDER).iterdir())) == 2

    # The same identity read again: no records needed, the rows and counts are the cached ones.
    again = setup_data(tiny_tokenizer, [], [], settings, cache=cache)
    assert _rows(again.train) == expected.rows and _rows(again.eval) == _rows(first.eval)
    assert again.tally == first.tally

    # Another max_seq_length, or rows without an identity (an incremental selection), are encoded anew.
    longer = setup_data(tiny_tokenizer, train_records, eval_records, TrainSettings(max_seq_length=512), cache=cache)
    assert longer.tally.truncated == 0 and longer.tally.trained_tokens > first.tally.trained_tokens
    selected = TrainingCache(tmp_path / "cache", {"validation": "dataset-a/validation/"})
    assert _rows(setup_data(tiny_tokenizer, train_records[:5], eval_records, settings, cache=selected).train) == encode_records(
        tiny_tokenizer, train_records[:5], 24).rows


def test_a_changed_tokenizer_changes_the_key(tiny_tokenizer, tmp_path):
    cache = TrainingCache(tmp_path, {"train": "d/train/"})
    before = cache.split_key("train", tiny_tokenizer, 64, "code")
    assert before == cache.split_key("train", tiny_tokenizer, 64, "code")
    assert before != cache.split_key("train", tiny_tokenizer, 64, "other code")
    fingerprint = tokenizer_fingerprint(tiny_tokenizer)
    changed = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    changed.chat_template = "{{ messages[0]['content'] }}"
    assert tokenizer_fingerprint(changed) != fingerprint
    assert cache.split_key("validation", tiny_tokenizer, 64, "code") is None  # a split without an identity is not cached


def test_the_packing_verdict_is_remembered_per_architecture(tiny_base, tiny_tokenizer, records, tmp_path):
    from transformers import AutoModelForCausalLM

    from fragua.train.batching import register_attention

    register_attention()
    probe = [row["input_ids"][:16] for row in encode_records(tiny_tokenizer, records[0][:3], 64).rows]
    model = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation="sdpa")
    cache = TrainingCache(tmp_path)
    checked = plan_batching(model, "padding_free", "sdpa", probe, cache)
    assert checked.mode == "padding_free"
    key = packing_key(model, "sdpa", checked.attn_implementation)
    assert cache.packing_verdict(key) is True
    assert len(list((tmp_path / PACKING_FOLDER).iterdir())) == 1

    # What the cache says is what the plan follows: a remembered "not exact" turns packing off without a check.
    fresh = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation="sdpa")
    other = TrainingCache(tmp_path / "other")
    other.store_packing_verdict(packing_key(fresh, "sdpa", checked.attn_implementation), False)
    assert plan_batching(fresh, "padding_free", "sdpa", probe, other).mode == "length_grouped"
    # Another architecture asks its own question.
    fresh.config.num_attention_heads = 2
    assert packing_key(fresh, "sdpa", checked.attn_implementation) != key
