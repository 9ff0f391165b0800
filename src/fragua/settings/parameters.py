"""The ``settings`` parameter of the flows: what a Prefect run may change, and how it merges.

A deployment run (the UI's Custom run, ``prefect deployment run --param``) gives *overrides*:
only what the user changed. They merge over the environment, the settings file, the profile and
the defaults exactly as the CLI's ``--set`` does (``Settings.load(**overrides)``). The parameter's
JSON schema, which the UI renders as the form, is ``SettingsOverrides``: a mirror of ``Settings``
whose fields are all optional and carry no default (the effective default is in the description),
so an untouched form sends nothing that could beat the worker's environment or the profile.

Secrets are not in the mirror: a run's parameters are stored in clear in the Prefect database and
shown in the UI, so Prefect refuses a secret there as an unexpected field at run creation, and a
flow called with one fails before it starts, with one line naming the block or variable to use.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from fragua.settings.base import ENV_NESTED_DELIMITER, ENV_PREFIX, is_secret
from fragua.settings.root import Settings, describe_validation_error

# Where each secret goes instead of a run parameter; a secret field not listed here gets the environment variable.
SECRET_HOMES = {
    "tracking.api_key": "a Secret block: `fragua blocks save-wandb-key`, then set tracking.api_key_block",
    "registry.secret_access_key": "a credentials block: `fragua blocks save-s3-credentials`, then set registry.credentials_block",
    "registry.session_token": "a credentials block: `fragua blocks save-s3-credentials`, then set registry.credentials_block",
}


def _section_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def secret_paths(model: type[BaseModel] = Settings, prefix: str = "") -> list[str]:
    """Dotted paths of every secret field of ``model`` (and the sections inside it)."""
    found = []
    for name, info in model.model_fields.items():
        if is_secret(info.annotation):
            found.append(prefix + name)
        elif section := _section_model(info.annotation):
            found.extend(secret_paths(section, f"{prefix}{name}."))
    return found


def secret_home(path: str) -> str:
    env = ENV_PREFIX + ENV_NESTED_DELIMITER.join(part.upper() for part in path.split("."))
    return SECRET_HOMES.get(path, f"the environment of the worker ({env}) or a settings file")


def _default_help(info: FieldInfo) -> str:
    """ " (default: 16)"; none for a default too long to read in a form (the shipped example sources), which the description explains."""
    shown = json.dumps(TypeAdapter(info.annotation).dump_python(info.get_default(call_default_factory=True), mode="json"))
    return f" (default: {shown})" if len(shown) <= 80 else ""


def _without_default(schema: dict[str, Any]) -> None:
    """Pydantic writes the ``None`` default into the schema, and the UI's form would send it."""
    schema.pop("default", None)


def _partial(model: type[BaseModel], prefix: str = "") -> type[BaseModel]:
    """``model`` with every field optional and default-less, its sections partial too, its secrets left out."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if is_secret(info.annotation):
            continue
        description = info.description or ""
        if section := _section_model(info.annotation):
            annotation: Any = _partial(section, f"{prefix}{name}.")
            secrets = [f"{prefix}{name}.{field}" for field, inner in section.model_fields.items() if is_secret(inner.annotation)]
            if secrets:
                description += " Not a run parameter (runs are stored in clear): " + "; ".join(f"{p} goes in {secret_home(p)}" for p in secrets) + "."
        else:
            annotation = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
            if info.default is not PydanticUndefined or info.default_factory is not None:
                description += _default_help(info)
        fields[name] = (annotation | None, Field(None, description=description.strip(), json_schema_extra=_without_default))
    name = "SettingsOverrides" if model is Settings else f"{model.__name__.removesuffix('Settings')}Overrides"
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=f"Overrides of {prefix.rstrip('.') or 'the settings'}: what is left out comes from the environment, the settings file, the profile and the defaults.", **fields)


SettingsOverrides = _partial(Settings)


def set_values(overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides a user actually set: nulls and empty sections mean "not set" (a form's cleared field)."""
    kept: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            value = set_values(value)
            if not value:
                continue
        if value is not None:
            kept[key] = value
    return kept


def refuse_secrets(overrides: dict[str, Any]) -> None:
    """A secret among run parameters is an error naming where it goes; its value is never repeated."""
    for path in secret_paths():
        node: Any = overrides
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            raise ValueError(f"{path} is a secret and never a run parameter (Prefect stores parameters in clear): put it in {secret_home(path)}")


def settings_from_overrides(overrides: dict[str, Any]) -> Settings:
    """Overrides merged over the environment, settings file, profile and defaults, as the CLI's --set; one clear error if invalid."""
    given = set_values(overrides)
    refuse_secrets(given)
    try:
        return Settings.load(**given)
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc)) from None


def _settings_parameter(value: Any) -> Settings:
    if isinstance(value, Settings):  # a parent flow or the CLI passes settings already resolved
        return value
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_unset=True)
    if not isinstance(value, dict):
        raise ValueError(f"settings: expected a mapping of sections (data, train, ...), got a {type(value).__name__}")
    return settings_from_overrides(value)


# The flows' ``settings`` parameter: validated into a full Settings, shown (and checked by Prefect) as SettingsOverrides.
SettingsParameter = Annotated[Settings, PlainValidator(_settings_parameter, json_schema_input_type=SettingsOverrides)]
