"""The vectorised text layer agrees with plain-Python references."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pyarrow as pa
import pytest

from fragua.data.formats.adapt import from_alpaca
from fragua.data.records import RecordDraft, content_key, record_id
from fragua.data.textops import conversation_id, conversation_ids, hex_ids, json_objects, json_values, normalise, normalised_bytes, python_json


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  Hello   World \n", "hello world"),
        ("a\tb\r\nc\x0b\x0cd  ", "a b c d"),
        ("ÉCOLE\u00a0 Ñu\u2003x", "école ñu x"),
        ("   ", ""),
        ("", ""),
    ],
)
def test_normalise(text, expected):
    assert normalise(text) == expected


def test_normalised_bytes_match_python_on_random_strings():
    rng = random.Random(7)
    alphabet = " \t\n\rAbZz09.,é Ü\u00a0"
    values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20))) for _ in range(5000)]
    data, offsets = normalised_bytes(pa.array(values))
    got = [data[offsets[i]: offsets[i + 1]].tobytes().decode() for i in range(len(values))]
    assert got == [" ".join(v.lower().split()) for v in values]


def test_batch_ids_equal_row_ids():
    conversations = [
        [("user", "What TIME is  check-in?"), ("assistant", " At 3 pm. ")],
        [],
        [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Pool?"), ("assistant", "8th floor")],
    ]
    flat = [m for conversation in conversations for m in conversation]
    data, offsets = normalised_bytes(pa.array([c for _, c in flat]))
    codes = np.array([{"system": 1, "user": 2, "assistant": 3}[r] for r, _ in flat], dtype=np.uint8)
    ids = conversation_ids(data, offsets, codes, np.array([0, 2, 2, 7]))
    assert ids[0] == conversation_id(conversations[0]) == conversation_id([("user", "what time is check-in?"), ("assistant", "at 3 pm.")])
    assert ids[2] == conversation_id(conversations[2])
    alpaca = content_key(from_alpaca({"instruction": conversations[0][0][1], "output": conversations[0][1][1]}))
    assert hex_ids(ids)[0].as_py() == record_id(alpaca)


def test_message_boundaries_and_roles_are_part_of_the_key():
    a = RecordDraft(from_alpaca({"instruction": "ab", "output": "c"}).messages)
    b = RecordDraft(from_alpaca({"instruction": "a", "output": "bc"}).messages)
    assert content_key(a) != content_key(b)
    assert conversation_id([("user", "x"), ("assistant", "y")]) != conversation_id([("assistant", "x"), ("user", "y")])
    assert conversation_id([("user", "x"), ("assistant", "y")]) != conversation_id([("assistant", "y"), ("user", "x")])


def test_hex_ids_are_16_lowercase_hex_digits():
    assert hex_ids(np.array([0, 1, 2**64 - 1], dtype=np.uint64)).to_pylist() == ["0000000000000000", "0000000000000001", "ffffffffffffffff"]


@pytest.mark.parametrize(
    "values",
    [
        pa.array(["plain", 'quote " and \\ backslash', "line\nbreak\ttab\x01", "ünïcode ✓", None]),
        pa.array([1, -2, None, 2**62]),
        pa.array([True, False, None]),
        pa.array([1.5, 1e20, float("nan"), None, -0.0]),
        pa.array([["a", None], None, [], ["x\ny"]]),
        pa.array([{"text": ["a"], "answer_start": [3]}, None, {"text": [], "answer_start": None}]),
        pa.array([[{"z": 1, "a": [True]}], [None]]),
        pa.array([b"\x00\x01", None]),
    ],
)
def test_json_values_match_orjson(values):
    assert json_values(values).to_pylist() == python_json(values.to_pylist())


def test_json_objects_sort_keys_and_leave_out_nulls():
    objects = json_objects({"b": pa.array(["x", None]), "a": pa.array([1, 2]), "c": pa.array([None, None], pa.string())}, 2)
    assert [orjson.loads(o) for o in objects.to_pylist()] == [{"a": 1, "b": "x"}, {"a": 2}]
    assert objects[0].as_py() == '{"a":1,"b":"x"}'
    assert json_objects({}, 2).to_pylist() == ["{}", "{}"]
