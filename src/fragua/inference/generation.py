"""Batched generation on the model's device: greedy answers for evaluation, seeded sampling for the
model-based expansion strategies."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from fragua.data.records import Message
from fragua.models.loading import LoadedModel
from fragua.models.templates import generation_prompt, stop_token_ids
from fragua.settings import ExpandGenerationSettings

FALLBACK_MAX_LENGTH = 2048


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def generate_answers(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[Message]], max_new_tokens: int, batch_size: int, max_length: int,
    *, sampling: dict[str, Any] | None = None,
) -> list[str]:
    """Answers to each prompt (left-padded batches, sorted by length): greedy, or with the
    ``sampling`` arguments of ``generate`` (do_sample, temperature, top_k, top_p)."""
    import torch

    device = next(model.parameters()).device
    texts = [generation_prompt(tokenizer, messages) for messages in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: dict[int, str] = {}
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with torch.no_grad():
            for chunk in batches(order, batch_size):
                batch = tokenizer(
                    [texts[i] for i in chunk],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                    truncation=True,
                    max_length=max_length - max_new_tokens,
                ).to(device)
                output = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    **(sampling or {"do_sample": False}),
                    eos_token_id=stop_token_ids(tokenizer),
                    pad_token_id=tokenizer.pad_token_id,
                )
                new_tokens = output[:, batch["input_ids"].shape[1] :]
                for i, text in zip(chunk, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                    answers[i] = text.strip()
    finally:
        tokenizer.padding_side = previous_side
    return [answers[i] for i in range(len(texts))]


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
