from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fragua.cli import app

runner = CliRunner()


def test_invalid_setting_from_environment_stops_before_any_work(tmp_path):
    work = tmp_path / "work"
    result = runner.invoke(app, ["--work-dir", str(work), "ingest"], env={"FRAGUA_TRAIN__LEARNING_RATE": "-1"})
    assert result.exit_code == 2
    assert "train.learning_rate" in result.output and "greater than 0" in result.output
    assert not work.exists()


def test_invalid_set_override_names_the_field(tmp_path):
    result = runner.invoke(app, ["--work-dir", str(tmp_path), "--set", "validate.min_score=2", "run"])
    assert result.exit_code == 2
    assert "validate.min_score" in result.output


def test_unknown_profile_is_reported(tmp_path):
    result = runner.invoke(app, ["--profile", "staging", "versions"])
    assert result.exit_code == 2 and "unknown profile 'staging'" in result.output


def test_versions_on_an_empty_registry(tmp_path):
    result = runner.invoke(app, ["--work-dir", str(tmp_path), "versions"])
    assert result.exit_code == 0, result.output
    assert "production -> none" in result.output


def fragua_process(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """``python -m fragua.cli ARGS`` in its own process: what a user sees on the terminal, Prefect's run logs included."""
    done = subprocess.run([sys.executable, "-m", "fragua.cli", *args], capture_output=True, text=True, timeout=600, env={**env, "COLUMNS": "200"})
    return done.returncode, done.stdout + done.stderr


def test_a_failing_flow_prints_one_clear_error_and_no_traceback(prefect_api, tmp_path):
    code, output = fragua_process("--work-dir", str(tmp_path), "rollback", env=dict(os.environ))
    assert code == 1, output
    assert "error: nothing to roll back: no production version" in output
    assert "Traceback" not in output


def test_the_command_exits_with_its_code_after_its_run_logs_reached_the_api(prefect_api, tmp_path):
    """The console script ends with os._exit (no interpreter finalization): the exit code is still
    the command's (1 for a refused file, 2 for a bad setting, 0 for success), and what the run
    logged, up to its final state, is on the Prefect API and the terminal."""
    import re

    from prefect.client.schemas.filters import FlowRunFilter, LogFilter, LogFilterFlowRunId

    source = tmp_path / "empty.jsonl"
    source.write_text("")
    code, output = fragua_process("--work-dir", str(tmp_path / "work"), "ingest", "--source", str(source),
                                  env=os.environ | {"PREFECT_LOGGING_LEVEL": "INFO"})
    assert code == 1 and f"error: {source}: the file has no rows" in output, output
    (flow_run_name,) = set(re.findall(r"Flow run '([\w-]+)'", output))

    async def logged_messages() -> list[str]:
        from prefect import get_client

        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(name={"any_": [flow_run_name]}))
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id for run in runs])))
        return [log.message for log in logs]

    assert any(message.startswith("Finished in state Failed") and str(source) in message for message in asyncio.run(logged_messages()))
    assert fragua_process("--set", "train.learning_rate=-1", "ingest", env=dict(os.environ))[0] == 2
    assert fragua_process("version", env=dict(os.environ))[0] == 0


@pytest.mark.slow
def test_without_a_prefect_server_the_temporary_one_gets_time_to_start_and_a_failed_start_is_one_clear_error(tmp_path):
    # The path this test is about: no PREFECT_API_URL, so each command starts a temporary server.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    work = str(tmp_path / "work")

    # A fresh PREFECT_HOME: the server migrates a new database first (30 s measured on a quiet 2-core machine).
    code, output = fragua_process("--work-dir", work, "rollback", env=env)
    assert code == 1 and "error: nothing to roll back: no production version" in output, output
    assert "Traceback" not in output

    # A start-up timeout the user chose is kept, and a server that misses it is one clear line.
    code, output = fragua_process("--work-dir", work, "rollback", env=env | {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "0"})
    assert code == 1, output
    assert "error: the temporary Prefect server did not start within 0 s" in output
    assert "fragua server start" in output and "PREFECT_API_URL" in output
    assert "Traceback" not in output


def test_the_temporary_servers_start_up_timeout_is_generous_unless_chosen_or_unneeded():
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    from fragua.integrations.prefect_server import TEMPORARY_SERVER_STARTUP_SECONDS, temporary_server_patience

    def timeout_within() -> int:
        with temporary_server_patience():
            return PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()

    with temporary_settings(updates={PREFECT_API_URL: None}):  # the suite's environment chooses no timeout
        assert timeout_within() == TEMPORARY_SERVER_STARTUP_SECONDS > 20  # Prefect's own default is 20 s
    with temporary_settings(updates={PREFECT_API_URL: None, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 7}):
        assert timeout_within() == 7
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 7}):  # a server is configured
        assert timeout_within() == 7


def test_init_base_builds_a_loadable_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = runner.invoke(app, ["--work-dir", str(tmp_path), "init-base"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "base" / "fragua-tiny"
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    assert tokenizer.chat_template and tokenizer.pad_token and tokenizer.eos_token == "<|im_end|>"
    again = runner.invoke(app, ["--work-dir", str(tmp_path), "--set", "train.tiny.vocab_size=1000", "init-base"])
    assert again.exit_code == 1 and "init-base --force" in again.output


def test_ingest_prints_the_dataset_summary_and_export_gives_one_domain(prefect_api, tmp_path):
    import json

    from .conftest import EXAMPLES

    work = tmp_path / "work"
    result = runner.invoke(app, ["--work-dir", str(work), "ingest", "--source", str(EXAMPLES)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "records" in result.output and "hotel" in result.output and "ml" in result.output
    assert "rows = kept + duplicates + quarantined" in result.output and "stats.png" in result.output
    listed = runner.invoke(app, ["--work-dir", str(work), "datasets", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "hotel, ml" in listed.output
    out = tmp_path / "hotel-validation.jsonl"
    exported = runner.invoke(app, ["--work-dir", str(work), "datasets", "export", "--split", "validation", "--domain", "hotel", "--output", str(out)])
    assert exported.exit_code == 0, exported.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and {r["domain"] for r in rows} == {"hotel"} and {r["split"] for r in rows} == {"validation"}
    unknown = runner.invoke(app, ["--work-dir", str(work), "datasets", "export", "--domain", "spa", "--output", str(out)])
    assert unknown.exit_code == 2 and "no domain 'spa'" in unknown.output


def test_train_shows_a_progress_bar_and_the_run_summary(prefect_api, tmp_path):
    from .conftest import EXAMPLES

    result = runner.invoke(
        app,
        ["--work-dir", str(tmp_path), "--set", "train.max_steps=4", "--set", "train.logging_steps=1", "--set", "tracking.mode=disabled",
         "train", "--source", str(EXAMPLES / "batch1" / "ml_concepts.jsonl")],
        env={"COLUMNS": "160"},
    )
    assert result.exit_code == 0, result.output
    assert "4/4" in result.output and "tok/s" in result.output  # the bar reached the last step
    assert "Training run" in result.output and "padding-free" in result.output
