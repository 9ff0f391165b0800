"""Evaluate a model on validation records: answer-token perplexity and generated-answer scores."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable, Iterator, Sequence

from pydantic import BaseModel, Field

from .chat import IGNORE_INDEX, encode_conversation, generation_prompt, stop_token_ids
from .metrics import exact_match, token_f1
from .records import Record
from .settings import ValidateSettings

HIGHER_IS_BETTER = {"exact_match": True, "token_f1": True, "loss": False, "perplexity": False}


class MetricSet(BaseModel):
    n: int = Field(description="Examples scored.")
    loss: float = Field(description="Mean negative log-likelihood per answer token.")
    perplexity: float
    exact_match: float
    token_f1: float

    def value(self, metric: str) -> float:
        return float(getattr(self, metric))


class Sample(BaseModel):
    id: str
    domain: str
    question: str
    reference: str
    prediction: str
    exact_match: float
    token_f1: float


class Evaluation(BaseModel):
    model: str
    overall: MetricSet
    per_domain: dict[str, MetricSet]
    samples: list[Sample]


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def answer_losses(model: Any, tokenizer: Any, records: Sequence[Record], max_length: int, batch_size: int) -> list[tuple[float, int]]:
    """(summed NLL, answer tokens) per record, with the same masking as training."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    encoded = [encode_conversation(tokenizer, r.messages, max_length) for r in records]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    results: dict[int, tuple[float, int]] = {}
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        for chunk in _batches(order, batch_size):
            width = max(len(encoded[i].input_ids) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                n = len(encoded[i].input_ids)
                ids[row, :n] = torch.tensor(encoded[i].input_ids)
                labels[row, :n] = torch.tensor(encoded[i].labels)
                mask[row, :n] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            shifted_logits = logits[:, :-1].reshape(-1, logits.size(-1))
            shifted_labels = labels[:, 1:].to(device).reshape(-1)
            nll = F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction="none")
            nll = nll.view(len(chunk), width - 1)
            counted = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
            for row, i in enumerate(chunk):
                results[i] = (float(nll[row].sum()), int(counted[row]))
    return [results[i] for i in range(len(records))]


def generate_answers(model: Any, tokenizer: Any, records: Sequence[Record], max_new_tokens: int, batch_size: int, max_length: int) -> list[str]:
    """Greedy answers to each record's prompt (left-padded batches)."""
    import torch

    device = next(model.parameters()).device
    prompts = [generation_prompt(tokenizer, r.prompt_messages) for r in records]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: dict[int, str] = {}
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with torch.no_grad():
            for chunk in _batches(order, batch_size):
                batch = tokenizer(
                    [prompts[i] for i in chunk],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                    truncation=True,
                    max_length=max_length - max_new_tokens,
                ).to(device)
                output = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=stop_token_ids(tokenizer),
                    pad_token_id=tokenizer.pad_token_id,
                )
                new_tokens = output[:, batch["input_ids"].shape[1] :]
                for i, text in zip(chunk, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                    answers[i] = text.strip()
    finally:
        tokenizer.padding_side = previous_side
    return [answers[i] for i in range(len(records))]


def _metric_set(losses: Iterable[tuple[float, int]], em: list[float], f1: list[float]) -> MetricSet:
    total_nll, total_tokens = 0.0, 0
    for nll, tokens in losses:
        total_nll += nll
        total_tokens += tokens
    loss = total_nll / total_tokens if total_tokens else math.nan
    return MetricSet(
        n=len(em),
        loss=loss,
        perplexity=math.exp(min(loss, 50.0)),
        exact_match=sum(em) / len(em) if em else 0.0,
        token_f1=sum(f1) / len(f1) if f1 else 0.0,
    )


def evaluate(model: Any, tokenizer: Any, records: Sequence[Record], settings: ValidateSettings, *, max_length: int, name: str, samples: int = 12) -> Evaluation:
    if settings.max_examples:
        records = list(records)[: settings.max_examples]
    if not records:
        raise ValueError("nothing to evaluate: the validation split is empty")
    losses = answer_losses(model, tokenizer, records, max_length, settings.batch_size)
    predictions = generate_answers(model, tokenizer, records, settings.max_new_tokens, settings.batch_size, max_length)
    em = [exact_match(p, r.reference) for p, r in zip(predictions, records)]
    f1 = [token_f1(p, r.reference) for p, r in zip(predictions, records)]
    by_domain: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_domain[record.domain].append(index)
    per_domain = {
        domain: _metric_set([losses[i] for i in idx], [em[i] for i in idx], [f1[i] for i in idx])
        for domain, idx in sorted(by_domain.items())
    }
    shown = [
        Sample(
            id=r.id,
            domain=r.domain,
            question=r.prompt_messages[-1].content,
            reference=r.reference,
            prediction=p,
            exact_match=e,
            token_f1=f,
        )
        for r, p, e, f in list(zip(records, predictions, em, f1))[:samples]
    ]
    return Evaluation(model=name, overall=_metric_set(losses, em, f1), per_domain=per_domain, samples=shown)
