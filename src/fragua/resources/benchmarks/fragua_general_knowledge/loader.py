"""The shipped general-knowledge task's questions, read from the JSONL file beside this one (lm-eval
resolves a task's data files against the working directory, so the task loads them itself)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

QUESTIONS = Path(__file__).with_name("questions.jsonl")


def load_questions(**_task_metadata: Any):
    """The questions as lm-eval's ``custom_dataset``: a DatasetDict with one ``test`` split.
    lm-eval passes the task's metadata as keyword arguments; they change nothing here."""
    from datasets import Dataset, DatasetDict

    rows = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return DatasetDict({"test": Dataset.from_list(rows)})
