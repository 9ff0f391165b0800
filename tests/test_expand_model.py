"""Model-based expansion (paraphrase, self-instruct) on the tiny base model, the expanded
dataset version, and the expand flow's artifacts and CLI output."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from fragua.data.expand import expand_train
from fragua.data.ingest import collect
from fragua.data.records import Record
from fragua.jobs.data import dataset_split, expand_dataset, ingest_sources
from fragua.settings import DataSettings, ExpandGenerationSettings, ExpandSettings, TrainSettings

from .conftest import EXAMPLES, make_settings

HOTEL = EXAMPLES / "batch1" / "hotel_faq.jsonl"


@pytest.fixture(scope="module")
def hotel_train() -> list[Record]:
    records = collect(DataSettings(sources=[{"path": str(HOTEL)}])).records
    return [r for r in records if r.split == "train"][:8]


@pytest.fixture(scope="module")
def tiny_generator(tiny_base):
    from fragua.inference.generation import TextGenerator
    from fragua.models.loading import load_for_inference

    return TextGenerator(load_for_inference(str(tiny_base), TrainSettings()), ExpandGenerationSettings(max_new_tokens=16, batch_size=8))


def _accounted(report: dict, strategy: str) -> int:
    tally = report["strategies"][strategy]
    return tally["added"] + tally["duplicates"] + sum(tally["rejected"].values())


def test_model_based_expansion_runs_on_the_tiny_base_model(hotel_train, tiny_generator):
    settings = ExpandSettings(expansion_factor=1.5, strategies=["paraphrase", "self_instruct"], seed=3)
    first = expand_train(hotel_train, settings, held_out=[], generator=tiny_generator, generator_label="tiny")
    report = first.report
    parents = {r.id: r for r in hotel_train}
    for strategy in ("paraphrase", "self_instruct"):
        tally = report["strategies"][strategy]
        assert tally["generated"] > 0
        # Every generation is accounted for: added, an exact duplicate, or quarantined with a reason.
        assert _accounted(report, strategy) == tally["generated"]
        assert tally["generated"] <= tally["target"] * settings.generation.attempts_per_row
    for row in first.records[len(hotel_train):]:
        parent = parents[row.meta["parent_id"]]
        assert row.origin in ("paraphrase", "self_instruct") and row.split == "train" and row.group == parent.group
        if row.origin == "paraphrase":
            assert row.reference == parent.reference
    assert all(q["kind"] and q["reason"].split(":")[0] in ("paraphrase", "self_instruct") for q in first.rejected)
    assert sum(q["kind"] == "unparseable" for q in first.rejected) == report["strategies"]["self_instruct"]["rejected"].get("unparseable", 0)

    again = expand_train(hotel_train, settings, held_out=[], generator=tiny_generator, generator_label="tiny")
    assert [r.id for r in again.records] == [r.id for r in first.records]
    assert again.rejected == first.rejected
    other = expand_train(hotel_train, settings.model_copy(update={"seed": 4}), held_out=[], generator=tiny_generator)
    assert other.rejected != first.rejected or [r.id for r in other.records] != [r.id for r in first.records]


def test_model_rows_go_through_ingests_quality_and_dedupe_checks(hotel_train):
    """A scripted model: each kind of bad output is quarantined with ingest's reason."""
    outputs = iter([
        "Question: Is there a heliport?\nAnswer: n/a",  # placeholder answer -> low_quality
        "Question: Is there a heliport?\nAnswer: " + "x" * 300,  # too long for data.max_chars
        "Question: Is there a heliport?\nAnswer: Yes, on the roof of the east tower.",  # kept
        "Question: Is there a heliport?\nAnswer: Yes, on the roof of the east tower.",  # exact duplicate of the one before
        "Question: Is there any heliport?\nAnswer: Yes, on the roof of the east tower.",  # near-duplicate
        "nothing like the format",  # unparseable
        "Question: Do you sell stamps?\nAnswer: Postage stamps are sold at the front desk.",  # kept
    ])

    def scripted(prompts, seed):
        return [next(outputs) for _ in prompts]

    data = DataSettings(max_chars=200, near_dedupe=True, near_dedupe_ngram=1, near_dedupe_threshold=0.6)
    settings = ExpandSettings(expansion_factor=1.4, strategies=["self_instruct"], generation={"attempts_per_row": 3.5})
    expansion = expand_train(hotel_train[:5], settings, data, generator=scripted)
    tally = expansion.report["strategies"]["self_instruct"]
    assert tally["generated"] == 7 and tally["added"] == 2 and tally["duplicates"] == 1
    assert tally["rejected"] == {"low_quality": 1, "near_duplicate": 1, "too_long": 1, "unparseable": 1}
    assert [[m.content for m in r.messages] for r in expansion.records[5:]] == [
        ["Is there a heliport?", "Yes, on the roof of the east tower."], ["Do you sell stamps?", "Postage stamps are sold at the front desk."],
    ]
    reasons = {q["kind"]: q["reason"] for q in expansion.rejected}
    assert "data.quality_threshold" in reasons["low_quality"] and "data.max_chars=200" in reasons["too_long"]


