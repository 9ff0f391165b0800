"""Every input format and container, from files in the formats' real layouts (tests/fixtures/formats)."""

from __future__ import annotations

import importlib
import itertools
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fragua.data.formats import FORMAT_NAMES, FORMATS, detect_format
from fragua.data.formats.adapt import ADAPTERS, from_head_qa, from_sharegpt, from_squad
from fragua.data.ingest import IngestError, collect, ingest
from fragua.data.records import CHOICE_LETTERS
from fragua.settings import DataSettings, SourceSpec

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
README = Path(__file__).parent.parent / "README.md"


def run(*sources: dict | Path, **settings):
    specs = [s if isinstance(s, dict) else {"path": str(s)} for s in sources]
    return collect(DataSettings(sources=specs, **settings))


def by_meta(records, key):
    return {r.meta[key]: r for r in records}


def test_sharegpt_conversations_map_human_gpt_system_roles():
    result = run(FIXTURES / "sharegpt.json")
    assert result.sources[0].format == "sharegpt" and result.sources[0].kept == 3
    records = by_meta(result.records, "id")
    assert [(m.role, m.content) for m in records["conv-1"].messages] == [
        ("system", "You are the concierge of Hotel Fragua."),
        ("user", "Is there a pool?"),
        ("assistant", "Yes, the rooftop pool on the eighth floor is open from 9:00 to 21:00."),
    ]
    assert [m.role for m in records["conv-2"].messages] == ["user", "assistant", "user", "assistant"]
    assert records["conv-2"].answer == "LoRA on top of a 4-bit quantized base model."
    assert records["conv-3"].meta["location"] == "[2]"


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]}, r"conversations\[1\]\.from 'bot' is not one of"),
        ({"conversations": [{"from": "gpt", "value": "x"}]}, "no 'human' turn"),
        ({"conversations": [{"from": "human", "value": "x"}]}, "last turn must be the assistant's"),
        ({"conversations": []}, "non-empty list"),
    ],
)
def test_sharegpt_bad_rows(row, reason):
    with pytest.raises(ValueError, match=reason):
        from_sharegpt(row)


def test_squad_v1_nested_file_one_record_per_question_with_record_paths():
    result = run(FIXTURES / "squad_v1.1.json")
    report = result.sources[0]
    assert (report.format, report.rows, report.kept, report.quarantined, report.unanswerable) == ("squad", 7, 7, 0, 0)
    records = by_meta(result.records, "id")
    first = records["h-001"]
    assert first.messages[0].content.startswith("Context: Hotel Fragua opened in 1998")
    assert first.messages[0].content.endswith("\n\nQuestion: When did Hotel Fragua open?")
    assert first.answer == "1998" and first.messages[-1].content == "1998"
    assert first.meta["answers"] == {"text": ["1998", "in 1998"], "answer_start": [23, 20]}
    assert first.meta["title"] == "Hotel_Fragua"
    assert first.meta["location"] == "data[0].paragraphs[0].qas[0]"
    assert records["m-002"].meta["location"] == "data[1].paragraphs[0].qas[1]"


def test_all_questions_of_a_squad_paragraph_share_a_group_and_a_split():
    records = run(FIXTURES / "squad_v1.1.json", validation_fraction=0.5).records
    by_context: dict[str, set] = {}
    for record in records:
        context = record.messages[0].content.split("\n\nQuestion:")[0]
        by_context.setdefault(context, set()).add((record.meta["group"], record.split))
    assert len(by_context) == 3
    assert all(len(pairs) == 1 for pairs in by_context.values())


def test_squad_v2_unanswerable_kept_with_the_no_answer_target():
    result = run(FIXTURES / "squad_v2.0.json", no_answer_text="no answer in the context")
    report = result.sources[0]
    assert (report.rows, report.kept, report.unanswerable, report.quarantined) == (5, 5, 2, 0)
    records = by_meta(result.records, "id")
    assert records["v2-002"].answer == "no answer in the context"
    assert records["v2-002"].meta["is_impossible"] is True
    assert records["v2-002"].meta["plausible_answers"] == ["120"]
    assert records["v2-001"].answer == "1998"


def test_squad_v2_unanswerable_dropped_by_setting_are_counted_and_quarantined():
    result = run(FIXTURES / "squad_v2.0.json", squad_unanswerable="drop")
    report = result.sources[0]
    assert (report.rows, report.kept, report.unanswerable, report.quarantined, report.reasons) == (5, 3, 2, 2, {"unanswerable": 2})
    assert {q.location for q in result.quarantined} == {"data[0].paragraphs[0].qas[1]", "data[0].paragraphs[1].qas[0]"}
    assert all(q.row["id"] in ("v2-002", "v2-004") for q in result.quarantined)


def test_squad_flat_hf_rows_match_the_nested_file():
    flat = run(FIXTURES / "squad_v2_flat.jsonl")
    nested = run(FIXTURES / "squad_v2.0.json")
    assert flat.sources[0].format == "squad"
    assert sorted(r.id for r in flat.records) == sorted(r.id for r in nested.records)
    assert {r.meta["group"] for r in flat.records} == {r.meta["group"] for r in nested.records}


