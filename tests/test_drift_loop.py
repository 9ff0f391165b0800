"""Continuous training cannot ratchet quality down: each cycle may lose up to
validate.regression_tolerance against production, but never more than
validate.max_drop_from_best against the best version ever promoted."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from fragua.jobs import validate as validate_jobs
from fragua.registry import open_registry
from fragua.settings import Settings
from fragua.validate.scoring import ItemResult

from .conftest import EXAMPLES

pytestmark = pytest.mark.e2e

# Each cycle's candidate is 0.04 worse than the last (inside regression_tolerance 0.05), until
# the third has lost 0.08 against the first (beyond max_drop_from_best 0.07); the fourth is a
# genuine improvement.
QUALITIES = [0.50, 0.46, 0.42, 0.53]
VALIDATE = {"min_score": 0.05, "require_beat_base": False, "regression_tolerance": 0.05, "max_drop_from_best": 0.07, "max_new_tokens": 4}


def noise_file(folder: Path, cycle: int) -> Path:
    """New examples whose answers are random codes: new ids for incremental training, noise to learn."""
    rng = random.Random(cycle)
    path = folder / f"noise-{cycle}.jsonl"
    rows = [{"instruction": f"What is the locker code of member {cycle}-{i}?", "input": "",
             "output": f"Locker {rng.randint(100, 999)}-{rng.choice('ABCDEF')}.", "domain": "noise"} for i in range(12)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


class ScriptedQuality:
    """The models' answers are scored as the script says: a candidate run gets the current cycle's
    quality, a registry version the quality of the run it was published from. Training,
    registry, alias history, score cache and gates are the real ones."""

    def __init__(self) -> None:
        self.current = 0.0
        self.by_run: dict[str, float] = {}
        self.scored: Counter[tuple[str, str]] = Counter()

    def __call__(self, settings, model_path, items, base_model=None):
        folder = Path(model_path)
        if (folder / "manifest.json").is_file():  # a fetched registry version
            name = json.loads((folder / "manifest.json").read_text())["version"]
            quality = self.by_run[json.loads((folder / "manifest.json").read_text())["lineage"]["run_id"]]
        elif folder.parent.parent == settings.runs_path:  # a candidate run's model
            name = folder.parent.name
            quality = self.by_run.setdefault(name, self.current)
        else:  # the base model
            name, quality = "base", 0.0
        for item in items:
            self.scored[(name, item.id)] += 1
        return [
            ItemResult(id=item.id, domain=item.domain, question=item.question, reference=item.reference, prediction="-",
                       answer_nll=2.0, answer_tokens=1, exact_match=quality, token_f1=quality, rouge_l=quality)
            for item in items
        ]


@pytest.mark.slow(seconds=90)
def test_the_loop_stops_promoting_once_tolerated_drops_add_up_and_still_promotes_improvements(prefect_api, tiny_base, tmp_path, monkeypatch):
    from fragua.flows.pipeline import pipeline_flow

    scripted = ScriptedQuality()
    monkeypatch.setattr(validate_jobs, "_score", scripted)
    work, sources = tmp_path / "work", [{"path": str(EXAMPLES / "batch1")}]
    results = []
    for cycle, quality in enumerate(QUALITIES, start=1):
        sources.append({"path": str(noise_file(tmp_path, cycle))})
        settings = Settings(
            work_dir=work, data={"sources": sources}, tracking={"mode": "disabled"}, validate=VALIDATE,
            train={"base_model": str(tiny_base), "max_steps": 1, "incremental": True},
        )
        scripted.current = quality
        results.append(pipeline_flow(settings))

    promoted = [(r.promoted, r.version) for r in results]
    assert promoted == [(True, "fragua-tiny-v1"), (True, "fragua-tiny-v2"), (False, None), (True, "fragua-tiny-v3")]
    assert [r.production for r in results] == ["fragua-tiny-v1", "fragua-tiny-v2", "fragua-tiny-v2", "fragua-tiny-v3"]

    second = results[1].reasons
    assert any(r.startswith("PASS token_f1 0.4600 >= best promoted fragua-tiny-v1's 0.5000 - validate.max_drop_from_best 0.0700") for r in second), second
    third = results[2].reasons
    assert third[0].startswith("FAIL token_f1 0.4200 < best promoted fragua-tiny-v1's 0.5000 - validate.max_drop_from_best 0.0700 on the ")
    assert third[0].endswith("(a drop of 0.0800)")
    # Against production alone it would have passed: that is the ratchet the best-version gate stops.
    assert "PASS token_f1 0.4200 >= production fragua-tiny-v2's 0.4600 - validate.regression_tolerance 0.0500" in third
    assert [r for r in third if r.startswith("FAIL")] == [third[0]]
    fourth = results[3].reasons
    assert any(r.startswith("PASS token_f1 0.5300 >= best promoted fragua-tiny-v1's 0.5000") for r in fourth), fourth

    # The validation split grew every cycle; the promoted versions were scored on each question once
    # (cached by version and question hash), and the drift gate compared on all of today's questions.
    validated = [validate_jobs.load_validation(settings, r.run_id) for r in results]
    sizes = [v.candidate.overall.n for v in validated]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert validated[0].reference is None
    assert [v.reference.version for v in validated[1:]] == ["fragua-tiny-v1"] * 3
    assert all(v.reference.shared == v.candidate.overall.n for v in validated[1:])
    assert max(count for (name, _), count in scripted.scored.items() if name.startswith("fragua-")) == 1
    report = Path(validated[2].report_path).read_text()
    assert "## Candidate vs best promoted version `fragua-tiny-v1`" in report and "not promotable: token_f1" in report

    manifest = open_registry(settings).manifest("fragua-tiny-v3")
    assert manifest.decision["best_version"] == "fragua-tiny-v1" and manifest.lineage["trained_from"] == "fragua-tiny-v2"
