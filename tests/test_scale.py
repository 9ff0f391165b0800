"""Sharded ingest: any task runner (threads, a local Dask cluster) gives the version a plain ingest gives."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from fragua.ingest import ingest
from fragua.settings import DataSettings, ScaleSettings, SourceSpec
from fragua.shards import plan_shards, shard_batches, threaded_mapper
from fragua.sources import expand_sources

from .conftest import make_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from ingest import generate  # noqa: E402  (bench/ingest.py: mixed formats, duplicates, bad and broken rows)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Every bench format as JSONL (with a BOM on one file), plus one as multi-row-group Parquet and CSV."""
    folder = tmp_path_factory.mktemp("mixed")
    generate(folder, 12_000, seed=3)
    alpaca = [orjson.loads(line) for line in (folder / "alpaca.jsonl").read_bytes().splitlines()]
    pq.write_table(pa.Table.from_pylist(alpaca[:1500]), folder / "alpaca_copy.parquet", row_group_size=200)
    (folder / "chat.jsonl").write_bytes(b"\xef\xbb\xbf" + (folder / "chat.jsonl").read_bytes())
    with (folder / "small.csv").open("w") as handle:
        handle.write("instruction,output\n" + "".join(f"Question {i}?,Answer number {i}.\n" for i in range(50)))
    return folder


def _quarantine(manifest) -> list[str]:
    path = Path(manifest.path) / "quarantine.jsonl"
    # Within a batch, format errors are listed before near-duplicates, so the order of the
    # lines follows the batch boundaries; the entries are the same.
    return sorted(path.read_text().splitlines()) if path.is_file() else []


@pytest.mark.parametrize("near", [False, True])
def test_sharded_ingest_gives_the_plain_ingest_version(mixed, tmp_path, near):
    settings = DataSettings(sources=[{"path": str(mixed)}], max_rejected_fraction=1.0, near_dedupe=near, batch_size=1000)
    plain = ingest(settings, tmp_path / "plain")
    sharded = ingest(settings, tmp_path / "sharded", map_shards=threaded_mapper(2, 3), shard_bytes=1 << 18)
    assert sharded.id == plain.id
    assert sharded.counts == plain.counts and sharded.domains == plain.domains
    assert [s.model_dump() for s in sharded.sources] == [s.model_dump() for s in plain.sources]
    assert _quarantine(sharded) == _quarantine(plain)
    for split in plain.counts:
        assert pq.read_table(sharded.split_path(split)).equals(pq.read_table(plain.split_path(split)))


def test_jsonl_shards_start_at_lines_and_number_them_as_the_whole_file(mixed):
    source = next(s for s in expand_sources([SourceSpec(path=str(mixed / "chat.jsonl"))]))
    shards = plan_shards(source, 1 << 18)
    assert len(shards) > 3
    data = source.path.read_bytes()
    assert all(data[s.start - 1: s.start] == b"\n" for s in shards[1:])
    assert [s.stop for s in shards[:-1]] == [s.start for s in shards[1:]] and shards[-1].stop is None
    assert all(s.first == data[: s.start].count(b"\n") + 1 for s in shards)
    locations = [loc for s in shards for raw in shard_batches(s, 500) for loc in raw.locations.to_pylist() + [f[0] for f in raw.failures]]
    assert sorted(int(loc.split()[1]) for loc in locations) == list(range(1, data.count(b"\n") + 1))


def test_parquet_shards_follow_row_groups(mixed):
    source = next(s for s in expand_sources([SourceSpec(path=str(mixed / "alpaca_copy.parquet"))]))
    shards = plan_shards(source, 1)
    assert len(shards) == 8 and [s.first for s in shards] == [200 * i for i in range(8)]
    assert shards[-1].stop == 8
    last = list(shard_batches(shards[-1], 64))
    assert last[0].locations[0].as_py() == "row 1400" and sum(b.rows for b in last) == 100


