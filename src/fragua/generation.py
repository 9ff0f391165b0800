"""Text generation for the model-based expansion strategies: batched, seeded, on the best device."""

from __future__ import annotations

from typing import Any, Sequence

from .evaluation import generate_answers
from .modeling import LoadedModel
from .records import Message
from .settings import ExpandGenerationSettings

FALLBACK_MAX_LENGTH = 2048


class TextGenerator:
    """Calls of ``generate`` over chat prompts with expand.generation's sampling settings.
    Each call seeds torch first, so the same prompts and seed give the same texts on the
    same device."""

    def __init__(self, loaded: LoadedModel, settings: ExpandGenerationSettings) -> None:
        self.loaded = loaded
        self.settings = settings
        config = loaded.model.config
        self.max_length = int(getattr(config, "max_position_embeddings", None) or FALLBACK_MAX_LENGTH)
        if self.max_length <= settings.max_new_tokens:
            raise ValueError(
                f"expand.generation.max_new_tokens ({settings.max_new_tokens}) must be below the model's context "
                f"({self.max_length} tokens) so that prompts still fit"
            )

    def sampling(self) -> dict[str, Any]:
        if not self.settings.do_sample:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.settings.temperature, "top_k": self.settings.top_k, "top_p": self.settings.top_p}

    def __call__(self, prompts: Sequence[Sequence[Message]], seed: int) -> list[str]:
        import torch

        if not prompts:
            return []
        torch.manual_seed(seed)
        return generate_answers(
            self.loaded.model, self.loaded.tokenizer, prompts, self.settings.max_new_tokens, self.settings.batch_size,
            self.max_length, sampling=self.sampling(),
        )
