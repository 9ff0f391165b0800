from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fragua.data.ingest import IngestError, collect, ingest
from fragua.data.splits import assign_split
from fragua.data.store import load_records
from fragua.settings import DataSettings

from .conftest import EXAMPLES


def data_settings(*paths: Path, **extra) -> DataSettings:
    return DataSettings(sources=[{"path": str(p)} for p in paths], **extra)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n" for row in rows), encoding="utf-8")
    return path


def qa(i: int) -> dict:
    return {"instruction": f"Question number {i}?", "output": f"Answer number {i}."}


def test_shipped_examples_ingest_with_every_row_accounted_for(tmp_path):
    manifest = ingest(data_settings(EXAMPLES), tmp_path)
    assert {s.format for s in manifest.sources} == {"alpaca", "chat", "multiple_choice"}
    for source in manifest.sources:
        assert source.rows == source.kept + source.duplicates + source.quarantined
    assert sum(manifest.counts.values()) == sum(s.kept for s in manifest.sources)
    assert set(manifest.domains) == {"hotel", "ml"}
    assert manifest.counts["validation"] > 0 and manifest.counts["train"] > manifest.counts["validation"]
    train = load_records(manifest, "train")
    assert all(r.split == "train" for r in train)
    assert any(r.choices for r in train)


def test_bad_rows_are_quarantined_with_file_line_and_reason(tmp_path):
    source = write_jsonl(
        tmp_path / "mixed.jsonl",
        [qa(1), qa(2), '{"instruction": "truncated', {"instruction": "Q?", "output": ""}, {"instruction": "Q?", "output": 7}, qa(3), qa(4), qa(5), qa(1)],
    )
    result = collect(data_settings(source))
    report = result.sources[0]
    assert (report.rows, report.kept, report.duplicates, report.quarantined) == (9, 5, 1, 3)
    reasons = {q.location: q.reason for q in result.quarantined}
    assert reasons["line 3"].startswith("invalid JSON")
    assert "empty assistant message" in reasons["line 4"]
    assert "'output' must be a string" in reasons["line 5"]
    assert all(q.source == str(source) for q in result.quarantined)


def test_quarantine_file_is_written_next_to_the_dataset(tmp_path):
    rows = [qa(i) for i in range(20)] + [{"instruction": "", "output": "x"}]
    manifest = ingest(data_settings(write_jsonl(tmp_path / "d.jsonl", rows), validation_fraction=0.3), tmp_path / "store")
    lines = Path(manifest.quarantine_file).read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["location"] == "line 21" and "empty user message" in entry["reason"] and entry["row"] == rows[-1]


def test_invalid_utf8_line_is_quarantined(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b"".join(json.dumps(qa(i)).encode() + b"\n" for i in range(5)) + b'{"instruction": "caf\xe9", "output": "x"}\n')
    result = collect(data_settings(path))
    assert result.quarantined[0].location == "line 6" and "invalid UTF-8" in result.quarantined[0].reason


def test_missing_file_fails_naming_it(tmp_path):
    with pytest.raises(IngestError, match=r"nope\.jsonl: no such file"):
        collect(data_settings(tmp_path / "nope.jsonl"))


def test_malformed_json_file_fails_naming_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c", "output": \n')
    with pytest.raises(IngestError, match=r"broken\.json: line 4"):
        collect(data_settings(path))


def test_mostly_unusable_file_fails_naming_first_bad_line(tmp_path):
    path = write_jsonl(tmp_path / "garbage.jsonl", [qa(1), "not json", "{also not", "[1, 2]"])
    with pytest.raises(IngestError, match=r"garbage\.jsonl: 3 of 4 rows.*line 2"):
        collect(data_settings(path))


def test_unknown_format_names_the_formats_tried(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"text": "hello", "label": 1}])
    with pytest.raises(IngestError, match=r"odd\.jsonl: unknown format.*chat, sharegpt, squad, head_qa, multiple_choice, alpaca, prompt_completion"):
        collect(data_settings(path))


def test_empty_file_fails(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(IngestError, match="no rows"):
        collect(data_settings(path))


def test_json_csv_and_parquet_containers(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"data": [qa(1), qa(2)]}))
    (tmp_path / "b.csv").write_text('\ufeffprompt,completion\n"What, exactly?","This."\nSecond?,Yes.\n', encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([{"question": "Pick", "choices": ["x", "y"], "answer": 1}]), tmp_path / "c.parquet")
    result = collect(data_settings(tmp_path))
    formats = {Path(s.path).suffix: s.format for s in result.sources}
    assert formats == {".json": "alpaca", ".csv": "prompt_completion", ".parquet": "multiple_choice"}
    assert len(result.records) == 5 and not result.quarantined
    csv_record = next(r for r in result.records if r.source.endswith("b.csv"))
    assert csv_record.messages[0].content == "What, exactly?"


def test_explicit_format_overrides_detection(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "q", "completion": "a", "instruction": "i", "output": "o"}])
    auto = collect(data_settings(path)).records[0]
    forced = collect(DataSettings(sources=[{"path": str(path), "format": "prompt_completion"}])).records[0]
    assert auto.messages[0].content == "i" and forced.messages[0].content == "q"
    assert forced.meta == {"instruction": "i", "output": "o", "location": "line 1"}


def test_same_input_gives_same_dataset_id(tmp_path):
    settings = data_settings(EXAMPLES / "batch1")
    first = ingest(settings, tmp_path / "one")
    second = ingest(settings, tmp_path / "two")
    assert first.id == second.id
    assert ingest(data_settings(EXAMPLES / "batch1", split_seed=99), tmp_path / "one").id != first.id


def test_split_is_stable_when_data_grows(tmp_path):
    small = {r.id: r.split for r in collect(data_settings(EXAMPLES / "batch1")).records}
    large = {r.id: r.split for r in collect(data_settings(EXAMPLES / "batch1", EXAMPLES / "batch2")).records}
    assert small and all(large[i] == split for i, split in small.items())


def test_split_fraction_is_respected_and_deterministic():
    groups = [f"g{i}" for i in range(4000)]
    splits = [assign_split(g, 13, 0.2) for g in groups]
    assert splits == [assign_split(g, 13, 0.2) for g in groups]
    assert 0.17 < splits.count("validation") / len(groups) < 0.23


def test_empty_validation_split_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", [qa(1)])
    with pytest.raises(IngestError, match="split is empty"):
        ingest(data_settings(path), tmp_path / "store")