def test_head_qa_nested_file_with_string_ids_category_as_domain():
    result = run(FIXTURES / "head_qa_en.json")
    report = result.sources[0]
    assert (report.format, report.rows, report.kept, report.quarantined) == ("head_qa", 6, 6, 0)
    records = {(r.meta["name"].strip(), r.meta["qid"].strip()): r for r in result.records}
    trna = records[("Cuaderno_2013_1_B", "2")]  # qid " 2", ra " 2 ": strings with spaces
    assert trna.choices == ["mRNA", "tRNA", "rRNA", "snRNA"]
    assert trna.answer == "B" and trna.messages[-1].content == "B. tRNA"
    assert trna.messages[0].content == "Which molecule carries amino acids to the ribosome?\nA. mRNA\nB. tRNA\nC. rRNA\nD. snRNA"
    assert trna.domain == "biology" and trna.meta["category"] == "biology" and trna.meta["year"] == "2013"
    assert trna.meta["location"] == "exams.cuaderno_2013_1_B.data[1]"
    assert trna.meta["group"] == "head_qa:Cuaderno_2013_1_B:2"
    assert {r.domain for r in result.records} == {"biology", "medicine", "nursing"}
    assert records[("Cuaderno_2014_1_M", "13")].meta["image"] == "img_13.png"
    for record in result.records:
        assert record.choices[CHOICE_LETTERS.index(record.answer)] in record.messages[-1].content


def test_head_qa_flat_rows_from_parquet_with_integer_ids(tmp_path):
    rows = [
        {"name": "Cuaderno_2013_1_B", "year": "2013", "category": "biology", "qid": 1, "qtext": "Which organelle makes ATP?", "ra": 3,
         "answers": [{"aid": 1, "atext": "Ribosome"}, {"aid": 2, "atext": "Golgi"}, {"aid": 3, "atext": "Mitochondrion"}, {"aid": 4, "atext": "Lysosome"}],
         "image": None},
        {"name": "Cuaderno_2013_1_B", "year": "2013", "category": "biology", "qid": 2, "qtext": "Which RNA carries amino acids?", "ra": 9,
         "answers": [{"aid": 1, "atext": "mRNA"}, {"aid": 2, "atext": "tRNA"}], "image": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "head_qa.parquet")
    result = run(tmp_path / "head_qa.parquet", max_rejected_fraction=1.0)
    assert result.records[0].answer == "C" and result.records[0].choices[2] == "Mitochondrion"
    assert result.quarantined[0].location == "row 1" and "ra 9 matches no answer's aid (1, 2)" in result.quarantined[0].reason


def test_head_qa_row_level_adapter_reports_bad_answers():
    with pytest.raises(ValueError, match=r"answers\[1\] must have a numeric 'aid'"):
        from_head_qa({"qtext": "q", "ra": "1", "answers": [{"aid": "1", "atext": "x"}, {"aid": "one", "atext": "y"}]})
    draft = from_head_qa({"qtext": "q", "ra": " 2", "answers": [{"aid": " 1", "atext": "x"}, {"aid": "2 ", "atext": "y"}]})
    assert draft.answer == "B" and draft.choices == ["x", "y"]


def test_squad_row_level_adapter_options():
    row = {"context": "c", "question": "q?", "answers": {"text": [], "answer_start": []}}
    assert from_squad(row).answer == "unanswerable"
    with pytest.raises(ValueError, match="unanswerable question"):
        from_squad(row, squad_unanswerable="drop")


@pytest.mark.parametrize("answers, message", [
    ({"text": ["ten"], "answer_start": [500]}, r"answers\[0\]\.answer_start 500 is outside the context \(18 characters\)"),
    ({"text": ["", "ten"], "answer_start": [0, -1]}, r"answers\[1\]\.answer_start -1 is outside"),
    ([{"text": "seven", "answer_start": 0}], r"answers\[0\]\.text 'seven' is not at answer_start 0 in the context \(found 'Opens'\)"),
])
def test_squad_answer_start_must_point_at_the_answer_in_the_context(answers, message):
    row = {"context": "Opens at ten sharp", "question": "When?", "answers": answers}
    with pytest.raises(ValueError, match=message) as caught:
        from_squad(row)
    assert caught.value.kind == "answer_not_in_context"
    assert from_squad({**row, "answers": {"text": ["ten"], "answer_start": [9]}}).answer == "ten"
    assert from_squad({**row, "answers": {"text": ["ten"]}}).answer == "ten"  # no offset given: nothing to check


def test_explicit_format_override_for_a_nested_file(tmp_path):
    result = run({"path": str(FIXTURES / "head_qa_en.json"), "format": "head_qa", "domain": "health"})
    assert {r.domain for r in result.records} == {"health"}  # the source's domain beats the category


def test_datasets_save_to_disk_folder_dataset_dict_and_split_filter(tmp_path):
    import datasets

    rows = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(6)]
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:4]), "test": datasets.Dataset.from_list(rows[4:])}).save_to_disk(str(folder))
    result = run(folder)
    assert result.sources[0].path == str(folder) and result.sources[0].rows == 6
    assert {r.meta["location"] for r in result.records} >= {"train row 0", "test row 1"}
    only_test = run({"path": str(folder), "splits": ["test"]})
    assert only_test.sources[0].rows == 2
    with pytest.raises(IngestError, match=r"no split 'dev'; it has train, test"):
        run({"path": str(folder), "splits": ["dev"]})


