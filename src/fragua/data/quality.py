"""Row quality: length limits, a transparent quality score, and near-duplicate detection.

The quality score of a row is the mean of four components, each in [0, 1]:

- ``symbols``: share of the question and answer characters that are symbols prose rarely
  uses (``# $ % & * + / < = > @ [ \ ] ^ _ ` { | } ~``), control characters or U+FFFD:
  markup, mojibake, keyboard mashing. Counted over at least 20 characters, so that a short
  "2+2?" is not judged by its one symbol. Up to 10 % scores 1, 30 % or more scores 0,
  linear in between. Sentence punctuation does not count.
- ``echo``: 0 when the answer, normalised, repeats the question; else 1.
- ``placeholder``: 0 when the answer is a placeholder ("n/a", "todo", "lorem ipsum", ...); else 1.
- ``shouting``: 0 when an answer of 20 characters or more is all upper case; else 1.

A row scoring below ``data.quality_threshold`` is quarantined with every component in the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fragua.data.formats.columnar import Adapted
from fragua.data.textops import ROLE_CODES, normalised_bytes
from fragua.settings import DataSettings

COMPONENTS = ("symbols", "echo", "placeholder", "shouting")
SYMBOLS_OK, SYMBOLS_BAD = 0.10, 0.30
SYMBOLS_MIN_CHARS = 20
SHOUTING_MIN_CHARS = 20
PLACEHOLDERS = frozenset(
    {"n/a", "na", "none", "null", "nil", "nan", "todo", "tbd", "tba", "fixme", "xxx", "?", "??", "...", "-", "--", ".", "test", "answer", "placeholder"}
)
# Rare in prose, so counting them finds few matches and stays fast.
_SYMBOL = r"[#$%&*+/<=>@\[\\\]^_`{|}~\x{0}-\x{8}\x{e}-\x{1f}\x{7f}\x{fffd}]"
PLACEHOLDER_MAX_BYTES = max(len(p) for p in PLACEHOLDERS) + 2
_WORD = re.compile(r"\w+")
_TALK = (ROLE_CODES["user"], ROLE_CODES["assistant"])


def _first_flagged(flagged: np.ndarray, parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, message index) of the first flagged message of each row."""
    where = np.flatnonzero(flagged)
    rows, first = np.unique(parent[where], return_index=True)
    return rows, where[first]


@dataclass
class MessageTexts:
    """What the length and quality checks and the duplicate key need to know about a batch's
    messages, computed once."""

    data: np.ndarray  # normalised message texts, back to back
    offsets: np.ndarray  # where each message's normalised text starts (messages + 1)
    characters: np.ndarray  # characters of each message as given
    parent: np.ndarray  # the row of each message

    @property
    def normalised_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def message_texts(adapted: Adapted) -> MessageTexts:
    contents = adapted.contents
    ascii = pc.string_is_ascii(contents)
    data, offsets = normalised_bytes(contents, ascii)
    characters = pc.binary_length(contents).to_numpy().astype(np.int64)
    wide = np.flatnonzero(~ascii.to_numpy(zero_copy_only=False))
    if len(wide):
        characters[wide] = pc.utf8_length(contents.take(pa.array(wide))).to_numpy()
    parent = np.repeat(np.arange(adapted.length), np.diff(adapted.message_offsets))
    return MessageTexts(data, offsets, characters, parent)


def check_lengths(adapted: Adapted, texts: MessageTexts, settings: DataSettings) -> None:
    """Empty, too short and too long messages, the first problem of each row, as the rows' errors."""
    errors = adapted.errors
    offsets = adapted.message_offsets
    parent = texts.parent
    talk = np.isin(adapted.role_codes, _TALK)
    problem = np.zeros(len(parent), dtype=np.int8)
    problem[talk & (texts.normalised_sizes == 0)] = 1
    problem[(problem == 0) & (texts.characters > settings.max_chars)] = 2
    stripped = None
    if settings.min_chars > 1:
        stripped = pc.utf8_length(pc.utf8_trim_whitespace(adapted.contents)).to_numpy()
        problem[(problem == 0) & talk & (stripped < settings.min_chars)] = 3
    rows, items = _first_flagged((problem > 0) & errors.ok[parent], parent)
    names = ("", "system", "user", "assistant", "tool")
    for row, item in zip(rows.tolist(), items.tolist()):
        role = names[adapted.role_codes[item]]
        if problem[item] == 1:
            errors.add_row(row, "empty", f"empty {role} message (messages[{item - offsets[row]}])")
        elif problem[item] == 2:
            errors.add_row(row, "too_long", f"{role} message has {texts.characters[item]} characters, above data.max_chars={settings.max_chars}")
        else:
            assert stripped is not None
            errors.add_row(row, "too_short", f"{role} message has {stripped[item]} characters, below data.min_chars={settings.min_chars}")


