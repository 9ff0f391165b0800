"""Choosing and loading the model a person wants to talk to or test: a registry version, the
version an alias points to, or a local folder (adapter or merged model, detected)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from fragua.models.identity import locate_base
from fragua.models.loading import LoadedModel, load_for_inference
from fragua.registry import open_registry
from fragua.registry.versions import PRODUCTION, RegistryError
from fragua.settings import Settings


class ModelChoice(BaseModel):
    label: str = Field(description="What to call the model in output: the version, or the folder.")
    folder: str = Field(description="Local folder holding the weights (a verified registry copy for versions).")
    version: str | None = Field(None, description="Registry version, when the model came from the registry.")
    alias: str | None = Field(None, description="The alias it was chosen by, if any.")
    base_model: str | None = Field(None, description="Base model of an adapter, from the version's lineage.")


def resolve_model(settings: Settings, *, version: str | None = None, alias: str | None = None, path: str | Path | None = None) -> ModelChoice:
    """Exactly one of version, alias and path; none given means the production alias."""
    given = [name for name, value in (("--version", version), ("--alias", alias), ("--path", path)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"choose the model with one of --version, --alias or --path, not {' and '.join(given)}")
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such model folder (--path); give a folder saved with save_pretrained")
        return ModelChoice(label=str(folder), folder=str(folder.resolve()))
    registry = open_registry(settings)
    if version is None:
        alias = alias or PRODUCTION
        state, _ = registry.alias(alias)
        if state is None:
            raise RegistryError(
                f"alias {alias!r} points to no version in {registry.describe()}; deploy one (`fragua run`) "
                "or choose a model with --version or --path"
            )
        version = state.version
    manifest = registry.manifest(version)
    folder = registry.fetch(version)
    return ModelChoice(
        label=version if alias is None else f"{version} ({alias})",
        folder=str(folder),
        version=version,
        alias=alias,
        base_model=locate_base(manifest.lineage, settings.base_model_ref),
    )


def load_model(settings: Settings, choice: ModelChoice) -> LoadedModel:
    """The model on the best device (GPU when present) with the tokenizer and chat template saved with it."""
    return load_for_inference(choice.folder, settings.train, base_model=choice.base_model)
