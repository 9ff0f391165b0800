from __future__ import annotations

import pytest

from fragua.metrics import exact_match, normalize_answer, token_f1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple, a pear ", "apple pear"),
        ("¿A qué hora?", "qué hora"),
        ("15:00.", "1500"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_ignores_case_punctuation_and_articles():
    assert exact_match("The check-in is at 3 pm.", "check-in is at 3 PM") == 1.0
    assert exact_match("Check-in is at 4 pm.", "Check-in is at 3 pm.") == 0.0


def test_token_f1_by_hand():
    # prediction tokens: breakfast served at 7 (4); reference: breakfast is served from 7 to 10 (7)
    # common: breakfast, served, 7 -> precision 3/4, recall 3/7, F1 = 2*(3/4)*(3/7)/((3/4)+(3/7)) = 6/11
    assert token_f1("Breakfast served at 7", "Breakfast is served from 7 to 10") == pytest.approx(6 / 11)


def test_token_f1_counts_repeated_tokens_once_per_occurrence():
    # prediction "no no no" vs reference "no": common = 1, precision 1/3, recall 1 -> F1 = 0.5
    assert token_f1("no no no", "no") == pytest.approx(0.5)


def test_token_f1_edge_cases():
    assert token_f1("", "") == 1.0
    assert token_f1("something", "") == 0.0
    assert token_f1("alpha", "beta") == 0.0
