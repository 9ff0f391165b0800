from __future__ import annotations

import math
from fractions import Fraction

import pytest

from fragua.validate.metrics import choose_option, corpus_bleu, exact_match, normalize_answer, numeric_match, parse_number, rouge_l, sentence_bleu, token_f1


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


# ROUGE-L and BLEU, by hand -----------------------------------------------------------------


def test_rouge_l_by_hand():
    # prediction: the cat sat on the mat (6 words); reference: the cat is on the mat (6 words)
    # longest common subsequence: the cat on the mat (5) -> precision 5/6, recall 5/6, F = 5/6
    assert rouge_l("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(5 / 6)
    # prediction: cat mat (2); reference as above (6): LCS 2 -> P 1, R 1/3, F = 2*(1/3)/(4/3) = 1/2
    assert rouge_l("cat mat", "the cat is on the mat") == pytest.approx(0.5)
    assert rouge_l("alpha", "beta") == 0.0


def test_rouge_l_keeps_accented_words():
    # rouge-score's own tokenizer would turn "qué" into "qu"; ours keeps Unicode letters.
    assert rouge_l("¿En qué planta?", "en qué planta") == pytest.approx(1.0)
    assert rouge_l("en que planta", "en qué planta") == pytest.approx(2 / 3)


def test_sentence_bleu_brevity_penalty_by_hand():
    # Every n-gram of "the cat sat on" is in the reference (precisions 4/4, 3/3, 2/2, 1/1);
    # the prediction has 4 tokens against 6, so BLEU = BP = exp(1 - 6/4).
    assert sentence_bleu("the cat sat on", "the cat sat on the mat") == pytest.approx(math.exp(1 - 6 / 4))
    assert sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)


def test_corpus_bleu_by_hand():
    # "the cat sat on the mat" vs "the cat is on the mat": matched 1-grams 5/6, 2-grams 3/5,
    # 3-grams 1/4, 4-grams 0/3; sacrebleu's default 'exp' smoothing turns the first zero count
    # into 1/(2*3). Same length, so no brevity penalty: BLEU = geometric mean of the four.
    expected = (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert corpus_bleu(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(expected)
    # Corpus BLEU pools n-gram counts over pairs: an exact pair and a disjoint pair of 4 tokens
    # each give precisions 4/8, 3/6, 2/4, 1/2 -> 0.5.
    assert corpus_bleu(["a b c d", "w x y z"], ["a b c d", "e f g h"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one reference per prediction"):
        corpus_bleu(["a"], [])


# Numeric answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [("0.5", Fraction(1, 2)), ("1/2", Fraction(1, 2)), ("50%", Fraction(1, 2)), ("1,234.5", Fraction(2469, 2)),
     ("-3", Fraction(-3)), (".25", Fraction(1, 4)), ("$12", Fraction(12)), ("7.", Fraction(7)), ("3 / 4", Fraction(3, 4))],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["", "abc", "3 pm", "1/0", "12 euros", "-"])
def test_parse_number_rejects_non_numbers(text):
    assert parse_number(text) is None


def test_half_written_three_ways_is_equal_when_percent_means_fraction():
    for prediction in ("0.5", "1/2", "50%", "The answer is 1/2."):
        for reference in ("0.5", "1/2", "50%"):
            assert numeric_match(prediction, reference, percent_as_fraction=True) == 1.0, (prediction, reference)


def test_percent_means_a_plain_number_when_the_setting_is_off():
    assert numeric_match("50%", "0.5", percent_as_fraction=False) == 0.0
    assert numeric_match("50%", "50", percent_as_fraction=False) == 1.0
    assert numeric_match("1/2", "0.5", percent_as_fraction=False) == 1.0


def test_numeric_match_reads_the_final_number_and_final_answer_marker():
    assert numeric_match("She has 3 apples, then buys 4: 7 in all", "7") == 1.0
    assert numeric_match("3 + 4 = 7\n#### 7", "Add them: 3 + 4 = 7.\n#### 7") == 1.0
    assert numeric_match("#### 8", "#### 7") == 0.0
    assert numeric_match("no idea", "7") == 0.0
    assert numeric_match("1,000", "1000") == 1.0


def test_numeric_tolerance_is_relative():
    assert numeric_match("0.333", "1/3", tolerance=1e-6) == 0.0
    assert numeric_match("0.333", "1/3", tolerance=1e-2) == 1.0
    assert numeric_match("0.30000000000000004", "0.3") == 1.0


def test_numeric_match_does_not_apply_to_text_references():
    assert numeric_match("3", "Check-in starts at 3:00 pm") is None


# Multiple choice ---------------------------------------------------------------------------


def test_choose_option_summed_and_per_character():
    # summed: -4 beats -6 -> option 0; per character: -4/2 = -2 vs -6/10 = -0.6 -> option 1
    assert choose_option([-4.0, -6.0], [2, 10]) == (0, 1)
    assert choose_option([-3.0, -1.0, -2.0], [1, 1, 1]) == (1, 1)
    assert choose_option([-1.0, -1.0], [5, 5]) == (0, 0)  # ties go to the first option
    with pytest.raises(ValueError):
        choose_option([-1.0], [1, 2])