def test_expand_dataset_with_a_model_writes_a_child_version(tiny_base, tmp_path):
    settings = make_settings(
        tmp_path / "work",
        data={"sources": [{"path": str(HOTEL)}]},
        train={"base_model": str(tiny_base)},
        expand={"expansion_factor": 1.5, "strategies": ["reformulation", "paraphrase"], "generation": {"max_new_tokens": 16}},
    )
    parent = ingest_sources(settings)
    child = expand_dataset(settings, parent.id)
    assert child.parent == parent.id and child.id != parent.id
    assert child.counts["validation"] == parent.counts["validation"]
    assert child.counts["train"] == math.ceil(parent.counts["train"] * 1.5)
    report = child.report["expansion"]
    assert report["generator"].startswith("base model") and "no production version" in report["generator"]
    assert report["strategies"]["paraphrase"]["generated"] > 0
    assert child.origins["original"] == parent.counts["train"] + parent.counts["validation"]
    assert sum(v for k, v in child.origins.items() if k != "original") == report["train_after"] - report["train_before"]
    if child.quarantined:
        lines = [json.loads(line) for line in open(child.quarantine_file)]
        assert len(lines) == child.quarantined and all(line["location"].startswith("expand:") for line in lines)
    stored = dataset_split(settings, child, "train")
    assert all(r.meta["parent_id"] in {p.id for p in dataset_split(settings, parent, "train")} for r in stored if r.origin != "original")
    assert expand_dataset(settings.model_copy(update={"expand": settings.expand.model_copy(update={"expansion_factor": 1.0})}), parent.id).id == parent.id


def test_expand_flow_publishes_the_report_and_the_cli_prints_it(prefect_api, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from typer.testing import CliRunner

    from fragua.cli import app
    from fragua.flows.expand import expand_flow

    work = tmp_path / "work"
    settings = make_settings(work, data={"sources": [{"path": str(EXAMPLES)}]}, expand={"expansion_factor": 2.0})
    state = expand_flow(settings, return_state=True)
    manifest = state.result()
    assert manifest.parent and manifest.report["expansion"]["achieved_factor"] == 2.0

    async def read():
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
            return {a.key: a for a in found}

    artifacts = asyncio.run(read())
    assert artifacts["dataset-expansion"].type == "table" and artifacts["dataset-expanded"].type == "markdown"
    markdown = artifacts["dataset-expanded"].data
    assert "## Per strategy" in markdown and "## Per domain" in markdown and "## Examples" in markdown
    assert "mcq_permutation" in markdown and "reformulation" in markdown

    result = CliRunner().invoke(app, ["--work-dir", str(work), "--set", "expand.expansion_factor=2", "expand", "--dataset", manifest.parent],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Expansion of" in result.output and "Train rows per domain" in result.output and "Examples" in result.output
    assert "Held-out guard" in result.output and manifest.id in result.output


def test_generation_settings_are_validated():
    with pytest.raises(ValueError, match="top_p"):
        ExpandGenerationSettings(top_p=1.5)
    with pytest.raises(ValueError, match="strategies"):
        ExpandSettings(strategies=["mcq_permutation", "mcq_permutation"])
