"""What a pipeline or autotrain run ended in, in words: the verdict's name, one line, and the
summary a user reads first in the Prefect UI."""

from __future__ import annotations

from dataclasses import dataclass, field

PROMOTED = "Promoted"
NOT_PROMOTED = "Not promoted"
REJECTED = "Rejected"
NOTHING_TO_TRAIN = "Nothing to train"


@dataclass(frozen=True)
class Verdict:
    """Where a candidate ended: its name (the run's final state name) and one line saying why."""

    name: str
    line: str


@dataclass(frozen=True)
class CandidateOutcome:
    """A trained run after validation and deploy, whichever flow ran them."""

    dataset_id: str
    run_id: str
    passed: bool
    version: str | None
    promoted: bool
    production_before: str | None
    production: str | None
    report_path: str | None
    reasons: list[str] = field(default_factory=list)


def promote_hint(version: str) -> str:
    """How to promote a registered version: the UI's deploy deployment, or the CLI."""
    return (
        f"promote it from the Prefect UI (Deployments → deploy/default → Run → Custom run, version = {version}), "
        f"with `prefect deployment run 'deploy/default' --param version={version}`, or with `fragua deploy --version {version}`"
    )


def candidate_verdict(outcome: CandidateOutcome) -> Verdict:
    kept = f"production stays {outcome.production or 'unset'}"
    if outcome.promoted:
        return Verdict(PROMOTED, f"{outcome.version} promoted to production (was {outcome.production_before or 'unset'})")
    if outcome.passed:
        return Verdict(NOT_PROMOTED, f"{outcome.version} passed validation and is registered, not promoted (registry.auto_deploy is off); {kept}")
    failed = [reason for reason in outcome.reasons if reason.startswith("FAIL")] or outcome.reasons
    first = f": {failed[0]}" if failed else ""
    more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
    return Verdict(REJECTED, f"validation rejected run {outcome.run_id}{first}{more}; {kept}")


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def candidate_summary(title: str, outcome: CandidateOutcome, lead: list[tuple[str, str]] | None = None) -> str:
    """Markdown: the verdict, the facts (``lead`` rows first), the gates' reasons and what to do next."""
    verdict = candidate_verdict(outcome)
    rows = [
        *(lead or []),
        ("dataset", f"`{outcome.dataset_id}`"),
        ("training run", f"`{outcome.run_id}`"),
        ("validation", "passed" if outcome.passed else "FAILED"),
        ("version produced", f"`{outcome.version}`" if outcome.version else "none"),
        ("promoted", _yes_no(outcome.promoted)),
        ("production before", f"`{outcome.production_before or 'unset'}`"),
        ("production after", f"`{outcome.production or 'unset'}`"),
        ("validation report", f"`{outcome.report_path}`" if outcome.report_path else "-"),
    ]
    lines = [f"# {title}: {verdict.name}", "", verdict.line, "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    if outcome.reasons:
        lines += ["## Gates", "", *(f"- {reason}" for reason in outcome.reasons), ""]
    if outcome.version and not outcome.promoted:
        lines += ["## Next", "", f"To put `{outcome.version}` in production, {promote_hint(outcome.version)}.", ""]
    lines += [
        "Scores per model and domain: the `validation-report` and `validation-metrics` artifacts of the "
        "`validate` subflow run (every stage's artifacts are also listed under Artifacts)."
    ]
    return "\n".join(lines) + "\n"


def nothing_to_train_summary(intake_run: str, why: str) -> str:
    return f"# Autotrain: {NOTHING_TO_TRAIN}\n\n{why}\n\nintake run `{intake_run}`; no model was trained, production is unchanged.\n"
