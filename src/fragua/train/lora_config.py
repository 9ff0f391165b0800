"""A recommended LoRA configuration for a model size and a task (`fragua lora-config`).

Rules of thumb from the LoRA/QLoRA papers and common fine-tuning practice, as a pure function:
adapters on every linear layer; rank grows with how much new knowledge the task carries
and shrinks as the model grows (big models need smaller updates); alpha = 2 x rank; the
learning rate falls with model size; from ~13B parameters the base is loaded in 4 bit so
it fits one GPU. The random-init tiny model is the exception: it learns from scratch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Task = Literal["qa", "chat", "classification", "domain"]

TASKS: dict[str, str] = {
    "qa": "question answering / new facts: the adapter must store knowledge, so a larger rank and more epochs",
    "chat": "tone, format and instruction following: small updates suffice",
    "classification": "multiple choice and labels: the smallest updates, few epochs",
    "domain": "domain adaptation on long texts: a large rank, a lower learning rate",
}
TINY_PARAMETERS = 50_000_000


class LoraRecommendation(BaseModel):
    parameters: int
    task: str
    method: Literal["lora", "qlora"]
    r: int = Field(ge=1)
    alpha: int = Field(ge=1)
    dropout: float
    target_modules: str
    learning_rate: float
    epochs: float
    reasons: list[str]

    def settings(self) -> dict[str, Any]:
        """The recommendation as a partial Settings ``train`` section."""
        return {
            "train": {
                "method": self.method,
                "learning_rate": self.learning_rate,
                "epochs": self.epochs,
                "lora": {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "target_modules": self.target_modules},
            }
        }

    def toml(self) -> str:
        lines = ["# " + reason for reason in self.reasons]
        lines += ["[train]", f'method = "{self.method}"', f"learning_rate = {self.learning_rate:g}", f"epochs = {self.epochs:g}", ""]
        lines += ["[train.lora]", f"r = {self.r}", f"alpha = {self.alpha}", f"dropout = {self.dropout:g}", f'target_modules = "{self.target_modules}"']
        return "\n".join(lines) + "\n"


def recommend_lora(parameters: int, task: str) -> LoraRecommendation:
    """Rank, alpha, dropout, targets, learning rate, epochs and method for a model of ``parameters``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if parameters <= 0:
        raise ValueError(f"the parameter count must be positive, got {parameters}")
    billions = parameters / 1e9
    reasons = [f"{_size(parameters)} parameters, task {task}: {TASKS[task]}"]
    if parameters < TINY_PARAMETERS:
        r, learning_rate, method = 64, 5e-3, "lora"
        reasons.append("a model this small (e.g. the random-init tiny model) learns from scratch: large rank, high learning rate")
    elif billions < 13:
        r, learning_rate, method = 16, 2e-4, "lora"
    elif billions < 40:
        r, learning_rate, method = 16, 1e-4, "qlora"
        reasons.append("13B+ parameters: the base is loaded in 4 bit (QLoRA) so it fits one GPU")
    else:
        r, learning_rate, method = 8, 1e-4, "qlora"
        reasons.append("40B+ parameters: small updates suffice and the base is loaded in 4 bit")
    epochs = {"qa": 4.0, "chat": 2.0, "classification": 2.0, "domain": 1.0}[task]
    if parameters < TINY_PARAMETERS:
        epochs *= 4
    if task in ("qa", "domain") and parameters >= TINY_PARAMETERS:
        r *= 2
        reasons.append("rank doubled: the adapter has to hold new knowledge, not just a style")
    if task == "domain":
        learning_rate /= 2
    if task == "classification" and parameters >= TINY_PARAMETERS:
        r = max(4, r // 2)
    return LoraRecommendation(
        parameters=parameters,
        task=task,
        method=method,
        r=r,
        alpha=2 * r,
        dropout=0.05 if billions < 13 else 0.1,
        target_modules="all-linear",
        learning_rate=learning_rate,
        epochs=epochs,
        reasons=reasons + ["alpha = 2 x rank; adapters on every linear layer (attention and MLP) train best per parameter"],
    )


def _size(parameters: int) -> str:
    if parameters >= 1e9:
        return f"{parameters / 1e9:.1f}B"
    return f"{parameters / 1e6:.1f}M"


def count_parameters(name_or_path: str, *, trust_remote_code: bool = False, gguf_file: str | None = None) -> int:
    """Parameters of a model from its config alone (built on the meta device: no weights are loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from fragua.models.loading import ModelLoadError, model_source, quiet_transformers

    quiet_transformers()
    source, extra = model_source(name_or_path, gguf_file)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **extra)
    except OSError as exc:
        raise ModelLoadError(f"cannot read the config of {name_or_path!r}: {exc}. Pass --parameters to give the size instead.") from exc
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return model.num_parameters()