def quality_components(adapted: Adapted, texts: MessageTexts) -> dict[str, np.ndarray]:
    length = adapted.length
    offsets = adapted.message_offsets
    counts = np.diff(offsets)
    parent = texts.parent
    talk = np.isin(adapted.role_codes, _TALK)
    starts = texts.offsets
    raw = texts.data.tobytes()
    symbols = pc.count_substring_regex(adapted.contents, _SYMBOL).to_numpy().astype(np.float64)
    total = np.bincount(parent[talk], weights=texts.characters[talk], minlength=length)
    odd = np.bincount(parent[talk], weights=symbols[talk], minlength=length)
    share = odd / np.maximum(total, SYMBOLS_MIN_CHARS)
    symbol_score = np.clip((SYMBOLS_BAD - share) / (SYMBOLS_BAD - SYMBOLS_OK), 0.0, 1.0)

    has_messages = counts > 0
    answer_at = np.where(has_messages, offsets[1:] - 1, 0)
    user_at = np.where(adapted.role_codes == ROLE_CODES["user"], np.arange(len(adapted.role_codes)), -1)
    last_user = np.full(length, -1, dtype=np.int64)
    if has_messages.any():
        # Segments of rows without messages are empty: leaving their starts out keeps the others right.
        last_user[has_messages] = np.maximum.reduceat(user_at, offsets[:-1][has_messages])
    size = texts.normalised_sizes
    echo = np.ones(length)
    same_size = np.flatnonzero(has_messages & (last_user >= 0) & (size[np.maximum(last_user, 0)] == size[answer_at]))
    for row in same_size.tolist():
        a, b = int(last_user[row]), int(answer_at[row])
        if raw[starts[a]: starts[a + 1]] == raw[starts[b]: starts[b + 1]]:
            echo[row] = 0.0

    placeholder = np.ones(length)
    for row in np.flatnonzero(has_messages & (size[answer_at] <= PLACEHOLDER_MAX_BYTES)).tolist():
        b = int(answer_at[row])
        text = raw[starts[b]: starts[b + 1]].decode("utf-8")
        if text in PLACEHOLDERS or text.rstrip(".!") in PLACEHOLDERS:
            placeholder[row] = 0.0
    answers = adapted.contents.take(pa.array(answer_at)) if len(adapted.contents) else pa.array([""] * length, pa.string())
    lorem = pc.starts_with(pc.utf8_ltrim_whitespace(answers), "lorem ipsum", ignore_case=True)
    placeholder[pc.fill_null(lorem, False).to_numpy(zero_copy_only=False)] = 0.0
    if adapted.unanswerable is not None:
        placeholder[adapted.unanswerable] = 1.0  # their target is the configured no-answer text

    upper = pc.fill_null(pc.utf8_is_upper(answers), False).to_numpy(zero_copy_only=False)
    shouting = np.where(upper & has_messages & (texts.characters[answer_at] >= SHOUTING_MIN_CHARS), 0.0, 1.0)
    return {"symbols": symbol_score, "echo": echo, "placeholder": placeholder, "shouting": shouting}


def apply_quality(adapted: Adapted, texts: MessageTexts, threshold: float) -> np.ndarray:
    """Quarantine rows scoring below ``threshold``; returns every row's score."""
    components = quality_components(adapted, texts)
    score = np.mean(np.stack([components[name] for name in COMPONENTS]), axis=0)
    low = np.flatnonzero((score < threshold) & adapted.errors.ok)
    for row in low.tolist():
        details = ", ".join(f"{name}={components[name][row]:.2f}" for name in COMPONENTS)
        adapted.errors.add_row(row, "low_quality", f"quality score {score[row]:.2f} below data.quality_threshold={threshold} ({details})")
    return score


