"""One entry of ``validate.benchmarks``: an lm-evaluation-harness task run on base, production
and candidate as a guard against forgetting general ability."""

from __future__ import annotations

from pydantic import Field

from fragua.settings.base import Section

# lm-eval names a task or group with letters, digits, '_', '-' and '.' (e.g. arc_easy, mmlu, leaderboard_bbh).
TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
# A metric as lm-eval reports it: its name, optionally ',' and the filter (exact_match,strict-match); no filter means 'none'.
METRIC_NAME = r"^[A-Za-z0-9_]+(,[A-Za-z0-9_.-]+)?$"
SHIPPED_TASK = "fragua_general_knowledge"


class BenchmarkSpec(Section):
    task: str = Field(
        pattern=TASK_NAME,
        description=(
            f"lm-eval task or group name: one of Fragua's shipped tasks ({SHIPPED_TASK}, offline), one in a folder of "
            "validate.benchmark_include_path, or one of lm-eval's registry (arc_easy, mmlu, hellaswag…; its data comes from the "
            "Hugging Face hub, so the machine must reach it or have it cached)."
        ),
    )
    limit: int | None = Field(
        None,
        ge=1,
        description=(
            "Score only the first N questions of the task (per subtask of a group), as lm-eval's --limit; None scores all. "
            "A small limit is quick but noisy: the report shows each score's standard error."
        ),
    )
    num_fewshot: int | None = Field(None, ge=0, le=100, description="Worked examples put before each question (lm-eval's --num_fewshot); None: the task's own default.")
    metric: str = Field(
        "acc",
        pattern=METRIC_NAME,
        description=(
            "The score validate.max_benchmark_drop applies to, as lm-eval names it: acc (the option with the highest "
            "log-likelihood), acc_norm (per character of the option), or any metric the task reports, with ',filter' "
            "when it is not the 'none' filter (exact_match,strict-match)."
        ),
    )

    @property
    def result_key(self) -> str:
        """The key of this metric in lm-eval's results ('acc,none')."""
        return self.metric if "," in self.metric else f"{self.metric},none"