def test_plain_folder_finds_save_to_disk_folders_inside_it(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"prompt": "p?", "completion": "c."}]).save_to_disk(str(tmp_path / "data" / "saved"))
    (tmp_path / "data" / "more.jsonl").write_text(json.dumps({"prompt": "q?", "completion": "d."}) + "\n")
    result = run(tmp_path / "data")
    assert [(Path(s.path).name, s.rows) for s in result.sources] == [("more.jsonl", 1), ("saved", 1)]


def test_hub_dataset_source_loads_through_datasets(tmp_path, monkeypatch):
    # A dataset repository laid out as on the hub, loaded by path: the same code path as
    # hf:owner/name, minus the download.
    repo = tmp_path / "acme-faq"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "train.jsonl").write_text("".join(json.dumps({"question": f"Q{i}?", "choices": ["a", "b"], "answer": i % 2}) + "\n" for i in range(4)))
    result = run({"path": f"hf:{repo}"})
    assert result.sources[0].path == f"hf:{repo}" and result.sources[0].format == "multiple_choice" and result.sources[0].kept == 4
    assert result.records[0].meta["location"].startswith("train row ")


def test_hub_dataset_offline_fails_naming_the_dataset(monkeypatch):
    import datasets
    import huggingface_hub.constants

    # HF_HUB_OFFLINE=1 as the libraries read it at import (this machine has no hub access either:
    # without the switch the same error comes after the connection timeouts).
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(IngestError, match=r"hf:acme/no-such-faq: cannot load the Hugging Face dataset 'acme/no-such-faq'.*save_to_disk"):
        run({"path": "hf:acme/no-such-faq"})


def test_unknown_nested_json_shape_fails_naming_the_layouts(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"items": [1, 2]}))
    with pytest.raises(IngestError, match=r"odd\.json: expected a JSON list of rows, an object with a 'data' list \(SQuAD"):
        run(path)


def test_row_format_auto_detection_lists_every_format(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"text": "hello"}) + "\n")
    with pytest.raises(IngestError, match=r"unknown format.*tried chat, sharegpt, squad, head_qa, multiple_choice, alpaca, prompt_completion"):
        run(path)


def test_nested_files_ingest_into_a_dataset_version(tmp_path):
    manifest = ingest(DataSettings(sources=[{"path": str(FIXTURES)}], validation_fraction=0.3), tmp_path / "store")
    formats = {Path(s.path).name: s.format for s in manifest.sources}
    assert formats == {"head_qa_en.json": "head_qa", "sharegpt.json": "sharegpt", "squad_v1.1.json": "squad",
                       "squad_v2.0.json": "squad", "squad_v2_flat.jsonl": "squad"}
    # The flat SQuAD file repeats the nested v2 file (5), and v1.1 and v2.0 share one question (1).
    assert sum(s.duplicates for s in manifest.sources) == 6


# The registry of formats ------------------------------------------------------------------


def readme_format_table() -> list[tuple[str, str, str]]:
    """The README's table of input formats: (format, "detected by" keys, keys) per row, in order."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("| format | detected by | keys |") + 2
    rows = []
    for line in itertools.takewhile(lambda line: line.startswith("|"), lines[start:]):
        match = re.fullmatch(r"\| `(\w+)` \| (.*?) \| (.*) \|", line)
        assert match, f"README format table: unexpected row {line!r}"
        rows.append(match.groups())
    return rows


def test_readme_table_of_input_formats_is_the_registry():
    expected = [(fmt.name, ", ".join(f"`{key}`" for key in fmt.keys), fmt.description) for fmt in FORMATS]
    assert readme_format_table() == expected


def test_every_registered_format_is_adapted_by_its_family_module_and_nothing_else_is():
    families = {fmt.family for fmt in FORMATS}
    adapted = {name: family for family in families for name in importlib.import_module(f"fragua.data.formats.{family}").ADAPTERS}
    assert adapted == {fmt.name: fmt.family for fmt in FORMATS}
    assert tuple(ADAPTERS) == FORMAT_NAMES


def test_detection_takes_the_first_registered_format_whose_keys_the_row_has():
    assert detect_format({"messages": [], "instruction": "q", "output": "a"}) == "chat"
    assert detect_format(["question", "choices", "answer", "context", "answers"]) == "squad"
    assert detect_format(["qtext", "answers", "ra", "question", "choices", "answer"]) == "head_qa"
    assert detect_format(["question", "answer"]) is None


def test_source_format_setting_offers_every_registered_format():
    assert SourceSpec.model_json_schema()["properties"]["format"]["enum"] == ["auto", *FORMAT_NAMES]
