"""The judge's part of the validation report: verdicts per model, the win rate against
production, and the questions whose candidate and production answers differ most."""

from __future__ import annotations

from fragua.reports.markdown import Cell, clip, escape, table
from fragua.validate.judge import RUBRIC_VERSION, VERDICT_SCORES
from fragua.validate.pairwise import HeadToHead
from fragua.validate.scoring import Evaluation, ItemResult

DIFFERENCE_CELL_CHARS = 60


def judge_section(evaluations: dict[str, Evaluation | None]) -> list[str]:
    """Verdict counts and judge score per model; nothing when no model was judged."""
    rows = []
    for label, evaluation in evaluations.items():
        if evaluation is None or not evaluation.overall.n_judged:
            continue
        overall = evaluation.overall
        rows.append({"model": label, "judged": overall.n_judged, **{v: overall.verdicts.get(v, 0) for v in VERDICT_SCORES}, "judge_score": overall.judge_score})
    if not rows:
        return []
    return [
        f"## Judge verdicts (rubric v{RUBRIC_VERSION})", "",
        "The judge reads each generated answer against the reference: correct 1, partially correct 0.5, incorrect 0.", "",
        table(rows, ["model", "judged", *VERDICT_SCORES, "judge_score"]), "",
    ]


def verdict_note(sample: ItemResult) -> list[str]:
    """A sample's verdict and the reference facts the judge found missing, for the sample table."""
    if sample.judge_verdict is None:
        return []
    missing = f"; missing: {'; '.join(sample.judge_missing)}" if sample.judge_missing else ""
    return [f"judge: {sample.judge_verdict}{missing}"]


def versus_production_section(comparison: HeadToHead | None, production_label: str, *, compact: bool) -> list[str]:
    """The win rate against production and the largest differences, side by side."""
    if comparison is None:
        return []
    lines = [f"## Candidate vs {production_label}, answer by answer", ""]
    rate = comparison.win_rate
    if rate is not None:
        summary = (
            f"Judged pairwise on {rate.n} shared questions, each in both orders: "
            f"**{rate.wins} wins, {rate.ties} ties, {rate.losses} losses**; "
            f"win rate {rate.rate:.4f} (a tie counts half; 95% Wilson interval {rate.low:.4f}-{rate.high:.4f})."
        )
        lines += [summary, ""]
    else:
        lines += [f"{comparison.shared} shared free-form questions; no judge (validate.judge.model), so no win rate.", ""]
    if not comparison.differences:
        return [*lines, "The candidate and production answered every shared question alike.", ""]
    measure = "judge score" if rate is not None else "token F1"
    lines += [f"The {len(comparison.differences)} questions where the answers differ most ({measure} gap first, then word overlap):", ""]
    if compact:
        rows = [
            {
                "question": Cell(f"{escape(clip(pair.question, DIFFERENCE_CELL_CHARS))}<br>**reference** {escape(clip(pair.reference or '-', DIFFERENCE_CELL_CHARS))}"),
                "candidate": Cell(escape(clip(pair.candidate or "-", DIFFERENCE_CELL_CHARS))),
                "production": Cell(escape(clip(pair.production or "-", DIFFERENCE_CELL_CHARS))),
                "scores": f"{_score(pair.candidate_score)} vs {_score(pair.production_score)}" + (f", {pair.outcome}" if pair.outcome else ""),
            }
            for pair in comparison.differences
        ]
        return [*lines, table(rows, ["question", "candidate", "production", "scores"]), ""]
    rows = [
        {
            "domain": pair.domain, "question": pair.question, "reference": pair.reference, "candidate": pair.candidate,
            "production": pair.production, "candidate score": pair.candidate_score, "production score": pair.production_score,
            "outcome": pair.outcome,
        }
        for pair in comparison.differences
    ]
    columns = ["domain", "question", "reference", "candidate", "production", "candidate score", "production score"]
    return [*lines, table(rows, [*columns, *(["outcome"] if rate is not None else [])]), ""]


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
