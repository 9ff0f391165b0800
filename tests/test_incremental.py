"""Incremental training continues the production version on new examples plus a replay sample."""

from __future__ import annotations

import pytest
import torch

from fragua.data import store as dataset_store
from fragua.data.records import Message, Record
from fragua.jobs.data import ingest_sources
from fragua.jobs.forgetting import retention_check
from fragua.jobs.train import train_model
from fragua.models.loading import load_for_inference
from fragua.registry import open_registry
from fragua.train.data import encode_records
from fragua.train.incremental import select_incremental

from .conftest import EXAMPLES, make_settings

OLD = EXAMPLES / "batch1" / "ml_concepts.jsonl"
NEW = EXAMPLES / "batch2" / "ml_concepts_more.jsonl"
TRAIN = {"max_steps": 40, "batch_size": 16, "save_steps": 100, "learning_rate": 5e-3}


def record(index: int) -> Record:
    return Record(id=f"r{index}", messages=[Message(role="user", content="q"), Message(role="assistant", content="a")],
                  domain="d", source="s", split="train", origin="original")


def test_selection_takes_every_new_record_and_replays_older_ones():
    train = [record(i) for i in range(20)]
    selection = select_incremental(train, {f"r{i}" for i in range(15)}, replay_ratio=2.0, seed=0)
    assert selection.new == 5 and selection.replayed == 10 and selection.older == 15
    assert {r.id for r in selection.records} >= {f"r{i}" for i in range(15, 20)}
    assert select_incremental(train, {f"r{i}" for i in range(15)}, replay_ratio=2.0, seed=0) == selection
    assert select_incremental(train, {f"r{i}" for i in range(15)}, replay_ratio=100, seed=0).replayed == 15
    with pytest.raises(ValueError, match="no new examples"):
        select_incremental(train, {r.id for r in train}, replay_ratio=1.0, seed=0)


def answer_loss(model_dir, records, settings) -> float:
    loaded = load_for_inference(model_dir, settings.train)
    rows = encode_records(loaded.tokenizer, records, settings.train.max_seq_length).rows
    losses = []
    with torch.no_grad():
        for row in rows:
            out = loaded.model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
            losses.append(out.loss.item())
    return sum(losses) / len(losses)


def publish_as_production(settings, report, dataset_id) -> str:
    """Register a trained run as the production version (what deploy does after validation)."""
    registry = open_registry(settings)
    version = registry.allocate("tiny")
    model_dir = __import__("pathlib").Path(report.adapter_dir)
    files = {p.relative_to(model_dir).as_posix(): p for p in model_dir.rglob("*") if p.is_file()}
    registry.publish(version, files, {"lineage": {"base_model": report.base_model, "method": report.method, "dataset_id": dataset_id}})
    registry.promote(version, reason="test")
    return version


@pytest.mark.slow
def test_a_new_version_learns_the_new_facts_and_keeps_the_old_ones(tmp_path):
    work = tmp_path / "work"
    first = make_settings(work, data={"sources": [{"path": str(OLD)}]}, train={**TRAIN, "incremental": True})
    old_dataset = ingest_sources(first)
    v1_report = train_model(first, old_dataset.id)  # no production version yet: trains from the base on everything
    assert v1_report.parent_version is None and v1_report.examples == old_dataset.counts["train"]
    v1 = publish_as_production(first, v1_report, old_dataset.id)

    both = make_settings(work, data={"sources": [{"path": str(OLD)}, {"path": str(NEW)}]},
                         train={**TRAIN, "max_steps": 30, "learning_rate": 2e-3, "incremental": True, "replay_ratio": 1.0})
    new_dataset = ingest_sources(both)
    v2_report = train_model(both, new_dataset.id)

    old_train = dataset_store.load_records(old_dataset, "train")
    old_ids = {r.id for r in old_train}
    new_train = [r for r in dataset_store.load_records(new_dataset, "train") if r.id not in old_ids]
    assert v2_report.parent_version == v1 and v2_report.base_model == v1_report.base_model
    assert v2_report.incremental == {"new_examples": len(new_train), "replayed_examples": min(len(old_train), len(new_train)),
                                     "older_examples": len(old_train)}
    assert v2_report.examples == len(new_train) + min(len(old_train), len(new_train))
    assert v2_report.run_id.endswith(f"-from-{v1}")

    v1_dir, v2_dir = v1_report.adapter_dir, v2_report.adapter_dir
    new_before, new_after = answer_loss(v1_dir, new_train, both), answer_loss(v2_dir, new_train, both)
    old_before, old_after = answer_loss(v1_dir, old_train, both), answer_loss(v2_dir, old_train, both)
    assert new_after < 0.8 * new_before  # learned the new facts
    assert old_after < 1.15 * old_before  # kept the old ones (within tolerance)
    # It continued v1 instead of starting over: on the old facts it is far better than a fresh run of 30 steps would be.
    base_loss = answer_loss(v1_report.base_model, old_train, both)
    assert old_after < 0.7 * base_loss

    # The validation report's learning/forgetting table tells the same on small fixed samples.
    checked = both.model_copy(update={"validate": both.validate.model_copy(update={"retention_samples": 8, "max_new_tokens": 4})})
    retention = retention_check(checked, v2_report.run_id, v1)
    assert retention.previous_version == v1 and retention.incremental
    groups = {group.name: group.scores for group in retention.groups}
    assert list(groups) == ["trained", "new", "older"] and [group.n for group in retention.groups] == [8, 8, 8]
    assert all(set(scores) == {"base", "previous", "candidate"} for scores in groups.values())
    assert groups["new"]["candidate"].loss < 0.8 * groups["new"]["previous"].loss  # learned the new facts
    assert groups["older"]["candidate"].loss < 0.7 * groups["older"]["base"].loss  # kept most of what v1 had learned
    assert groups["older"]["previous"].loss < 0.7 * groups["older"]["base"].loss
