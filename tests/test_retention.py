"""The learning/forgetting table's samples and scores, without a model."""

from __future__ import annotations

from fragua.data.records import Message, Record
from fragua.reports.forgetting import retention_section
from fragua.validate.retention import fixed_sample, retention_groups, retention_table
from fragua.validate.scoring import ItemResult


def record(index: int) -> Record:
    return Record(id=f"r{index:02d}", messages=[Message(role="user", content=f"q{index}"), Message(role="assistant", content="a")],
                  domain="d", source="s", split="train", origin="original")


def test_the_sample_depends_on_the_data_and_the_seed_not_on_the_order_it_was_read_in():
    records = [record(i) for i in range(30)]
    sample = fixed_sample(records, 5, seed=3)
    assert len(sample) == 5 and len({r.id for r in sample}) == 5
    assert fixed_sample(list(reversed(records)), 5, seed=3) == sample
    assert fixed_sample(records, 5, seed=4) != sample
    assert sorted(r.id for r in fixed_sample(records[:3], 5, seed=3)) == ["r00", "r01", "r02"]  # fewer than asked: all


def test_new_examples_are_those_the_previous_dataset_lacked_and_older_ones_those_it_trained_on():
    train = [record(i) for i in range(20)]
    previous_train = {f"r{i:02d}" for i in range(10)}
    previous_dataset = previous_train | {"r10", "r11"}  # r10, r11 were in its validation split: neither new nor trained on
    groups = retention_groups(train[:6], train, previous_dataset=previous_dataset, previous_train=previous_train, count=4, seed=0)
    assert list(groups) == ["trained", "new", "older"]
    assert {r.id for r in groups["trained"]} <= {f"r{i:02d}" for i in range(6)}
    assert {r.id for r in groups["new"]} <= {f"r{i:02d}" for i in range(12, 20)}
    assert {r.id for r in groups["older"]} <= previous_train
    assert all(len(group) == 4 for group in groups.values())
    alone = retention_groups(train, train, previous_dataset=None, previous_train=None, count=4, seed=0)
    assert list(alone) == ["trained"]  # no previous version: only what the candidate trained on
    nothing_new = retention_groups(train, train, previous_dataset={r.id for r in train}, previous_train={r.id for r in train}, count=4, seed=0)
    assert list(nothing_new) == ["trained", "older"]


def result(key: str, nll: float) -> ItemResult:
    return ItemResult(id=key, domain="d", question="q", reference="a", prediction="a", answer_nll=nll, answer_tokens=2, exact_match=1.0, token_f1=1.0)


def test_the_table_scores_each_group_on_each_model_and_the_report_compares_with_the_parent():
    groups = {"new": ["k1", "k2"], "older": ["k3"]}
    results = {
        "base": {"k1": result("k1", 8.0), "k2": result("k2", 8.0), "k3": result("k3", 8.0)},
        "previous": {"k1": result("k1", 6.0), "k3": result("k3", 2.0)},  # a deleted version with some cached scores
        "candidate": {"k1": result("k1", 2.0), "k2": result("k2", 2.0), "k3": result("k3", 3.0)},
    }
    retention = retention_table(groups, results, previous_version="fragua-tiny-v1", incremental=True, seed=0)
    new, older = retention.groups
    assert (new.n, new.scores["base"].loss, new.scores["previous"].loss, new.scores["candidate"].loss) == (2, 4.0, 3.0, 1.0)
    assert new.scores["previous"].n == 1 and older.scores["candidate"].loss == 1.5
    text = "\n".join(retention_section(retention, "token_f1"))
    assert "| examples | metric | better | base | parent fragua-tiny-v1 | candidate | Δ vs parent |" in text
    assert "| new (2) | loss | lower | 4.0000 | 3.0000 | 1.0000 | -2.0000 |" in text
    assert "| older (1) | loss | lower | 4.0000 | 1.0000 | 1.5000 | +0.5000 |" in text
    assert "| new (2) | token_f1 | higher |" in text and "mc_accuracy" not in text

    first = retention_table({"trained": ["k1"]}, {m: results[m] for m in ("base", "candidate")}, previous_version=None, incremental=False, seed=0)
    assert "| examples | metric | better | base | candidate | Δ vs base |" in "\n".join(retention_section(first, "token_f1"))