def test_address_needs_a_cluster_runner():
    with pytest.raises(ValidationError, match="scale.address"):
        ScaleSettings(address="tcp://127.0.0.1:8786")


def test_ingest_flow_on_a_two_worker_local_dask_cluster_gives_the_default_runners_id(prefect_api, mixed, tmp_path):
    from flows.ingest import ingest_flow

    data = {"sources": [{"path": str(mixed)}], "max_rejected_fraction": 1.0, "batch_size": 1000}
    default = ingest_flow(make_settings(tmp_path / "threads", data=data, scale={"shard_bytes": 1 << 18}))
    on_dask = ingest_flow(make_settings(tmp_path / "dask", data=data, scale={"task_runner": "dask", "workers": 2, "shard_bytes": 1 << 18}))
    plain = ingest(DataSettings(**data), tmp_path / "plain")
    assert default.id == on_dask.id == plain.id
    assert json.loads(default.model_dump_json(include={"counts", "duplicates", "quarantined"})) == json.loads(
        on_dask.model_dump_json(include={"counts", "duplicates", "quarantined"})
    )


@pytest.mark.parametrize("runner", ["threads", "dask"])
def test_eval_batch_flow_scores_shards_as_tasks_like_one_process(prefect_api, tiny_base, tmp_path, runner):
    from flows.eval_batch import eval_batch_flow
    from fragua.batch_eval import run_eval_batch
    from fragua.inference import resolve_model

    from .test_batch_eval import QUESTIONS, write_jsonl

    questions = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    settings = make_settings(tmp_path / "work", validate={"max_new_tokens": 8}, scale={"task_runner": runner, "workers": 2, "eval_shard_items": 2})
    single = run_eval_batch(settings, questions, resolve_model(settings, path=tiny_base), tmp_path / "single.json")
    sharded = eval_batch_flow(str(questions), str(tmp_path / "sharded.json"), settings=settings, path=str(tiny_base))
    assert [i.id for i in sharded.items] == [i.id for i in single.items] and len(single.items) == 6
    assert sharded.overall.n == single.overall.n == 6
    for ours, theirs in zip(sharded.items, single.items):
        assert ours.answer_nll == pytest.approx(theirs.answer_nll, rel=1e-4, abs=1e-6) if theirs.answer_nll is not None else ours.answer_nll is None
    assert (tmp_path / "sharded.json").is_file()


def test_expand_flow_on_a_two_worker_local_dask_cluster_gives_the_in_process_version(prefect_api, mixed, tmp_path):
    from flows.ingest import expand_flow, ingest_flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    data = {"sources": [{"path": str(mixed)}], "max_rejected_fraction": 1.0, "batch_size": 1000}
    expanded = {}
    for runner in ("threads", "dask"):
        settings = make_settings(tmp_path / runner, data=data, expand={"expansion_factor": 2.5},
                                 scale={"task_runner": runner, "workers": 2, "expand_shard_rows": 700})
        expanded[runner] = expand_flow(settings, ingest_flow(settings).id)
    threads, dask = expanded["threads"], expanded["dask"]
    assert dask.id == threads.id and dask.parent == threads.parent
    assert dask.report == threads.report and dask.quarantined == threads.quarantined
    report = threads.report["expansion"]
    assert report["achieved_factor"] == pytest.approx(2.5, abs=1e-3) and len([s for s in report["strategies"].values() if s["added"]]) >= 3
    for split in threads.counts:
        assert pq.read_table(dask.split_path(split)).equals(pq.read_table(threads.split_path(split)))

    async def shard_runs() -> list[str]:
        async with get_client() as client:
            runs = await client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="parents from")))
            surveys = await client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="survey ")))
            return [r.name for r in runs + surveys if r.state.is_completed()]

    names = asyncio.run(shard_runs())
    train_rows = report["train_before"]
    assert sum(n.startswith("survey ") for n in names) == math.ceil(train_rows / 700)  # every train row surveyed on the cluster
    assert sum("parents from" in n for n in names) > 3
