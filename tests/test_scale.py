"""Sharded ingest: any task runner (threads, a local Dask cluster) gives the version a plain ingest gives."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from fragua.data.ingest import ingest
from fragua.data.shards import plan_shards, shard_batches, threaded_mapper
from fragua.data.sources import expand_sources
from fragua.settings import DataSettings, ScaleSettings, SourceSpec

from .conftest import make_settings
from .prefect_runs import tagged, task_runs

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


@pytest.fixture(scope="module")
def mixed_for_expansion(tmp_path_factory) -> Path:
    """Fewer rows of every bench format: expansion's shards are cut smaller instead (scale.expand_shard_rows)."""
    folder = tmp_path_factory.mktemp("mixed-small")
    generate(folder, 4_000, seed=3)
    return folder


@pytest.fixture(scope="module")
def dask_cluster():
    """A two-worker local Dask cluster on 127.0.0.1, shared by this module's flows (scale.address).
    A cluster started by the task runner itself (no address) is what bench/expand.py runs, in tests/test_bench.py."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as cluster:
        yield cluster.scheduler_address


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


@pytest.mark.slow
def test_ingest_flow_on_a_two_worker_local_dask_cluster_gives_the_default_runners_id(prefect_api, mixed, dask_cluster, tmp_path):
    from fragua.flows.ingest import ingest_flow

    data = {"sources": [{"path": str(mixed)}], "max_rejected_fraction": 1.0, "batch_size": 1000}
    default = ingest_flow(make_settings(tmp_path / "threads", data=data, scale={"shard_bytes": 1 << 18}))
    on_dask = ingest_flow(make_settings(tmp_path / "dask", data=data, scale={"task_runner": "dask", "address": dask_cluster, "shard_bytes": 1 << 18}))
    plain = ingest(DataSettings(**data), tmp_path / "plain")
    assert default.id == on_dask.id == plain.id
    assert json.loads(default.model_dump_json(include={"counts", "duplicates", "quarantined"})) == json.loads(
        on_dask.model_dump_json(include={"counts", "duplicates", "quarantined"})
    )


@pytest.mark.parametrize("runner", ["threads", "dask"])
def test_eval_batch_flow_scores_shards_as_tasks_like_one_process(prefect_api, tiny_base, tmp_path, runner, request):
    from fragua.flows.eval_batch import eval_batch_flow
    from fragua.inference.choice import resolve_model
    from fragua.validate.batch import run_eval_batch

    from .test_batch_eval import QUESTIONS, write_jsonl

    questions = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    where = {"address": request.getfixturevalue("dask_cluster")} if runner == "dask" else {"workers": 2}
    settings = make_settings(tmp_path / "work", validate={"max_new_tokens": 8}, scale={"task_runner": runner, "eval_shard_items": 2, **where})
    single = run_eval_batch(settings, questions, resolve_model(settings, path=tiny_base), tmp_path / "single.json")
    sharded = eval_batch_flow(str(questions), str(tmp_path / "sharded.json"), settings=settings, path=str(tiny_base))
    assert [i.id for i in sharded.items] == [i.id for i in single.items] and len(single.items) == 6
    assert sharded.overall.n == single.overall.n == 6
    for ours, theirs in zip(sharded.items, single.items):
        assert ours.answer_nll == pytest.approx(theirs.answer_nll, rel=1e-4, abs=1e-6) if theirs.answer_nll is not None else ours.answer_nll is None
    assert (tmp_path / "sharded.json").is_file()


SHARD_ROWS = 700  # rows per survey shard: 4 of mixed_for_expansion's train split, and 18 variant shards


@pytest.mark.slow
def test_expand_flow_on_a_two_worker_local_dask_cluster_gives_the_in_process_version(prefect_api, mixed_for_expansion, dask_cluster, tmp_path):
    from fragua.flows.expand import expand_flow
    from fragua.flows.ingest import ingest_flow

    data = {"sources": [{"path": str(mixed_for_expansion)}], "max_rejected_fraction": 1.0, "batch_size": 1000}
    expanded, run_tags = {}, {}
    for runner, where in (("threads", {"workers": 2}), ("dask", {"address": dask_cluster})):
        settings = make_settings(tmp_path / runner, data=data, expand={"expansion_factor": 2.5},
                                 scale={"task_runner": runner, "expand_shard_rows": SHARD_ROWS, **where})
        with tagged() as run_tags[runner]:
            expanded[runner] = expand_flow(settings, ingest_flow(settings).id)
    threads, dask = expanded["threads"], expanded["dask"]
    assert dask.id == threads.id and dask.parent == threads.parent
    assert dask.report == threads.report and dask.quarantined == threads.quarantined
    report = threads.report["expansion"]
    assert report["achieved_factor"] == pytest.approx(2.5, abs=1e-3) and len([s for s in report["strategies"].values() if s["added"]]) >= 3
    for split in threads.counts:
        assert pq.read_table(dask.split_path(split)).equals(pq.read_table(threads.split_path(split)))

    names = [r.name for r in task_runs(run_tags["dask"], "parents from") + task_runs(run_tags["dask"], "survey ") if r.state.is_completed()]
    train_rows = report["train_before"]
    assert sum(n.startswith("survey ") for n in names) == math.ceil(train_rows / SHARD_ROWS)  # every train row surveyed on the cluster
    assert sum("parents from" in n for n in names) > 3
