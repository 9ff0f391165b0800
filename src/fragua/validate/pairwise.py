"""The candidate against production on the same questions: the judge's pairwise win rate and
the answers that differ most.

Each question is judged twice, the candidate's answer first (A) and then second (B), so a judge
that prefers a position cancels itself out. A question is a win when the candidate comes out
ahead over both orders (it wins both, or wins one and ties the other), a loss when production
does, and a tie otherwise (a tie in both orders, or one win each). The win rate counts a tie as
half a win; its 95% interval is the Wilson score interval over the questions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, Field

from fragua.validate.judge import Judge, JudgeItem, Winner
from fragua.validate.metrics import token_f1

Z_95 = 1.959963984540054
ORDER_POINTS = {"candidate": 1.0, "tie": 0.5, "production": 0.0}


class WinRate(BaseModel):
    wins: int
    ties: int
    losses: int
    rate: float = Field(description="(wins + ties / 2) / questions.")
    low: float = Field(description="Lower end of the 95% Wilson score interval of the rate.")
    high: float = Field(description="Upper end of the 95% Wilson score interval of the rate.")

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses


class AnswerPair(BaseModel):
    """One question's candidate and production answers, side by side."""

    id: str
    domain: str
    question: str
    reference: str | None
    candidate: str
    production: str
    candidate_score: float | None = Field(None, description="The candidate's score on the question (judge score, else token F1).")
    production_score: float | None = Field(None, description="Production's score on the question, the same measure.")
    outcome: str | None = Field(None, description="win, tie or loss for the candidate, when the judge compared them.")

    @property
    def difference(self) -> tuple[float, float]:
        """How far apart the two answers are: the score gap, then how little their words overlap."""
        gap = abs((self.candidate_score or 0.0) - (self.production_score or 0.0))
        return gap, 1.0 - token_f1(self.candidate, self.production)


class HeadToHead(BaseModel):
    production_version: str
    shared: int = Field(description="Free-form validation questions both were scored on.")
    win_rate: WinRate | None = Field(None, description="The judge's pairwise verdicts; None without validate.judge.")
    differences: list[AnswerPair] = Field(default_factory=list, description="The questions whose answers differ most, largest first.")


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``successes`` may count ties as halves)."""
    if n <= 0:
        raise ValueError("a win rate needs at least one question")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - margin), min(1.0, centre + margin)


def outcome(candidate_first: Winner, production_first: Winner) -> str:
    """win, tie or loss for the candidate from the verdicts in both orders (A is the first answer)."""
    first = {"A": "candidate", "B": "production", "tie": "tie"}[candidate_first]
    second = {"A": "production", "B": "candidate", "tie": "tie"}[production_first]
    points = ORDER_POINTS[first] + ORDER_POINTS[second]
    return "win" if points > 1.0 else "loss" if points < 1.0 else "tie"


def win_rate(outcomes: Sequence[str]) -> WinRate:
    wins, ties, losses = (sum(1 for o in outcomes if o == kind) for kind in ("win", "tie", "loss"))
    n = wins + ties + losses
    low, high = wilson_interval(wins + ties / 2, n)
    return WinRate(wins=wins, ties=ties, losses=losses, rate=(wins + ties / 2) / n, low=low, high=high)


def judge_pairs(judge: Judge, items: Sequence[JudgeItem], pairs: list[AnswerPair]) -> WinRate:
    """Ask the judge about every pair in both orders; each pair's outcome is set, the win rate returned."""
    candidates = [pair.candidate for pair in pairs]
    productions = [pair.production for pair in pairs]
    verdicts = judge.preferences([*items, *items], [*candidates, *productions], [*productions, *candidates])
    for index, pair in enumerate(pairs):
        pair.outcome = outcome(verdicts[index], verdicts[len(pairs) + index])
    return win_rate([pair.outcome for pair in pairs if pair.outcome])


def largest_differences(pairs: Sequence[AnswerPair], count: int = 10) -> list[AnswerPair]:
    """The ``count`` pairs whose answers differ most: the largest score gap first, then the least word overlap."""
    differing = [pair for pair in pairs if pair.candidate.strip() != pair.production.strip()]
    return sorted(differing, key=lambda pair: pair.difference, reverse=True)[:count]
