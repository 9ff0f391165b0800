"""Quality filtering: every bad-input kind, the quality score, near-duplicates, and the
conservation invariant rows = kept + duplicates + quarantined per source."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fragua.data.formats.adapt import from_alpaca
from fragua.data.ingest import collect, ingest
from fragua.data.quality import COMPONENTS
from fragua.data.records import REJECTION_KINDS
from fragua.settings import DataSettings

from .conftest import EXAMPLES


def settings_for(*paths: Path, **extra) -> DataSettings:
    extra.setdefault("max_rejected_fraction", 1.0)
    return DataSettings(sources=[{"path": str(p)} for p in paths], **extra)


def write_jsonl(path: Path, rows: list) -> Path:
    with path.open("wb") as handle:
        for row in rows:
            data = row if isinstance(row, bytes) else (row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)).encode()
            handle.write(data + b"\n")
    return path


def qa(i: int) -> dict:
    return {"instruction": f"What is the answer to question number {i}?", "output": f"The answer to question {i} is {i * 7}."}


def reasons(result) -> dict[str, str]:
    return {q.location: (q.kind, q.reason) for q in result.quarantined}


def test_every_bad_input_kind_is_quarantined_with_location_kind_and_reason(tmp_path):
    rows = [
        qa(1),
        b'{"instruction": "caf\xe9?", "output": "x"}',  # line 2: invalid UTF-8
        '{"instruction": "unterminated',  # 3: invalid JSON
        "[1, 2, 3]",  # 4: not an object
        {"instruction": "Where is the pool?"},  # 5: missing output
        {"instruction": "Where is the pool?", "output": ["eighth", "floor"]},  # 6: wrong type
        {"instruction": "Where is the pool?", "output": "   \t "},  # 7: whitespace only
        {"instruction": "Where is the pool?", "output": "x" * 301},  # 8: too long (max_chars=300)
        {"instruction": "Hi", "output": "On the eighth floor."},  # 9: too short (min_chars=3)
        {"instruction": "Where is the pool?", "output": "where is the   POOL?"},  # 10: echo -> low quality
        {"instruction": "Where is the pool?", "output": "N/A"},  # 11: placeholder
        {"instruction": "Where is the pool?", "output": "#$%&*@!! {}[]<> ~~ ^^ || ;; :: ++ == --"},  # 12: symbols
        {"instruction": "Where is the pool?", "output": "THE POOL IS ON THE EIGHTH FLOOR, NEXT TO THE BAR"},  # 13: shouting
        {"instruction": "Where is the pool?", "output": "Lorem ipsum dolor sit amet."},  # 14: placeholder
        {"instruction": "Where is the pool?", "output": "On the eighth floor.", "domain": "  "},  # 15: blank domain
        '{"instruction": "Where is the pool?", "output": NaN}',  # 16: NaN is not JSON
        qa(2),
        qa(1),  # 18: exact duplicate of line 1
        {"instruction": "WHAT is the answer to  question number 2? ", "output": "the answer to question 2 is 14."},  # 19: duplicate after normalisation
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = collect(settings_for(path, max_chars=300, min_chars=3))
    report = result.sources[0]
    assert (report.rows, report.kept, report.duplicates, report.quarantined) == (19, 2, 2, 15)
    found = reasons(result)
    expected = {
        "line 2": ("invalid_utf8", "invalid UTF-8 at byte"),
        "line 3": ("invalid_json", "invalid JSON"),
        "line 4": ("not_an_object", "expected a JSON object, got list"),
        "line 5": ("missing_field", "missing field 'output'"),
        "line 6": ("wrong_type", "field 'output' must be a string, got list"),
        "line 7": ("empty", "empty assistant message (messages[1])"),
        "line 8": ("too_long", "assistant message has 301 characters, above data.max_chars=300"),
        "line 9": ("too_short", "user message has 2 characters, below data.min_chars=3"),
        "line 10": ("low_quality", "echo=0.00"),
        "line 11": ("low_quality", "placeholder=0.00"),
        "line 12": ("low_quality", "symbols=0.00"),
        "line 13": ("low_quality", "shouting=0.00"),
        "line 14": ("low_quality", "placeholder=0.00"),
        "line 15": ("invalid_value", "field 'domain' must be a non-empty string"),
        "line 16": ("invalid_json", "invalid JSON"),
    }
    assert set(found) == set(expected)
    for location, (kind, fragment) in expected.items():
        assert found[location][0] == kind, location
        assert fragment in found[location][1], (location, found[location][1])
    assert report.reasons == dict(Counter(kind for kind, _ in expected.values()))
    by_location = {q.location: q for q in result.quarantined}
    assert by_location["line 6"].row == rows[5]  # the row as the user wrote it
    assert by_location["line 3"].row is None and by_location["line 3"].text == rows[2]  # unparseable: its text


def test_quality_reason_lists_every_component_and_threshold_is_configurable(tmp_path):
    path = write_jsonl(tmp_path / "echo.jsonl", [qa(1), {"instruction": "Where is the pool?", "output": "Where is the pool?"}])
    strict = collect(settings_for(path))
    assert strict.sources[0].quarantined == 1
    reason = strict.quarantined[0].reason
    assert reason.startswith("quality score 0.75 below data.quality_threshold=0.8")
    assert all(f"{name}=" in reason for name in COMPONENTS)
    assert collect(settings_for(path, quality_threshold=0.7)).sources[0].kept == 2
    assert collect(settings_for(path, quality_threshold=0.0)).sources[0].kept == 2


def test_shipped_examples_pass_the_default_quality_threshold(tmp_path):
    result = collect(DataSettings(sources=[{"path": str(EXAMPLES)}]))
    assert DataSettings().quality_threshold == 0.8
    assert not result.quarantined
    assert sum(s.duplicates for s in result.sources) == 0


def test_short_and_non_english_answers_are_not_penalised(tmp_path):
    rows = [
        {"question": "2+2?", "choices": ["3", "4"], "answer": "B"},
        {"instruction": "¿En qué planta está la piscina?", "output": "En la octava planta, junto al bar."},
        {"instruction": "プールは何階ですか？", "output": "8階です。"},
        {"instruction": "What does DPO stand for?", "output": "DPO"},
        {"prompt": "Write the regex for digits.", "completion": r"\d+"},
    ]
    paths = [write_jsonl(tmp_path / f"r{i}.jsonl", [row]) for i, row in enumerate(rows)]
    result = collect(settings_for(*paths))
    assert not result.quarantined, [q.reason for q in result.quarantined]


def test_conservation_invariant_across_containers(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [qa(1), qa(2), "{broken", qa(1), {"instruction": "", "output": "x"}])
    (tmp_path / "b.json").write_text(json.dumps([qa(2), qa(3), 7, {"instruction": "Q?", "output": 5}]))
    (tmp_path / "c.csv").write_text('prompt,completion\n"What time is breakfast?","From 7:00 to 10:30."\nextra,fields,here\n"What time is breakfast?","From 7:00 to 10:30."\n', encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([{"question": "Pick one", "choices": ["x", "y"], "answer": "Z"}, {"question": "Pick one", "choices": ["x", "y"], "answer": "B"}]), tmp_path / "d.parquet")
    manifest = ingest(settings_for(tmp_path, validation_fraction=0.5, split_seed=3), tmp_path / "store")
    for source in manifest.sources:
        assert source.rows == source.kept + source.duplicates + source.quarantined, source
        assert sum(source.reasons.values()) == source.quarantined
    assert [(Path(s.path).name, s.rows, s.kept, s.duplicates, s.quarantined) for s in manifest.sources] == [
        ("a.jsonl", 5, 2, 1, 2), ("b.json", 4, 1, 1, 2), ("c.csv", 3, 1, 1, 1), ("d.parquet", 2, 1, 0, 1)]
    assert sum(manifest.counts.values()) == sum(s.kept for s in manifest.sources)
    lines = Path(manifest.quarantine_file).read_text(encoding="utf-8").splitlines()
    assert len(lines) == manifest.quarantined == 6
    entries = [json.loads(line) for line in lines]
    assert {(Path(e["source"]).name, e["location"]) for e in entries} == {
        ("a.jsonl", "line 3"), ("a.jsonl", "line 5"), ("b.json", "[2]"), ("b.json", "[3]"), ("c.csv", "line 3"), ("d.parquet", "row 0")}
    assert all(e["reason"] and e["kind"] in REJECTION_KINDS for e in entries)
    assert manifest.rejected == dict(sorted(Counter(e["kind"] for e in entries).items()))


def _random_rows(rng: random.Random, count: int) -> list:
    """Good rows with duplicates, near-variants and every kind of fault mixed in."""
    rows: list = []
    for i in range(count):
        roll = rng.random()
        base = qa(rng.randrange(count // 2))
        if roll < 0.55:
            rows.append(base)
        elif roll < 0.65:
            rows.append({**base, "instruction": base["instruction"].upper() + "  "})  # duplicate after normalisation
        elif roll < 0.70:
            rows.append(b'{"instruction": "\xff\xfe", "output": "x"}')
        elif roll < 0.75:
            rows.append('{"instruction": ')
        elif roll < 0.80:
            rows.append({"instruction": base["instruction"], "output": rng.choice([None, 3, "", "n/a", ["x"]])})
        elif roll < 0.85:
            rows.append({"instruction": base["instruction"], "output": base["output"], "lang": rng.choice(["en", 1, None, {"k": "v"}])})
        elif roll < 0.90:
            rows.append("")  # blank line: not a row
        else:
            rows.append({"messages": [{"role": "user", "content": base["instruction"]}, {"role": "assistant", "content": base["output"]}]})
    return rows


@pytest.mark.parametrize("seed", [0, 1])
def test_conservation_and_results_do_not_depend_on_the_batch_size(tmp_path, seed):
    rows = _random_rows(random.Random(seed), 600)
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    blank = sum(1 for r in rows if r == "")
    results = {}
    for batch_size in (64, 97, 5000):
        manifest = ingest(settings_for(path, batch_size=batch_size), tmp_path / f"store-{batch_size}")
        source = manifest.sources[0]
        assert source.rows == len(rows) - blank
        assert source.rows == source.kept + source.duplicates + source.quarantined
        assert len(Path(manifest.quarantine_file).read_text().splitlines()) == source.quarantined
        results[batch_size] = (manifest.id, source.kept, source.duplicates, source.quarantined, tuple(manifest.rejected.items()))
    assert len(set(results.values())) == 1, results


def test_near_duplicates_are_quarantined_naming_the_kept_row(tmp_path):
    base = "The rooftop pool on the eighth floor is open every day from nine in the morning until nine in the evening"
    rows = [
        {"instruction": "When is the rooftop pool open?", "output": base + "."},
        {"instruction": "When is the rooftop pool open?", "output": base + ", all year."},  # near-duplicate
        {"instruction": "Where can I park my car near the hotel?", "output": "The public car park on Calle Mayor is two minutes away on foot."},
    ]
    path = write_jsonl(tmp_path / "near.jsonl", rows)
    exact_only = collect(settings_for(path))
    assert exact_only.sources[0].kept == 3
    result = collect(settings_for(path, near_dedupe=True, near_dedupe_threshold=0.8))
    report = result.sources[0]
    assert (report.rows, report.kept, report.quarantined, report.reasons) == (3, 2, 1, {"near_duplicate": 1})
    kept_first = next(r for r in result.records if r.meta["location"] == "line 1")
    entry = result.quarantined[0]
    assert entry.location == "line 2" and entry.kind == "near_duplicate"
    assert f"near-duplicate of record {kept_first.id}" in entry.reason and "estimated similarity" in entry.reason
    strict = collect(settings_for(path, near_dedupe=True, near_dedupe_threshold=0.95))
    assert strict.sources[0].kept == 3


def test_near_duplicate_detection_is_deterministic(tmp_path):
    rows = [{"instruction": f"Tell me about room {i % 40} of the hotel please", "output": f"Room {i % 40} has a view of the old town and a balcony {i % 3}."} for i in range(200)]
    path = write_jsonl(tmp_path / "rooms.jsonl", rows)
    first = collect(settings_for(path, near_dedupe=True, near_dedupe_threshold=0.7))
    second = collect(settings_for(path, near_dedupe=True, near_dedupe_threshold=0.7))
    assert [q.reason for q in first.quarantined] == [q.reason for q in second.quarantined]
    assert 0 < first.sources[0].quarantined < 200


def test_row_level_adapter_rejects_what_ingest_rejects():
    with pytest.raises(ValueError, match="missing field 'output'") as caught:
        from_alpaca({"instruction": "Q?"})
    assert caught.value.kind == "missing_field"


def test_csv_that_is_not_utf8_fails_naming_the_file(tmp_path):
    from fragua.data.ingest import IngestError

    path = tmp_path / "latin1.csv"
    path.write_bytes("prompt,completion\nWhere is the café?,Downstairs.\n".encode("latin-1"))
    with pytest.raises(IngestError, match=r"latin1\.csv: not valid UTF-8 .*save it as UTF-8"):
        collect(settings_for(path))


def test_values_arrow_would_reinterpret_are_kept_as_written(tmp_path):
    rows = [
        {"instruction": "When did the hotel open?", "output": "In 1998.", "opened": "1998-05-01", "rating": 4.5},
        {"instruction": "When was the pool renovated?", "output": "In 2021.", "opened": "2021-03-15T10:00:00", "rating": 4},
    ]
    path = write_jsonl(tmp_path / "dates.jsonl", rows)
    records = sorted(collect(settings_for(path)).records, key=lambda r: r.meta["location"])
    assert [r.meta["opened"] for r in records] == ["1998-05-01", "2021-03-15T10:00:00"]
    assert [r.meta["rating"] for r in records] == [4.5, 4]  # one JSON number type: 4 may come back as 4.0


def test_lone_surrogates_and_byte_order_marks(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(qa(1)).encode() + b"\n" + b'{"instruction": "bad \\ud800 escape?", "output": "x"}\n' + json.dumps(qa(2)).encode() + b"\n")
    result = collect(settings_for(path))
    assert result.sources[0].kept == 2
    assert [(q.location, q.kind) for q in result.quarantined] == [("line 2", "invalid_json")]
