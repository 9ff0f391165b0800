from __future__ import annotations

import pytest

from fragua.data.formats import detect_format
from fragua.data.formats.adapt import from_alpaca, from_chat, from_multiple_choice, from_prompt_completion
from fragua.data.records import RowError, answer_index, content_key


def test_alpaca_with_input_and_extra_fields_kept_in_meta():
    draft = from_alpaca({"instruction": "Translate", "input": "hola", "output": "hello", "domain": "lang", "lang": "es"})
    assert [(m.role, m.content) for m in draft.messages] == [("user", "Translate\n\nhola"), ("assistant", "hello")]
    assert draft.answer == "hello"
    assert draft.domain == "lang"
    assert draft.meta == {"lang": "es"}


def test_alpaca_system_prompt_becomes_a_system_message():
    draft = from_alpaca({"instruction": "Q", "output": "A", "system": "Be brief."})
    assert draft.messages[0].role == "system" and draft.messages[0].content == "Be brief."


def test_prompt_completion():
    draft = from_prompt_completion({"prompt": "2+2?", "completion": "4"})
    assert draft.messages[-1].content == "4"


def test_chat_messages_keep_every_turn():
    row = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "U1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "U2"},
            {"role": "assistant", "content": "A2"},
        ]
    }
    draft = from_chat(row)
    assert [m.role for m in draft.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert draft.answer == "A2"


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]}, "narrator"),
        ({"messages": [{"role": "user", "content": "x"}]}, "last message must be the assistant"),
        ({"messages": [{"role": "user", "content": 3}]}, r"messages\[0\]\.content must be a string, got integer"),
        # Arrow holds one type per field: a row mixing them is reported as such.
        ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]}, r"messages\[0\]\.content is integer but messages\[1\]\.content is string"),
        ({"messages": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]}, "no 'user' message"),
    ],
)
def test_chat_rejects_bad_rows_with_reason(row, reason):
    with pytest.raises(RowError, match=reason):
        from_chat(row)


def test_alpaca_wrong_type_is_a_row_error():
    with pytest.raises(RowError, match="'output' must be a string"):
        from_alpaca({"instruction": "Q", "output": 42})


@pytest.mark.parametrize("answer, expected", [("B", 1), ("b", 1), (2, 2), ("3", 2), (" 1 ", 0)])
def test_answer_index_forms(answer, expected):
    assert answer_index(answer, 4) == expected


@pytest.mark.parametrize("answer", ["E", 4, "0", True, "AB", None])
def test_answer_index_rejects_out_of_range(answer):
    with pytest.raises(RowError):
        answer_index(answer, 4)


def test_multiple_choice_renders_options_and_answer():
    draft = from_multiple_choice({"question": "Capital of Spain?", "choices": ["Lisbon", "Madrid", "Rome"], "answer": "B"})
    assert draft.messages[0].content == "Capital of Spain?\nA. Lisbon\nB. Madrid\nC. Rome"
    assert draft.messages[1].content == "B. Madrid"
    assert draft.answer == "B" and draft.choices == ["Lisbon", "Madrid", "Rome"]


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"instruction": "q", "output": "a"}, "alpaca"),
        ({"prompt": "q", "completion": "a"}, "prompt_completion"),
        ({"messages": []}, "chat"),
        ({"question": "q", "choices": [], "answer": "A"}, "multiple_choice"),
        ({"text": "q"}, None),
    ],
)
def test_detect_format(row, expected):
    assert detect_format(row) == expected


def test_duplicates_ignore_case_and_whitespace_but_not_content():
    a = from_alpaca({"instruction": "What time is check-in?", "output": "At 3 pm."})
    b = from_alpaca({"instruction": "what time  is CHECK-IN? ", "output": "at 3 pm."})
    c = from_alpaca({"instruction": "What time is check-out?", "output": "At 3 pm."})
    assert content_key(a) == content_key(b) != content_key(c)
