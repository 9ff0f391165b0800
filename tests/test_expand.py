from __future__ import annotations

import random

from fragua.expand import expand_train, permute_choices
from fragua.records import CHOICE_LETTERS, Record, from_alpaca, from_multiple_choice
from fragua.settings import ExpandSettings


def record(draft, rid: str) -> Record:
    return Record(id=rid, messages=draft.messages, choices=draft.choices, answer=draft.answer, domain="d", source="s", meta={})


MCQ = record(from_multiple_choice({"question": "Which is a fruit?\n(one answer)", "choices": ["stone", "apple", "chair", "cloud"], "answer": "B"}), "m1")
QA = record(from_alpaca({"instruction": "Q?", "output": "A."}), "q1")


def test_every_permutation_keeps_the_right_answer_right():
    permuted = permute_choices(MCQ, random.Random(0), 23)
    assert len(permuted) == 23  # all 4! - 1 reorderings
    assert len({tuple(r.choices) for r in permuted}) == 23
    for row in permuted:
        assert row.choices[CHOICE_LETTERS.index(row.answer)] == "apple"
        assert row.messages[0].content.startswith("Which is a fruit?\n(one answer)\nA. ")
        assert row.messages[1].content == f"{row.answer}. apple"
        assert row.origin == "mcq_permutation" and row.meta["parent_id"] == "m1" and row.group == "m1"


def test_expansion_reaches_the_factor_and_reports_it():
    expanded, report = expand_train([MCQ, QA], ExpandSettings(expansion_factor=3.0))
    assert len(expanded) == 6
    assert report["achieved_factor"] == 3.0 and report["per_strategy"] == {"mcq_permutation": 4}
    assert expanded[:2] == [MCQ, QA]


def test_expansion_is_deterministic_for_a_seed():
    a, _ = expand_train([MCQ], ExpandSettings(expansion_factor=4.0, seed=5))
    b, _ = expand_train([MCQ], ExpandSettings(expansion_factor=4.0, seed=5))
    c, _ = expand_train([MCQ], ExpandSettings(expansion_factor=4.0, seed=6))
    assert [r.id for r in a] == [r.id for r in b] != [r.id for r in c]


def test_without_multiple_choice_rows_the_report_says_so():
    expanded, report = expand_train([QA], ExpandSettings(expansion_factor=2.0))
    assert expanded == [QA] and report["achieved_factor"] == 1.0
    assert "no multiple-choice rows" in report["notes"][0]
