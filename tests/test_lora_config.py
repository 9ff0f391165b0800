from __future__ import annotations

import tomllib

import pytest
from typer.testing import CliRunner

from fragua.cli import app
from fragua.settings import Settings
from fragua.train.lora_config import count_parameters, recommend_lora


@pytest.mark.parametrize(
    ("parameters", "task", "method", "r", "learning_rate"),
    [
        (700_000, "qa", "lora", 64, 5e-3),  # the tiny model learns from scratch
        (500_000_000, "chat", "lora", 16, 2e-4),
        (7_000_000_000, "qa", "lora", 32, 2e-4),  # knowledge needs a larger rank
        (7_000_000_000, "classification", "lora", 8, 2e-4),
        (13_000_000_000, "chat", "qlora", 16, 1e-4),  # from 13B the base is loaded in 4 bit
        (70_000_000_000, "domain", "qlora", 16, 5e-5),
    ],
)
def test_recommendation_by_size_and_task(parameters, task, method, r, learning_rate):
    rec = recommend_lora(parameters, task)
    assert (rec.method, rec.r, rec.alpha, rec.target_modules) == (method, r, 2 * r, "all-linear")
    assert rec.learning_rate == pytest.approx(learning_rate)
    assert rec.reasons


def test_bigger_models_get_smaller_or_equal_learning_rates():
    rates = [recommend_lora(n, "qa").learning_rate for n in (10**8, 10**9, 10**10, 3 * 10**10, 10**11)]
    assert rates == sorted(rates, reverse=True)


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="unknown task 'poetry'"):
        recommend_lora(10**9, "poetry")


def test_the_printed_toml_is_a_valid_settings_file(tiny_base, tmp_path):
    assert count_parameters(str(tiny_base)) == recommend_lora(count_parameters(str(tiny_base)), "qa").parameters > 100_000
    result = CliRunner().invoke(app, ["lora-config", str(tiny_base), "--task", "chat"])
    assert result.exit_code == 0, result.output
    parsed = tomllib.loads(result.output)
    assert parsed["train"]["lora"]["target_modules"] == "all-linear"
    settings_file = tmp_path / "fragua.toml"
    settings_file.write_text(result.output)
    settings = Settings.load(settings_file=settings_file)
    assert settings.train.lora.r == parsed["train"]["lora"]["r"] and settings.train.method == "lora"
