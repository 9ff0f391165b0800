"""What every settings section shares: the section base class, name checks, shipped files, env naming."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

ENV_PREFIX = "FRAGUA_"
ENV_NESTED_DELIMITER = "__"
PROFILE_ENV = "FRAGUA_PROFILE"
SETTINGS_FILE_ENV = "FRAGUA_SETTINGS_FILE"

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def resource_path(*parts: str) -> Path:
    """Path of a file shipped inside the package (example data, corpus, profiles)."""
    return Path(str(resources.files("fragua"))).joinpath(*parts)


def shipped_profiles() -> dict[str, Path]:
    return {p.stem: p for p in sorted(resource_path("profiles").glob("*.toml"))}


def check_name(value: str, what: str) -> str:
    """Reject names that could escape a registry prefix or a work directory."""
    if not NAME_PATTERN.fullmatch(value) or ".." in value:
        raise ValueError(
            f"invalid {what} {value!r}: use letters, digits, '.', '_' and '-' only "
            "(no '/', '..', spaces or control characters), at most 100 characters"
        )
    return value


def is_secret(annotation: Any) -> bool:
    """Whether a field of this type holds a secret (``SecretStr`` or ``SecretStr | None``)."""
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
