from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from fragua.inference.choice import resolve_model
from fragua.settings import Settings, SettingsParameter
from fragua.tasks.scale import eval_batch_task
from fragua.validate.batch import BatchResult


@flow(name="eval-batch")
def eval_batch_flow(questions: str, output: str, settings: SettingsParameter | None = None, path: str | None = None, version: str | None = None) -> BatchResult:
    """Answer and score a question file, shards of scale.eval_shard_items questions as tasks on scale.task_runner."""
    settings = settings or Settings.load()
    choice = resolve_model(settings, version=version, path=path)
    result = eval_batch_task(settings, questions, choice, output)
    create_markdown_artifact(
        f"{result.overall.n} questions answered by {choice.label}: answers and scores in `{output}`", key="eval-batch",
    )
    return result
