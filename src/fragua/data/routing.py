"""Domain routing: which domain ("branch") each row belongs to.

A row's domain is, in order: its own ``domain`` field; the first ``data.routing`` rule that
matches it; its source's ``domain`` setting; its category (HEAD-QA ``category`` or a
``category`` field); ``data.default_domain``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import PurePath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fragua.settings import DomainRule

_NOT_WORD = r"[^\p{L}\p{N}_]"


@dataclass(frozen=True)
class SourceRule:
    """A rule as it applies to one source (its source patterns already decided)."""

    domain: str
    categories: tuple[str, ...]
    keywords: str | None  # one RE2 pattern


def rules_for_source(rules: list[DomainRule], source: str) -> list[SourceRule]:
    """The rules that can match rows of ``source``, in order."""
    applicable = []
    for rule in rules:
        if rule.sources and not any(fnmatch(source, p) or fnmatch(PurePath(source).name, p) for p in rule.sources):
            continue
        keywords = f"(?i)(?:^|{_NOT_WORD})(?:{'|'.join(re.escape(k.strip()) for k in rule.keywords)})(?:$|{_NOT_WORD})" if rule.keywords else None
        applicable.append(SourceRule(rule.domain, tuple(c.strip().casefold() for c in rule.categories), keywords))
    return applicable


def route(
    length: int,
    rules: list[SourceRule],
    *,
    row_domain: pa.Array | None,
    category: pa.Array | None,
    prompt: pa.Array | None,
    source_domain: str | None,
    default_domain: str,
) -> pa.Array:
    """The domain of each row (``prompt``: the user messages, needed when rules use keywords)."""
    chosen: pa.Array = pa.nulls(length, pa.string())
    folded = pc.utf8_lower(pc.utf8_trim_whitespace(category)) if category is not None else None
    for rule in reversed(rules):
        match = np.ones(length, dtype=bool)
        if rule.categories:
            if folded is None:
                continue
            match &= pc.fill_null(pc.is_in(folded, value_set=pa.array(rule.categories, pa.string())), False).to_numpy(zero_copy_only=False)
        if rule.keywords:
            match &= pc.fill_null(pc.match_substring_regex(prompt, rule.keywords), False).to_numpy(zero_copy_only=False)
        chosen = pc.if_else(pa.array(match), pa.scalar(rule.domain), chosen)
    candidates = [row_domain, chosen]
    if source_domain:
        candidates.append(pa.scalar(source_domain))
    if category is not None:
        stripped = pc.utf8_trim_whitespace(category)
        candidates.append(pc.if_else(pc.equal(stripped, ""), pa.scalar(None, pa.string()), stripped))
    candidates.append(pa.scalar(default_domain))
    return pc.coalesce(*[c for c in candidates if c is not None])
