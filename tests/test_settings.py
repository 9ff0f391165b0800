from __future__ import annotations

import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from fragua.settings import Settings, describe_validation_error, parse_overrides, shipped_profiles


def _fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        yield prefix + name, field
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, f"{prefix}{name}.")


def test_defaults_are_valid_and_every_field_is_described():
    settings = Settings()
    assert settings.train.method == "lora"
    undocumented = [name for name, field in _fields(Settings) if not field.description]
    assert undocumented == []


def test_environment_overrides_nested_fields(monkeypatch):
    monkeypatch.setenv("FRAGUA_TRAIN__LEARNING_RATE", "0.001")
    monkeypatch.setenv("FRAGUA_VALIDATE__MIN_SCORE", "0.5")
    monkeypatch.setenv("FRAGUA_TRAIN__LORA__R", "8")
    settings = Settings()
    assert settings.train.learning_rate == 0.001
    assert settings.validate.min_score == 0.5
    assert settings.train.lora.r == 8


def test_invalid_environment_value_names_the_field(monkeypatch):
    monkeypatch.setenv("FRAGUA_TRAIN__LEARNING_RATE", "-1")
    with pytest.raises(ValidationError) as caught:
        Settings()
    message = describe_validation_error(caught.value)
    assert "train.learning_rate" in message
    assert "FRAGUA_TRAIN__LEARNING_RATE" in message
    assert "-1" in message


def test_precedence_arguments_over_env_over_file_over_profile(monkeypatch, tmp_path):
    settings_file = tmp_path / "fragua.toml"
    settings_file.write_text("[train]\nepochs = 2\nbatch_size = 3\nlearning_rate = 0.0001\n")
    monkeypatch.setenv("FRAGUA_TRAIN__BATCH_SIZE", "5")
    settings = Settings.load(profile="production", settings_file=settings_file, train={"learning_rate": 0.02})
    assert settings.train.learning_rate == 0.02  # argument
    assert settings.train.batch_size == 5  # environment
    assert settings.train.epochs == 2  # file
    assert settings.train.gradient_accumulation_steps == 2  # production profile
    assert settings.validate.min_score == 0.8  # production profile
    assert settings.train.lora.r == 64  # default


def test_yaml_settings_file(tmp_path):
    settings_file = tmp_path / "fragua.yaml"
    settings_file.write_text("validate:\n  primary_metric: exact_match\nregistry:\n  model_name: acme\n")
    settings = Settings.load(settings_file=settings_file)
    assert settings.validate.primary_metric == "exact_match"
    assert settings.registry.model_name == "acme"


def test_settings_file_from_environment(monkeypatch, tmp_path):
    settings_file = tmp_path / "fragua.toml"
    settings_file.write_text("[registry]\nauto_deploy = false\n")
    monkeypatch.setenv("FRAGUA_SETTINGS_FILE", str(settings_file))
    assert Settings().registry.auto_deploy is False


def test_unknown_key_in_file_is_rejected(tmp_path):
    settings_file = tmp_path / "fragua.toml"
    settings_file.write_text("[train]\nlearnig_rate = 0.1\n")
    with pytest.raises(ValidationError, match="learnig_rate"):
        Settings.load(settings_file=settings_file)


@pytest.mark.parametrize("profile", sorted(shipped_profiles()))
def test_every_shipped_profile_loads(profile):
    settings = Settings.load(profile=profile)
    assert settings.validate.min_score > 0


def test_profiles_differ_as_documented():
    development = Settings.load(profile="development")
    production = Settings.load(profile="production")
    assert development.train.epochs < production.train.epochs
    assert development.train.batch_size < production.train.batch_size
    assert development.validate.min_score < production.validate.min_score
    assert development.registry.auto_deploy is False and production.registry.auto_deploy is True


def test_unknown_profile_is_an_error():
    with pytest.raises(ValueError, match="unknown profile 'staging'"):
        Settings.load(profile="staging")


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"validate": {"max_new_tokens": 300}, "train": {"max_seq_length": 256}}, "validate.max_new_tokens"),
        ({"train": {"attn_implementation": "flash_attention_2", "precision": "fp32"}}, "flash_attention_2"),
        ({"train": {"max_seq_length": 1024}}, "max_position_embeddings"),
        ({"train": {"tiny": {"hidden_size": 130, "num_heads": 4}}}, "divisible"),
        ({"data": {"min_chars": 50, "max_chars": 10}}, "data.min_chars"),
        ({"registry": {"model_name": "../escape"}}, "registry.model_name"),
        ({"tracking": {"mode": "online"}}, "tracking.api_key"),
    ],
)
def test_cross_field_checks_fail_at_construction(overrides, field):
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        Settings(**overrides)


def test_secrets_are_redacted(monkeypatch):
    monkeypatch.setenv("FRAGUA_TRACKING__API_KEY", "wandb-secret-123")
    settings = Settings()
    assert isinstance(settings.tracking.api_key, SecretStr)
    assert settings.tracking.api_key.get_secret_value() == "wandb-secret-123"
    assert "wandb-secret-123" not in repr(settings)
    assert "wandb-secret-123" not in str(settings.redacted())
    assert "wandb-secret-123" not in settings.model_dump_json()


def test_a_password_in_the_intake_database_url_stays_secret(monkeypatch):
    url = "postgresql+psycopg://fragua:db-secret-456@db.example/fragua"
    monkeypatch.setenv("FRAGUA_INTAKE__DATABASE_URL", url)
    settings = Settings()
    assert settings.intake_url == url  # what the queue connects with
    for dumped in (repr(settings), str(settings.redacted()), settings.model_dump_json()):
        assert "db-secret-456" not in dumped


def test_parse_overrides_builds_nested_values():
    assert parse_overrides(["train.epochs=2", "train.lora.r=4", "registry.model_name=acme", "data.sources=[{\"path\": \"x\"}]"]) == {
        "train": {"epochs": 2, "lora": {"r": 4}},
        "registry": {"model_name": "acme"},
        "data": {"sources": [{"path": "x"}]},
    }
    with pytest.raises(ValueError, match="SECTION.FIELD=VALUE"):
        parse_overrides(["train.epochs"])


def test_fingerprint_changes_only_with_the_named_sections():
    a = Settings()
    b = Settings(validate={"min_score": 0.3})
    c = Settings(train={"epochs": 3})
    assert a.fingerprint("train") == b.fingerprint("train")
    assert a.fingerprint("train") != c.fingerprint("train")
