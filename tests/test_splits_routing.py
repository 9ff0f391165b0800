"""Splits (by group hash: deterministic, stable as data grows, groups never cross, domains
sampled alike) and domain routing (field > rule > source > category > default)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from fragua.data.expand import expand_train
from fragua.data.ingest import collect, ingest
from fragua.data.splits import assign_split
from fragua.data.store import load_dataset_view, load_records
from fragua.jobs.data import dataset_split
from fragua.settings import DataSettings, ExpandSettings

from .conftest import EXAMPLES, make_settings

FIXTURES = Path(__file__).parent / "fixtures" / "formats"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def faq(i: int, domain: str | None = None, **extra) -> dict:
    row = {"instruction": f"{domain or 'general'} question number {i}?", "output": f"Answer {i} for {domain or 'general'}.", **extra}
    if domain:
        row["domain"] = domain
    return row


def test_split_is_deterministic_for_a_seed_and_changes_with_it(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [faq(i) for i in range(300)])
    first = {r.id: r.split for r in collect(DataSettings(sources=[{"path": str(path)}])).records}
    again = {r.id: r.split for r in collect(DataSettings(sources=[{"path": str(path)}])).records}
    other = {r.id: r.split for r in collect(DataSettings(sources=[{"path": str(path)}], split_seed=14)).records}
    assert first == again != other


def test_groups_keep_their_split_when_much_more_data_arrives(tmp_path):
    small = write_jsonl(tmp_path / "small.jsonl", [faq(i, "hotel") for i in range(200)])
    more = write_jsonl(tmp_path / "more.jsonl", [faq(i, d) for i in range(200, 2000) for d in ("hotel", "spa")])
    before = {r.id: r.split for r in collect(DataSettings(sources=[{"path": str(small)}])).records}
    after = {r.id: r.split for r in collect(DataSettings(sources=[{"path": str(small)}, {"path": str(more)}])).records}
    assert before and all(after[i] == split for i, split in before.items())


def test_rows_of_one_group_never_cross_splits(tmp_path):
    rows = [faq(i, group=f"g{i % 50}") for i in range(400)]
    result = collect(DataSettings(sources=[{"path": str(write_jsonl(tmp_path / "g.jsonl", rows))}], validation_fraction=0.3, test_fraction=0.2))
    splits_per_group = defaultdict(set)
    for record in result.records:
        splits_per_group[record.meta["group"]].add(record.split)
    assert len(splits_per_group) == 50 and all(len(s) == 1 for s in splits_per_group.values())
    assert {s for (split,) in splits_per_group.values() for s in [split]} == {"train", "validation", "test"}
    assert all(record.split == assign_split(record.meta["group"], 13, 0.3, 0.2) for record in result.records)


def test_the_same_head_qa_question_in_two_languages_shares_a_split(tmp_path):
    english = json.loads((FIXTURES / "head_qa_en.json").read_text())
    spanish = json.loads(json.dumps(english))
    spanish["language"] = "es"
    for exam in spanish["exams"].values():
        for question in exam["data"]:
            question["qtext"] = "ES: " + question["qtext"]
    (tmp_path / "head_qa_es.json").write_text(json.dumps(spanish, ensure_ascii=False))
    records = collect(DataSettings(sources=[{"path": str(FIXTURES / "head_qa_en.json")}, {"path": str(tmp_path / "head_qa_es.json")}], validation_fraction=0.5)).records
    by_group = defaultdict(list)
    for record in records:
        by_group[record.meta["group"]].append(record)
    assert len(by_group) == 6 and all(len(rows) == 2 and len({r.split for r in rows}) == 1 for rows in by_group.values())


def test_every_domain_is_split_at_the_configured_rates(tmp_path):
    rows = [faq(i, domain) for domain in ("hotel", "ml", "spa") for i in range(1500)]
    records = collect(DataSettings(sources=[{"path": str(write_jsonl(tmp_path / "s.jsonl", rows))}], validation_fraction=0.2, test_fraction=0.1)).records
    per_domain = defaultdict(Counter)
    for record in records:
        per_domain[record.domain][record.split] += 1
    for domain, counts in per_domain.items():
        total = sum(counts.values())
        assert abs(counts["validation"] / total - 0.2) < 0.04, (domain, counts)
        assert abs(counts["test"] / total - 0.1) < 0.03, (domain, counts)


def test_adding_a_test_split_takes_rows_from_train_only(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [faq(i) for i in range(1000)])
    without = {r.id: r.split for r in collect(DataSettings(sources=[{"path": str(path)}])).records}
    with_test = {r.id: r.split for r in collect(DataSettings(sources=[{"path": str(path)}], test_fraction=0.1)).records}
    assert {i for i, s in without.items() if s == "validation"} == {i for i, s in with_test.items() if s == "validation"}
    assert all(without[i] == "train" for i, s in with_test.items() if s == "test")
    assert 60 < sum(s == "test" for s in with_test.values()) < 140


def test_split_happens_before_expansion_and_permutations_stay_in_train(tmp_path):
    manifest = ingest(DataSettings(sources=[{"path": str(EXAMPLES / "batch2" / "mcq.jsonl")}], validation_fraction=0.3), tmp_path)
    held_out = {r.id for r in load_records(manifest, "validation")}
    expanded = expand_train(load_records(manifest, "train"), ExpandSettings(expansion_factor=4.0), held_out=load_records(manifest, "validation")).records
    added = [r for r in expanded if r.origin == "mcq_permutation"]
    assert added and all(r.split == "train" and r.meta["parent_id"] not in held_out for r in added)


def test_domain_precedence_row_field_rule_source_category_default(tmp_path):
    (tmp_path / "exams").mkdir()
    hotel = write_jsonl(tmp_path / "hotel_faq.jsonl", [
        faq(1, "front-desk"),  # own field wins
        {"instruction": "Is the POOL heated in winter?", "output": "Yes, to 28 degrees."},  # keyword rule
        {"instruction": "Can I pay by card?", "output": "Yes, all major cards."},  # source rule
    ])
    other = write_jsonl(tmp_path / "other.jsonl", [
        {"instruction": "Which swimming-pool hours apply?", "output": "From 9:00 to 21:00."},  # 'pool' not a whole word
        {"instruction": "What is a transformer?", "output": "A neural network architecture.", "category": " Machine Learning "},  # category as is
        {"instruction": "What is LoRA?", "output": "Low-rank adapters.", "category": "ml"},  # category rule
    ])
    plain = write_jsonl(tmp_path / "exams" / "plain.jsonl", [{"instruction": "Anything else?", "output": "No."}])
    settings = DataSettings(
        sources=[{"path": str(hotel)}, {"path": str(other)}, {"path": str(plain), "domain": "exams"}, {"path": str(FIXTURES / "head_qa_en.json")}],
        routing=[
            {"domain": "leisure", "keywords": ["pool", "spa"]},
            {"domain": "hotel", "sources": ["hotel_*.jsonl"]},
            {"domain": "machine-learning", "categories": ["ML"]},
            {"domain": "health", "categories": ["Medicine", "nursing"]},
        ],
        default_domain="misc",
    )
    records = collect(settings).records
    domains = {r.messages[0].content.split("\n")[0]: r.domain for r in records}
    assert domains["front-desk question number 1?"] == "front-desk"
    assert domains["Is the POOL heated in winter?"] == "leisure"
    assert domains["Can I pay by card?"] == "hotel"
    assert domains["Which swimming-pool hours apply?"] == "leisure"  # '-' separates words
    assert domains["What is a transformer?"] == "Machine Learning"
    assert domains["What is LoRA?"] == "machine-learning"
    assert domains["Anything else?"] == "exams"
    head_qa = Counter(r.domain for r in records if r.choices)
    assert head_qa == {"biology": 3, "health": 3}


def test_keywords_match_whole_words_only(tmp_path):
    path = write_jsonl(tmp_path / "k.jsonl", [
        {"instruction": "Do you have a whirlpool?", "output": "Yes."},
        {"instruction": "Spa hours?", "output": "10-20."},
    ])
    records = collect(DataSettings(sources=[{"path": str(path)}], routing=[{"domain": "spa", "keywords": ["pool", "spa"]}])).records
    assert sorted(r.domain for r in records) == ["general", "spa"]


def test_routing_rule_needs_a_matcher():
    with pytest.raises(ValueError, match="needs at least one of sources, categories, keywords"):
        DataSettings(routing=[{"domain": "x"}])


def test_per_domain_counts_and_views_for_training_and_evaluation(tmp_path):
    manifest = ingest(DataSettings(sources=[{"path": str(EXAMPLES)}]), tmp_path / "datasets")
    assert set(manifest.domains) == {"hotel", "ml"}
    hotel = load_records(manifest, "validation", ["hotel"])
    assert hotel and {r.domain for r in hotel} == {"hotel"}
    assert len(hotel) == manifest.domains["hotel"]["validation"]
    view = load_dataset_view(manifest, "train", ["ml"])
    assert view.num_rows == manifest.domains["ml"]["train"] and set(view["domain"]) == {"ml"}
    assert view[0]["messages"][-1]["role"] == "assistant"
    with pytest.raises(ValueError, match=r"no domain 'spa'; it has hotel, ml"):
        load_records(manifest, "train", ["spa"])
    settings = make_settings(tmp_path, data={"domains": ["ml"]})
    assert {r.domain for r in dataset_split(settings, manifest, "train")} == {"ml"}
    assert len(dataset_split(make_settings(tmp_path), manifest, "train")) == manifest.counts["train"]


def test_tiny_domains_are_flagged_in_the_manifest(tmp_path):
    rows = [faq(i, "hotel") for i in range(200)] + [faq(1, "rare")]
    manifest = ingest(DataSettings(sources=[{"path": str(write_jsonl(tmp_path / "t.jsonl", rows))}]), tmp_path / "store")
    assert any("domain 'rare' has no" in w for w in manifest.warnings)
    assert not any("'hotel'" in w for w in manifest.warnings)
