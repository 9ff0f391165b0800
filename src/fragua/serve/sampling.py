"""Per-request sampling and text assembly for batched decoding.

Rows of one batch carry their own temperature, top_p and seed, so the next tokens of a whole
batch come from one vectorised softmax/top-p pass plus one draw per row from that row's own
generator (a seeded request gets the same draws whatever else shares its batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fragua.serve.engine import SamplingParams

REPLACEMENT = "\ufffd"  # what a partly decoded multi-byte character looks like


def next_tokens(logits: Any, params: Sequence[SamplingParams], generators: Sequence[Any]) -> list[int]:
    """One token per row of ``logits`` (rows x vocabulary): argmax for greedy rows, else a draw
    from the temperature-scaled distribution cut to its top_p nucleus."""
    import torch

    logits = logits.float()
    greedy = [p.greedy for p in params]
    chosen = logits.argmax(dim=-1).tolist()
    if all(greedy):
        return chosen
    temperature = torch.tensor([p.temperature or 1.0 for p in params], device=logits.device).unsqueeze(1)
    probs = torch.softmax(logits / temperature, dim=-1)
    top_p = torch.tensor([p.top_p for p in params], device=logits.device).unsqueeze(1)
    if bool((top_p < 1).any()):
        ordered, order = probs.sort(dim=-1, descending=True)
        outside = (ordered.cumsum(dim=-1) - ordered) >= top_p  # the most likely token always stays in
        ordered = ordered.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, ordered)
    for row, generator in enumerate(generators):
        if not greedy[row]:
            chosen[row] = int(torch.multinomial(probs[row], 1, generator=generator))
    return chosen


@dataclass
class AnswerText:
    """The answer of one request as tokens arrive: what may be streamed now, where a stop string
    ends it, and the text to return at the end."""

    tokenizer: Any
    stop: tuple[str, ...]
    strip_leading: bool  # chat answers start at their first non-blank character
    tokens: list[int] = field(default_factory=list)
    streamed: str = ""
    stopped: bool = False

    def text(self) -> str:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        return text.lstrip() if self.strip_leading else text

    def add(self, token: int) -> str:
        """Take one generated token; returns the text that can be streamed now ("" to wait)."""
        self.tokens.append(token)
        text = self.text()
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._stream_up_to(text[:cut])
        held = len(text.rstrip(REPLACEMENT)) if text.endswith(REPLACEMENT) else len(text)
        for stop in self.stop:  # a suffix that may grow into a stop string is held back
            for size in range(min(len(stop) - 1, held), 0, -1):
                if text[:held].endswith(stop[:size]):
                    held -= size
                    break
        return self._stream_up_to(text[:held])

    def final(self) -> tuple[str, str]:
        """The whole answer and what of it was not streamed yet."""
        text = self.text()
        if self.stopped:
            text = text[: min(i for i in (text.find(s) for s in self.stop) if i >= 0)]
        return text, self._stream_up_to(text)

    def _stream_up_to(self, text: str) -> str:
        if not text.startswith(self.streamed):
            return ""  # the tokenizer re-spelled earlier text; the rest comes when it settles
        piece = text[len(self.streamed) :]
        self.streamed = text
        return piece
