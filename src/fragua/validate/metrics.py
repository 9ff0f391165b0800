"""Answer-quality metrics as pure functions: SQuAD exact match and token F1, ROUGE-L and BLEU
(rouge-score, sacrebleu), numeric equivalence, and the multiple-choice option pick."""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from fractions import Fraction

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def _is_punctuation(char: str, ascii_only: bool) -> bool:
    return char in string.punctuation or (not ascii_only and unicodedata.category(char).startswith("P"))


def normalize_answer(text: str, *, ascii_only: bool = False) -> str:
    """The official SQuAD normalisation (lower case, no punctuation, no English articles,
    single spaces), with Unicode punctuation such as '¿', '¡' and '«' also removed unless
    ``ascii_only`` (the official script removes only ASCII ``string.punctuation``)."""
    text = text.lower()
    text = "".join(ch for ch in text if not _is_punctuation(ch, ascii_only))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str, *, ascii_only: bool = False) -> float:
    return float(normalize_answer(prediction, ascii_only=ascii_only) == normalize_answer(reference, ascii_only=ascii_only))


def token_f1(prediction: str, reference: str, *, ascii_only: bool = False) -> float:
    predicted = normalize_answer(prediction, ascii_only=ascii_only).split()
    expected = normalize_answer(reference, ascii_only=ascii_only).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = Counter(predicted) & Counter(expected)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted)
    recall = overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


# ROUGE-L and BLEU ------------------------------------------------------------------------


class _UnicodeWordTokenizer:
    """rouge-score's default tokenizer keeps only [a-z0-9], which deletes accented letters
    ('qué' -> 'qu'); this one lower-cases and keeps every Unicode word character."""

    _WORD = re.compile(r"\w+", re.UNICODE)

    def tokenize(self, text: str) -> list[str]:
        return self._WORD.findall(text.lower())


_rouge_scorer = None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words), via Google's rouge-score."""
    global _rouge_scorer
    if _rouge_scorer is None:
        from rouge_score.rouge_scorer import RougeScorer

        _rouge_scorer = RougeScorer(["rougeL"], tokenizer=_UnicodeWordTokenizer())
    return float(_rouge_scorer.score(reference, prediction)["rougeL"].fmeasure)


def sentence_bleu(prediction: str, reference: str, *, tokenize: str = "13a") -> float:
    """sacrebleu sentence BLEU on a 0-1 scale (exponential smoothing, effective n-gram order)."""
    import sacrebleu

    return min(1.0, sacrebleu.sentence_bleu(prediction, [reference], tokenize=tokenize).score / 100.0)


def corpus_bleu(predictions: list[str], references: list[str], *, tokenize: str = "13a") -> float:
    """sacrebleu corpus BLEU on a 0-1 scale: n-gram counts summed over all pairs, then combined."""
    import sacrebleu

    if len(predictions) != len(references):
        raise ValueError(f"corpus_bleu needs one reference per prediction, got {len(predictions)} and {len(references)}")
    return min(1.0, sacrebleu.corpus_bleu(predictions, [references], tokenize=tokenize).score / 100.0)


# Numeric answers -------------------------------------------------------------------------

# 1,234.5  -3  .5  1/2  50%  (a thousands separator needs groups of exactly three digits)
_NUMBER = r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?\s*%?"
_WHOLE_NUMBER = re.compile(rf"^\s*\$?\s*({_NUMBER})\s*$")
_NUMBERS_IN_TEXT = re.compile(_NUMBER)
FINAL_ANSWER_MARKER = "####"


def parse_number(text: str, *, percent_as_fraction: bool = True) -> Fraction | None:
    """The exact value of a text that is one number (integer, decimal, fraction, percentage), else None."""
    match = _WHOLE_NUMBER.match(text.strip().rstrip("."))
    if not match or not any(ch.isdigit() for ch in match.group(1)):
        return None
    return _value(match.group(1), percent_as_fraction)


def _value(token: str, percent_as_fraction: bool) -> Fraction | None:
    token = token.replace(",", "").replace("−", "-").replace(" ", "")
    percent = token.endswith("%")
    token = token.rstrip("%")
    try:
        if "/" in token:
            numerator, denominator = token.split("/")
            if Fraction(denominator) == 0:
                return None
            value = Fraction(numerator) / Fraction(denominator)
        else:
            value = Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent and percent_as_fraction else value


def final_number(text: str, *, percent_as_fraction: bool = True) -> Fraction | None:
    """The answer a worked solution ends with: what follows '####' if present, else its last number."""
    if FINAL_ANSWER_MARKER in text:
        text = text.rsplit(FINAL_ANSWER_MARKER, 1)[1]
    whole = parse_number(text, percent_as_fraction=percent_as_fraction)
    if whole is not None:
        return whole
    for match in reversed(list(_NUMBERS_IN_TEXT.finditer(text))):
        if any(ch.isdigit() for ch in match.group()):
            value = _value(match.group().strip(), percent_as_fraction)
            if value is not None:
                return value
    return None


def reference_number(reference: str, *, percent_as_fraction: bool = True) -> Fraction | None:
    """A reference is math-style when it is a number, or a solution ending in '#### <number>'."""
    if FINAL_ANSWER_MARKER in reference:
        return parse_number(reference.rsplit(FINAL_ANSWER_MARKER, 1)[1], percent_as_fraction=percent_as_fraction)
    return parse_number(reference, percent_as_fraction=percent_as_fraction)


def numeric_match(prediction: str, reference: str, *, percent_as_fraction: bool = True, tolerance: float = 1e-6) -> float | None:
    """1.0 when the prediction's final number equals the reference's number within a relative
    tolerance, 0.0 when it differs or has none; None when the reference is not a number."""
    expected = reference_number(reference, percent_as_fraction=percent_as_fraction)
    if expected is None:
        return None
    predicted = final_number(prediction, percent_as_fraction=percent_as_fraction)
    if predicted is None:
        return 0.0
    if predicted == expected:
        return 1.0
    return float(math.isclose(float(predicted), float(expected), rel_tol=tolerance, abs_tol=0.0))


# Multiple choice -------------------------------------------------------------------------


def choose_option(logprobs: list[float], lengths: list[int]) -> tuple[int, int]:
    """The option with the highest summed log-likelihood, and the one with the highest
    log-likelihood per character of the option (lm-eval-harness acc / acc_norm). Ties go to
    the first option."""
    if not logprobs or len(logprobs) != len(lengths):
        raise ValueError("choose_option needs one log-likelihood and one length per option")
    summed = max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
    normalised = max(range(len(logprobs)), key=lambda i: (logprobs[i] / max(lengths[i], 1), -i))
    return summed, normalised
