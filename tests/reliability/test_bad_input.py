"""The bad-input corpus (tests/data/bad/) through the real ``fragua ingest`` command.

Every file ends in one of two ways: the rows that do not fit are quarantined with their file,
location, kind and reason while the rest is ingested, or the whole file is refused with one
message naming the file (and line) and what to do. Never a traceback; for every source
rows = kept + duplicates + quarantined, and the row count is the file's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"
BIG_ANSWER_WORDS = 10_000_000  # "word " × 10 M: one 50 MB line

# file -> (rows in the file, kept, {kind: quarantined}, [(location, words the reason must hold)])
QUARANTINED = {
    "truncated.jsonl": (7, 6, {"invalid_json": 1}, [("line 7", ["invalid JSON", "column 38"])]),
    "wrong_types.jsonl": (8, 6, {"wrong_type": 2}, [("line 3", ["'output'", "string", "integer"]), ("line 5", ["'instruction'", "list"])]),
    "invalid_utf8.jsonl": (7, 6, {"invalid_utf8": 1}, [("line 4", ["invalid UTF-8", "byte 20"])]),
    "bom.jsonl": (6, 6, {}, []),
    "crlf.jsonl": (6, 6, {}, []),
    "bom_crlf.csv": (6, 6, {}, []),
    "head_qa_bad_ra.json": (5, 4, {"invalid_value": 1}, [("exams.cuaderno_2013_1_B.data[2]", ["ra 7", "(1, 2, 3)"])]),
    "squad_answer_outside_context.json": (6, 3, {"answer_not_in_context": 3}, [
        ("data[0].paragraphs[0].qas[1]", ["answer_start 500", "outside the context"]),
        ("data[0].paragraphs[0].qas[2]", ["'at the pool bar'", "not at answer_start 4"]),
        ("data[0].paragraphs[0].qas[5]", ["answer_start -3", "outside the context"]),
    ]),
    "chat_unknown_role.jsonl": (8, 6, {"invalid_value": 2}, [("line 3", ["messages[0].role 'narrator'"]), ("line 6", ["messages[1].role 'concierge'"])]),
    "one_50mb_line.jsonl": (4, 3, {"too_long": 1}, [("line 2", ["50000000 characters", "data.max_chars"])]),
}

# file -> what the one error line must say besides the file's name
REFUSED = {
    "truncated.json": ["line 24, column 3", "invalid JSON"],
    "invalid_utf8.json": ["not valid UTF-8 (byte 21)", "save it as UTF-8"],
    "empty.jsonl": ["the file has no rows"],
    "wrong_delimiter.csv": ["line 1", "separated by ';', not commas", "save the file comma-separated"],
    "unknown_shape.json": ["expected a JSON list of rows", "SQuAD", "HEAD-QA"],
}


def one_50mb_line(folder: Path) -> Path:
    """Generated, not committed: a JSONL file whose second line is a 50 MB row."""
    path = folder / "one_50mb_line.jsonl"
    with path.open("w") as out:
        out.write(json.dumps({"instruction": "Where can I leave my luggage?", "output": "At the front desk, any time of day."}) + "\n")
        out.write(json.dumps({"instruction": "Tell me everything.", "output": "word " * BIG_ANSWER_WORDS}) + "\n")
        out.write(json.dumps({"instruction": "Is there a safe in the room?", "output": "Yes, in the wardrobe, with a code you choose."}) + "\n")
        out.write(json.dumps({"instruction": "Can I borrow an umbrella?", "output": "Yes, ask at the front desk for one."}) + "\n")
    assert path.stat().st_size > 50_000_000
    return path


def dataset_versions(work: Path) -> list[Path]:
    folder = work / "datasets"
    return [p for p in folder.iterdir() if (p / "manifest.json").is_file()] if folder.is_dir() else []


def assert_no_traceback(output: str) -> None:
    assert "Traceback" not in output and 'File "' not in output, output[-3000:]


def test_bad_rows_are_quarantined_with_file_location_and_reason_and_every_row_is_counted(fragua_cli, tmp_path):
    sources = [BAD / name for name in QUARANTINED if name != "one_50mb_line.jsonl"] + [one_50mb_line(tmp_path)]
    work = tmp_path / "work"
    code, output = fragua_cli("ingest", *[arg for path in sources for arg in ("--source", str(path))], work_dir=work)
    assert code == 0, output[-3000:]
    assert_no_traceback(output)

    (dataset,) = dataset_versions(work)
    manifest = json.loads((dataset / "manifest.json").read_text())
    by_name = {Path(s["path"]).name: s for s in manifest["sources"]}
    assert set(by_name) == set(QUARANTINED)
    quarantine = [json.loads(line) for line in (dataset / "quarantine.jsonl").read_text().splitlines()]
    for name, (rows, kept, reasons, entries) in QUARANTINED.items():
        source = by_name[name]
        assert (source["rows"], source["kept"], source["reasons"]) == (rows, kept, reasons), name
        assert source["rows"] == source["kept"] + source["duplicates"] + source["quarantined"], name
        mine = [e for e in quarantine if Path(e["source"]).name == name]
        assert [e["location"] for e in mine] == [location for location, _ in entries], name
        for entry, (_, words) in zip(mine, entries):
            assert entry["kind"] in reasons and all(word in entry["reason"] for word in words), entry["reason"]
            assert entry.get("row") is not None or entry.get("text"), "the quarantined row is kept as the user wrote it"
    kept = sum(s["kept"] for s in manifest["sources"])
    assert sum(manifest["counts"].values()) == kept
    assert manifest["quarantined"] == len(quarantine) == sum(s["quarantined"] for s in manifest["sources"])

    texts = [m["content"] for split in ("train", "validation") if (dataset / f"{split}.parquet").is_file()
             for messages in pq.read_table(dataset / f"{split}.parquet", columns=["messages"]).column("messages").to_pylist()
             for m in messages]
    assert len(texts) >= 2 * kept
    assert not [t for t in texts if "\ufeff" in t or "\r" in t], "a BOM or a carriage return reached a record"
    assert any("shuttle note number 5" in t for t in texts) and any("minibar note number 5" in t for t in texts)
    assert "Tell me everything." in output or "too_long" in output  # the summary shows the quarantine


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_an_unusable_file_is_refused_with_one_clear_message(fragua_cli, tmp_path, name):
    work = tmp_path / "work"
    code, output = fragua_cli("ingest", "--source", str(BAD / name), work_dir=work)
    assert code == 1, output[-3000:]
    assert_no_traceback(output)
    (error,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert f"{BAD / name}:" in error and all(word in error for word in REFUSED[name]), error
    assert dataset_versions(work) == [], "no dataset version is written"
    assert not (work / "registry").exists()