class NearDuplicates:
    """MinHash signatures of word n-grams, indexed with datasketch's LSH.

    A row whose estimated Jaccard similarity to an earlier kept row reaches the threshold is
    a near-duplicate of it (the most similar one, the earliest on ties); otherwise it is
    indexed. Signatures of kept rows stay in memory (num_perm × 4 bytes each) so that LSH
    candidates are confirmed by their estimated similarity, not taken on trust; with the
    LSH tables this is about 2 KB per kept row.
    """

    def __init__(self, threshold: float, num_perm: int, ngram: int) -> None:
        import xxhash
        from datasketch import MinHash, MinHashLSH

        self.threshold = threshold
        self.ngram = ngram
        self._template = MinHash(num_perm=num_perm, seed=1, hashfunc=xxhash.xxh32_intdigest)
        # Bands are indexed by an 8-byte digest instead of their num_perm/b × 4 bytes.
        self._index = MinHashLSH(threshold=threshold, num_perm=num_perm, hashfunc=xxhash.xxh3_64_digest)
        self._signatures = np.empty((1024, num_perm), dtype=self._template.hashvalues.dtype)
        self._ids: list[str] = []

    def shingles(self, text: str) -> list[bytes]:
        words = _WORD.findall(text)
        if len(words) < self.ngram:
            return [" ".join(words).encode()] if words else []
        return [" ".join(words[i: i + self.ngram]).encode() for i in range(len(words) - self.ngram + 1)]

    def _minhash(self, text: str):
        shingles = self.shingles(text)
        if not shingles:
            return None
        minhash = self._template.copy()
        minhash.update_batch(shingles)
        return minhash

    def _matches(self, minhash) -> list[tuple[float, int]]:
        """(estimated similarity, key) of the indexed rows at or above the threshold."""
        signature = minhash.hashvalues
        found = []
        for key in self._index.query(minhash):
            similarity = float(np.mean(self._signatures[key] == signature))
            if similarity >= self.threshold:
                found.append((similarity, key))
        return found

    def _best(self, minhash) -> tuple[str, float] | None:
        best: tuple[float, int] | None = None
        for similarity, key in self._matches(minhash):
            if best is None or (similarity, -key) > (best[0], -best[1]):
                best = (similarity, key)
        return (self._ids[best[1]], best[0]) if best is not None else None

    def _insert(self, minhash, record_id: str) -> None:
        key = len(self._ids)
        self._index.insert(key, minhash, check_duplication=False)
        if key == len(self._signatures):
            self._signatures = np.concatenate([self._signatures, np.empty_like(self._signatures)])
        self._signatures[key] = minhash.hashvalues
        self._ids.append(record_id)

    def check(self, text: str, record_id: str) -> tuple[str, float] | None:
        """(id of the earlier row, estimated similarity) if ``text`` nearly repeats one; else index it."""
        minhash = self._minhash(text)
        if minhash is None:
            return None
        if (match := self._best(minhash)) is not None:
            return match
        self._insert(minhash, record_id)
        return None

    def nearest(self, text: str) -> tuple[str, float] | None:
        """Like :meth:`check`, without indexing ``text``: a lookup against a fixed reference set."""
        minhash = self._minhash(text)
        return self._best(minhash) if minhash is not None else None

    def similar(self, text: str) -> list[tuple[str, float]]:
        """Every indexed row whose estimated similarity to ``text`` reaches the threshold, most similar first."""
        minhash = self._minhash(text)
        if minhash is None:
            return []
        return [(self._ids[key], similarity) for similarity, key in sorted(self._matches(minhash), key=lambda m: (-m[0], m[1]))]

    def add(self, text: str, record_id: str) -> None:
        """Index ``text`` whether or not it nearly repeats an indexed row (building a reference set)."""
        if (minhash := self._minhash(text)) is not None:
            self._insert(minhash, record_id)
