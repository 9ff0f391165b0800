"""The root ``Settings`` model and where its values come from.

Sources, highest precedence first: arguments (flow parameters, CLI ``--set``) >
environment (``FRAGUA_TRAIN__LEARNING_RATE=…``) > a TOML/YAML settings file > a shipped
profile > the defaults of the section models, which are tuned so that the embedded demo (tiny local base
model, shipped example data) runs end to end in minutes on a laptop CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from fragua.settings.base import ENV_NESTED_DELIMITER, ENV_PREFIX, PROFILE_ENV, SETTINGS_FILE_ENV, is_secret, shipped_profiles
from fragua.settings.data import DataSettings, ExpandSettings
from fragua.settings.operations import IntakeSettings, NotificationSettings, RegistrySettings, ScaleSettings, TrackingSettings
from fragua.settings.serve import ServeSettings
from fragua.settings.train import HpoSettings, TrainSettings
from fragua.settings.validate import ChatSettings, ValidateSettings

_selected_files: ContextVar[tuple[Path, ...] | None] = ContextVar("fragua_settings_files", default=None)


def _settings_files() -> tuple[Path, ...]:
    """Profile then settings file, lowest precedence first."""
    chosen = _selected_files.get()
    if chosen is not None:
        return chosen
    return resolve_files(os.environ.get(PROFILE_ENV) or None, os.environ.get(SETTINGS_FILE_ENV) or None)


def resolve_files(profile: str | None, settings_file: str | Path | None) -> tuple[Path, ...]:
    files: list[Path] = []
    if profile:
        profiles = shipped_profiles()
        if profile not in profiles:
            raise ValueError(f"unknown profile {profile!r}; shipped profiles: {', '.join(profiles)}")
        files.append(profiles[profile])
    if settings_file:
        path = Path(settings_file)
        if not path.is_file():
            raise ValueError(f"settings file {path} does not exist")
        if path.suffix.lower() not in {".toml", ".yaml", ".yml"}:
            raise ValueError(f"settings file {path} must end in .toml, .yaml or .yml")
        files.append(path)
    return tuple(files)


SECTIONS_EXPECTED = "expected a mapping of sections (data:, train:, ...)"


class _YamlSections(YamlConfigSettingsSource):
    """A YAML settings file; one that does not parse, or whose top level is not a mapping of
    sections (a list, a scalar), is one clear error naming the file."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        import yaml

        try:
            data = super()._read_file(file_path)
        except yaml.YAMLError as exc:
            raise ValueError(f"settings file {file_path}: invalid YAML ({' '.join(str(exc).split())})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"settings file {file_path}: {SECTIONS_EXPECTED}, got a {type(data).__name__}")
        return data


class _TomlSections(TomlConfigSettingsSource):
    """A TOML settings file (its top level is always a table); one that does not parse is one error naming the file."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        import tomllib

        try:
            return super()._read_file(file_path)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"settings file {file_path}: invalid TOML ({exc})") from exc


def _file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    if path.suffix.lower() == ".toml":
        return _TomlSections(settings_cls, toml_file=path)
    return _YamlSections(settings_cls, yaml_file=path)


# The section is called "validate" as the contract says; it shadows pydantic's deprecated
# ``BaseModel.validate`` classmethod only on instances, which nothing here calls.
warnings.filterwarnings("ignore", message='Field name "validate"', category=UserWarning)


class Settings(BaseSettings):
    """Everything a Fragua run needs; the Prefect UI renders it as the flows' parameter form."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        validate_default=True,
    )

    work_dir: Path = Field(Path(".fragua"), description="Where base models, datasets, runs, the local registry and W&B files go.")
    data: DataSettings = Field(default_factory=DataSettings, description="Sources, cleaning and split.")
    expand: ExpandSettings = Field(default_factory=ExpandSettings, description="Train-split augmentation.")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Base model, method and hyperparameters.")
    validate: ValidateSettings = Field(default_factory=ValidateSettings, description="Metrics and promotion gates.")
    hpo: HpoSettings = Field(default_factory=HpoSettings, description="Hyperparameter search space and budget.")
    registry: RegistrySettings = Field(default_factory=RegistrySettings, description="Model registry and deployment.")
    tracking: TrackingSettings = Field(default_factory=TrackingSettings, description="Weights & Biases logging.")
    intake: IntakeSettings = Field(default_factory=IntakeSettings, description="Queue of new examples for autotrain.")
    notifications: NotificationSettings = Field(default_factory=NotificationSettings, description="Deploy, rollback and failure notifications.")
    chat: ChatSettings = Field(default_factory=ChatSettings, description="Generation settings of `fragua chat`.")
    scale: ScaleSettings = Field(default_factory=ScaleSettings, description="Task runner of per-shard work (threads, Dask, Ray).")
    serve: ServeSettings = Field(default_factory=ServeSettings, description="The OpenAI-compatible server `fragua serve`.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = [_file_source(settings_cls, path) for path in reversed(_settings_files())]
        return (init_settings, env_settings, *files)

    @model_validator(mode="after")
    def _cross_section(self) -> Settings:
        if self.validate.max_new_tokens >= self.train.max_seq_length:
            raise ValueError(
                f"validate.max_new_tokens ({self.validate.max_new_tokens}) must be below "
                f"train.max_seq_length ({self.train.max_seq_length}) so prompts still fit"
            )
        if self.train.stream_data:
            if self.data.store != "registry" or self.registry.backend != "s3" or self.registry.bucket is None:
                raise ValueError(
                    "train.stream_data reads the train split from the registry's S3 bucket: set data.store = 'registry', "
                    "registry.backend = 's3' and registry.bucket (a registry.storage_block cannot be streamed from)"
                )
            if self.train.num_processes > 1:
                raise ValueError(f"train.stream_data trains in one process; train.num_processes is {self.train.num_processes}")
        if self.train.base_model is None and self.train.max_seq_length > self.train.tiny.max_position_embeddings:
            raise ValueError(
                f"train.max_seq_length ({self.train.max_seq_length}) exceeds what the tiny base model accepts "
                f"(train.tiny.max_position_embeddings = {self.train.tiny.max_position_embeddings})"
            )
        return self

    @classmethod
    def load(
        cls, *, profile: str | None = None, settings_file: str | Path | None = None, **overrides: Any
    ) -> Settings:
        """Build settings from a profile and/or file plus explicit overrides (which win over env)."""
        profile = profile or os.environ.get(PROFILE_ENV) or None
        settings_file = settings_file or os.environ.get(SETTINGS_FILE_ENV) or None
        with using_files(resolve_files(profile, settings_file)):
            return cls(**overrides)

    # Derived locations ------------------------------------------------------------------

    @property
    def work_path(self) -> Path:
        return self.work_dir.expanduser().resolve()

    @property
    def tiny_base_path(self) -> Path:
        return self.work_path / "base" / "fragua-tiny"

    @property
    def datasets_path(self) -> Path:
        return self.work_path / "datasets"

    @property
    def runs_path(self) -> Path:
        return self.work_path / "runs"

    @property
    def registry_path(self) -> Path:
        root = self.registry.root
        return root.expanduser().resolve() if root else self.work_path / "registry"

    @property
    def intake_url(self) -> str:
        url = self.intake.database_url
        return url.get_secret_value() if url else f"sqlite:///{self.work_path / 'intake.db'}"

    @property
    def base_model_ref(self) -> str:
        return self.train.base_model or str(self.tiny_base_path)

    def redacted(self) -> dict[str, Any]:
        """JSON-safe dump with every secret masked: what goes to W&B, manifests and artifacts."""
        return self.model_dump(mode="json")

    def fingerprint(self, *sections: str) -> str:
        """Stable hash of the named sections (or all), for run ids and cache keys."""
        dump = self.redacted()
        chosen = {name: dump[name] for name in sections} if sections else dump
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()


@contextmanager
def using_files(files: tuple[Path, ...]) -> Iterator[None]:
    token = _selected_files.set(files)
    try:
        yield
    finally:
        _selected_files.reset(token)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn CLI ``--set train.epochs=2`` pairs into a nested dict; values parse as JSON when they can."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects SECTION.FIELD=VALUE, got {pair!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = result
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {pair!r} conflicts with another --set for {part!r}")
        node[leaf] = value
    return result


def _is_secret_field(loc: list[Any]) -> bool:
    """Whether an error's location is a secret field, whose value an error message must not repeat."""
    model: Any = Settings
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return False
        model = field.annotation
    return is_secret(model)


def describe_validation_error(error: ValidationError) -> str:
    """One line per bad field, naming its dotted path, the value given and how to set it; a rule
    across fields is its own message (it names the fields). A single problem is a single line."""
    lines = []
    for item in error.errors():
        loc = [part for part in item["loc"] if part != "[key]"]  # pydantic appends "[key]" for a bad mapping key
        if not loc:  # a model validator: the rule's message already names the fields it relates
            lines.append(item["msg"].removeprefix("Value error, "))
            continue
        path = ".".join(str(part) for part in loc)
        env = ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p).upper() for p in loc if not isinstance(p, int))
        given = item.get("input")
        shown = "" if isinstance(given, dict) or _is_secret_field(loc) else f" (got {given!r})"
        lines.append(f"{path}: {item['msg']}{shown} [set it with --set {path}=…, {env}, or a settings file]")
    if len(lines) == 1:
        return f"invalid settings: {lines[0]}"
    return "invalid settings:\n  " + "\n  ".join(lines)
