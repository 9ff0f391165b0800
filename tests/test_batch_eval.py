from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fragua.cli import app
from fragua.data.ingest import IngestError
from fragua.settings import DataSettings
from fragua.validate.batch import read_questions
from fragua.validate.metrics import exact_match, token_f1

QUESTIONS = [
    {"question": "What time is check-in?", "answer": "Check-in starts at 3:00 pm.", "domain": "hotel", "id": "q-checkin"},
    {"question": "How many nights is a weekend stay?", "answer": 2},
    {"question": "What is LoRA?", "domain": "ml"},
    {"question": "Which floor is the pool on?", "choices": ["ground", "eighth"], "domain": "hotel"},
    {"question": "What does LoRA train?", "choices": ["All weights", "Low-rank matrices"], "answer": "B", "domain": "ml"},
    {"instruction": "What time is check-out?", "output": "Check-out is at 11:00 am.", "domain": "hotel"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_read_questions_understands_plain_rows_and_every_ingest_format(tmp_path):
    items = read_questions(write_jsonl(tmp_path / "questions.jsonl", QUESTIONS), DataSettings())
    assert [i.id for i in items][:2] == ["q-checkin", "questions.jsonl:line 2"]
    checkin, nights, lora, pool, trains, checkout = items
    assert checkin.reference == "Check-in starts at 3:00 pm." and checkin.conversation[-1].role == "assistant"
    assert nights.reference == "2" and nights.domain == "general"
    assert lora.reference is None and lora.conversation is None
    assert pool.choices == ("ground", "eighth") and pool.correct is None and "B. eighth" in pool.question
    assert trains.correct == 1 and trains.reference == "B. Low-rank matrices"
    assert checkout.prompt[-1].content == "What time is check-out?" and checkout.reference == "Check-out is at 11:00 am."


def test_read_questions_from_csv(tmp_path):
    path = tmp_path / "questions.csv"
    path.write_text("question,answer,domain\nWhat is 1/2 as a percentage?,50%,math\n")
    (item,) = read_questions(path, DataSettings())
    assert (item.question, item.reference, item.domain) == ("What is 1/2 as a percentage?", "50%", "math")


def test_every_unusable_row_is_named_and_nothing_is_evaluated(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok?"}\n{"text": "no question"}\nnot json\n{"question": "", "answer": "x"}\n{"question": "q", "choices": ["one"]}\n')
    with pytest.raises(IngestError) as caught:
        read_questions(path, DataSettings())
    message = str(caught.value)
    assert message.startswith("4 unusable question row(s); nothing was evaluated")
    for line, reason in ((2, "no 'question' field"), (3, "invalid JSON"), (4, "field 'question' is empty"), (5, "field 'choices' must be a list of 2 to 26")):
        assert f"{path} line {line}: {reason}" in message
    with pytest.raises(IngestError, match="no such file"):
        read_questions(tmp_path / "missing.jsonl", DataSettings())


runner = CliRunner()


def test_fragua_eval_batch_writes_answers_and_scores(tiny_base, tmp_path):
    questions = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    output = tmp_path / "out" / "answers.json"
    result = runner.invoke(app, ["--work-dir", str(tmp_path / "work"), "--set", "validate.max_new_tokens=8",
                                 "eval-batch", str(questions), "--path", str(tiny_base), "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "6 questions answered by" in result.output and f"answers and scores: {output}" in result.output
    answers = json.loads(output.read_text())
    assert answers["model"]["folder"] == str(tiny_base.resolve()) and answers["settings"]["max_new_tokens"] == 8
    items = {item["id"]: item for item in answers["items"]}
    assert len(items) == 6
    checkin = items["q-checkin"]
    assert checkin["exact_match"] == exact_match(checkin["prediction"], checkin["reference"])
    assert checkin["token_f1"] == pytest.approx(token_f1(checkin["prediction"], checkin["reference"]))
    assert checkin["answer_tokens"] > 0 and checkin["rouge_l"] is not None and checkin["bleu"] is not None
    assert items["questions.jsonl:line 2"]["numeric_match"] in (0.0, 1.0)  # the reference "2" is a number
    unanswered = items["questions.jsonl:line 3"]
    assert unanswered["prediction"] is not None and unanswered["token_f1"] is None and unanswered["answer_nll"] is None
    pool = items["questions.jsonl:line 4"]
    assert pool["chosen"] in ("A", "B") and pool["mc_correct"] is None and len(pool["option_logprobs"]) == 2
    assert items["questions.jsonl:line 5"]["mc_correct"] in (0.0, 1.0)
    overall = answers["overall"]
    assert (overall["n"], overall["n_generated"], overall["n_numeric"], overall["n_choice"]) == (6, 3, 1, 1)
    assert set(answers["per_domain"]) == {"general", "hotel", "ml"}


def test_fragua_eval_batch_reports_bad_input_without_a_traceback(tiny_base, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "no question"}])
    result = runner.invoke(app, ["--work-dir", str(tmp_path), "eval-batch", str(bad), "--path", str(tiny_base)])
    assert result.exit_code == 1 and "line 1: no 'question' field" in " ".join(result.output.split())
    missing = runner.invoke(app, ["--work-dir", str(tmp_path), "eval-batch", str(bad), "--path", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "no such model folder" in " ".join(missing.output.split())
