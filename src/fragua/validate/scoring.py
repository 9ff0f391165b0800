"""Evaluate a model on question/answer items: answer-token loss, generated-answer scores and
multiple-choice accuracy by option log-likelihood, per item, per domain and overall.

Every forward pass and every generation runs in batches on the model's device (the GPU when
there is one). Free-form items are answered greedily and scored with exact match, token F1,
ROUGE-L, BLEU and (for numeric references) numeric equivalence; multiple-choice items are
scored the way lm-evaluation-harness scores them (acc and acc_norm), by the log-likelihood of
each option's answer text after the prompt, summed and per character of the option, with the
prompt and option tokens split as lm-eval splits them (``encode_pair``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, get_args

from pydantic import BaseModel, ConfigDict, Field

from fragua.data.records import CHOICE_LETTERS, Message, Record, answer_index, multiple_choice_messages
from fragua.inference.generation import batches, generate_answers
from fragua.models.templates import IGNORE_INDEX, encode_conversation, generation_prompt
from fragua.settings import ScoreMetric, ValidateSettings
from fragua.validate.judge import VERDICT_SCORES
from fragua.validate.metrics import choose_option, corpus_bleu, numeric_match, rouge_l, sentence_bleu
from fragua.validate.references import best_scores, gold_answers

SCORE_METRICS: tuple[str, ...] = get_args(ScoreMetric)
HIGHER_IS_BETTER = {**{metric: True for metric in SCORE_METRICS}, "loss": False, "perplexity": False}
# What a score needs in the evaluation set, for the message when it was not measured.
MEASURED_ON = {
    "exact_match": "free-form items with a reference answer",
    "token_f1": "free-form items with a reference answer",
    "rouge_l": "free-form items with a reference answer",
    "bleu": "free-form items with a reference answer",
    "numeric_accuracy": "free-form items whose reference is a number",
    "mc_accuracy": "multiple-choice items with an answer",
    "mc_accuracy_norm": "multiple-choice items with an answer",
    "judge_score": "free-form items with a reference answer, judged by validate.judge",
}
# NaN and infinity survive a JSON round trip (a diverged model has an infinite loss).
_JSON_FLOATS = ConfigDict(ser_json_inf_nan="constants")


class MetricSet(BaseModel):
    """Scores of one group of items; a score is None when no item of the group can have it."""

    model_config = _JSON_FLOATS

    n: int = Field(description="Items scored.")
    loss: float | None = Field(None, description="Mean negative log-likelihood per reference-answer token.")
    perplexity: float | None = Field(None, description="exp(loss).")
    exact_match: float | None = Field(None, description="Share of generated answers equal to a reference after SQuAD normalisation (the best over all references).")
    token_f1: float | None = Field(None, description="Mean token-overlap F1 of generated answers, the best over all references (SQuAD normalisation).")
    rouge_l: float | None = Field(None, description="Mean ROUGE-L F-measure of generated answers.")
    bleu: float | None = Field(None, description="Corpus BLEU of generated answers (sacrebleu), 0-1.")
    numeric_accuracy: float | None = Field(None, description="Share of numeric references whose number the answer ends with.")
    mc_accuracy: float | None = Field(None, description="Share of multiple-choice items whose most likely option (summed log-likelihood) is right.")
    mc_accuracy_norm: float | None = Field(None, description="Same, with the log-likelihood divided by the option's length in characters.")
    judge_score: float | None = Field(None, description="Mean judge verdict of generated answers: correct 1, partially correct 0.5, incorrect 0.")
    n_generated: int = Field(0, description="Free-form items with a reference (exact match, F1, ROUGE-L, BLEU).")
    n_numeric: int = Field(0, description="Free-form items whose reference is a number (numeric accuracy).")
    n_choice: int = Field(0, description="Multiple-choice items with an answer (mc accuracy).")
    n_judged: int = Field(0, description="Generated answers the judge read (judge_score).")
    verdicts: dict[str, int] = Field(default_factory=dict, description="Judged answers per verdict (correct, partially correct, incorrect).")

    def value(self, metric: str) -> float | None:
        value = getattr(self, metric)
        return None if value is None else float(value)

    def measured(self) -> list[str]:
        """The scores this group has, in the order of SCORE_METRICS."""
        return [metric for metric in SCORE_METRICS if getattr(self, metric) is not None]


class ItemResult(BaseModel):
    """One item's answer and scores (None: the score does not apply to this item)."""

    model_config = _JSON_FLOATS

    id: str
    domain: str
    question: str
    reference: str | None
    prediction: str = Field(description="The generated answer, or the chosen option's answer for multiple choice.")
    chosen: str | None = Field(None, description="Letter of the most likely option (summed log-likelihood).")
    chosen_norm: str | None = Field(None, description="Letter of the most likely option per character.")
    option_logprobs: list[float] | None = Field(None, description="Log-likelihood of each option's answer text after the prompt.")
    answer_nll: float | None = Field(None, description="Summed negative log-likelihood of the reference answer tokens.")
    answer_tokens: int = 0
    exact_match: float | None = None
    token_f1: float | None = None
    rouge_l: float | None = None
    bleu: float | None = Field(None, description="Sentence BLEU (the aggregate is corpus BLEU).")
    numeric_match: float | None = None
    mc_correct: float | None = None
    mc_correct_norm: float | None = None
    judge_verdict: str | None = Field(None, description="The judge's verdict: correct, partially correct or incorrect.")
    judge_missing: list[str] | None = Field(None, description="Facts of the reference the judge found missing from the answer.")
    judge_score: float | None = Field(None, description="The verdict as a score: correct 1, partially correct 0.5, incorrect 0.")


class Evaluation(BaseModel):
    model: str
    overall: MetricSet
    per_domain: dict[str, MetricSet]
    samples: list[ItemResult]


@dataclass(frozen=True)
class EvalItem:
    """What evaluation needs of a question, whether it came from a dataset or a question file."""

    id: str
    domain: str
    prompt: tuple[Message, ...]
    reference: str | None = None
    # Every correct answer (SQuAD: all of meta.answers; () for an unanswerable question); None: the reference alone.
    references: tuple[str, ...] | None = None
    conversation: tuple[Message, ...] | None = None  # prompt + reference (all assistant turns score the loss)
    choices: tuple[str, ...] | None = None
    correct: int | None = None  # index of the right option

    @classmethod
    def from_record(cls, record: Record) -> EvalItem:
        correct = answer_index(record.answer, len(record.choices)) if record.choices and record.answer is not None else None
        return cls(
            id=record.id,
            domain=record.domain,
            prompt=tuple(record.prompt_messages),
            reference=record.reference,
            references=gold_answers(record.reference, record.meta),
            conversation=tuple(record.messages),
            choices=tuple(record.choices) if record.choices else None,
            correct=correct,
        )

    @property
    def question(self) -> str:
        return self.prompt[-1].content

    def option_answers(self) -> list[str]:
        """The assistant answer that picks each option, in the form the training data uses."""
        if not self.choices:
            raise ValueError(f"item {self.id} is not a multiple-choice question")
        return [multiple_choice_messages("", list(self.choices), i)[-1].content for i in range(len(self.choices))]


def labelled_nll(model: Any, sequences: Sequence[tuple[list[int], list[int]]], *, pad_id: int, batch_size: int) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, counted tokens) of the labelled tokens of each
    (input_ids, labels) pair; labels are -100 where a token is context, not scored.

    Sequences are sorted by length so that batches carry little padding; only the scored
    positions' logits are turned into log-probabilities.
    """
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    results: dict[int, tuple[float, int]] = {}
    with torch.no_grad():
        for chunk in batches(order, batch_size):
            width = max(len(sequences[i][0]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                n = len(sequences[i][0])
                ids[row, :n] = torch.tensor(sequences[i][0])
                labels[row, :n] = torch.tensor(sequences[i][1])
                mask[row, :n] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            targets = labels[:, 1:].to(device)
            scored = targets != IGNORE_INDEX
            nll = torch.zeros(targets.shape, dtype=torch.float32, device=device)
            if scored.any():
                nll[scored] = F.cross_entropy(logits[:, :-1][scored].float(), targets[scored], reduction="none")
            sums, counts = nll.sum(dim=1).tolist(), scored.sum(dim=1).tolist()
            for row, i in enumerate(chunk):
                results[i] = (float(sums[row]), int(counts[row]))
    return [results[i] for i in range(len(sequences))]


def answer_losses(model: Any, tokenizer: Any, conversations: Sequence[Sequence[Message]], max_length: int, batch_size: int) -> list[tuple[float, int]]:
    """(summed NLL, answer tokens) per conversation, with the same masking as training."""
    encoded = [encode_conversation(tokenizer, messages, max_length) for messages in conversations]
    return labelled_nll(model, [(e.input_ids, e.labels) for e in encoded], pad_id=tokenizer.pad_token_id, batch_size=batch_size)


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of a context and of its continuation, split the way lm-evaluation-harness's
    HFLM splits them, so that Fragua and lm-eval score the same tokens: whitespace that ends the
    context moves to the start of the continuation, the whole text is encoded at once and cut
    after the context's tokens, and the tokenizer adds its special tokens (BOS) unless the text
    already starts with one (a chat template that writes its own BOS)."""
    if not context:
        raise ValueError("encode_pair needs a non-empty context")
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped):] + continuation
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    special = prefix is None or not context.startswith(tokenizer.decode(prefix))
    whole = tokenizer(context + continuation, add_special_tokens=special)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=special)["input_ids"]
    return context_ids, whole[len(context_ids):]


def continuation_logprobs(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int, batch_size: int) -> list[float]:
    """Log-likelihood of each continuation after its context (tokens as ``encode_pair`` splits
    them); a pair that does not fit in ``max_length`` tokens loses the beginning of its context,
    never the continuation."""
    sequences = []
    for context, continuation in pairs:
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        continuation_ids = continuation_ids[: max_length - 1]
        kept = context_ids[max(0, len(context_ids) + len(continuation_ids) - max_length):]
        sequences.append((kept + continuation_ids, [IGNORE_INDEX] * len(kept) + continuation_ids))
    return [-nll for nll, _ in labelled_nll(model, sequences, pad_id=tokenizer.pad_token_id, batch_size=batch_size)]


def option_logprobs(model: Any, tokenizer: Any, items: Sequence[EvalItem], max_length: int, batch_size: int) -> list[list[float]]:
    """Log-likelihood of each option's answer text after the item's generation prompt: the
    continuations lm-eval scores for a multiple-choice task run with its chat template
    (``apply_chat_template``, no target delimiter), encoded as lm-eval encodes them."""
    pairs, owners = [], []
    for index, item in enumerate(items):
        context = generation_prompt(tokenizer, item.prompt)
        for answer in item.option_answers():
            pairs.append((context, answer))
            owners.append(index)
    result: list[list[float]] = [[] for _ in items]
    for owner, logprob in zip(owners, continuation_logprobs(model, tokenizer, pairs, max_length, batch_size)):
        result[owner].append(logprob)
    return result


def score_items(model: Any, tokenizer: Any, items: Sequence[EvalItem], settings: ValidateSettings, *, max_length: int) -> list[ItemResult]:
    """Answer and score every item: loss where there is a reference, option log-likelihoods for
    multiple choice, a greedy answer and its scores for everything else."""
    with_reference = [i for i, item in enumerate(items) if item.conversation is not None]
    losses = dict(zip(with_reference, answer_losses(model, tokenizer, [items[i].conversation for i in with_reference], max_length, settings.batch_size)))
    choice = [i for i, item in enumerate(items) if item.choices]
    logprobs = dict(zip(choice, option_logprobs(model, tokenizer, [items[i] for i in choice], max_length, settings.batch_size)))
    free = [i for i, item in enumerate(items) if not item.choices]
    generated = dict(zip(free, generate_answers(model, tokenizer, [items[i].prompt for i in free], settings.max_new_tokens, settings.batch_size, max_length)))

    results = []
    for index, item in enumerate(items):
        nll, tokens = losses.get(index, (None, 0))
        result = ItemResult(
            id=item.id, domain=item.domain, question=item.question, reference=item.reference,
            prediction="", answer_nll=nll, answer_tokens=tokens,
        )
        if item.choices:
            answers = item.option_answers()
            summed, normalised = choose_option(logprobs[index], [len(a) for a in answers])
            result.prediction = answers[summed]
            result.chosen, result.chosen_norm = CHOICE_LETTERS[summed], CHOICE_LETTERS[normalised]
            result.option_logprobs = logprobs[index]
            if item.correct is not None:
                result.mc_correct = float(summed == item.correct)
                result.mc_correct_norm = float(normalised == item.correct)
        else:
            prediction = generated[index]
            result.prediction = prediction
            if item.reference is not None:
                result.exact_match, result.token_f1 = best_scores(prediction, item.reference, item.references, normalization=settings.squad_normalization)
                result.rouge_l = rouge_l(prediction, item.reference)
                result.bleu = sentence_bleu(prediction, item.reference, tokenize=settings.bleu_tokenize)
                result.numeric_match = numeric_match(
                    prediction, item.reference,
                    percent_as_fraction=settings.numeric_percent_as_fraction, tolerance=settings.numeric_tolerance,
                )
        results.append(result)
    return results


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def aggregate(results: Sequence[ItemResult], *, bleu_tokenize: str = "13a") -> MetricSet:
    """Scores of a group of items: token-weighted loss, means of per-item scores, corpus BLEU."""
    total_nll = sum(r.answer_nll for r in results if r.answer_nll is not None)
    total_tokens = sum(r.answer_tokens for r in results)
    loss = total_nll / total_tokens if total_tokens else None
    generated = [r for r in results if r.exact_match is not None]
    choices = [r for r in results if r.mc_correct is not None]
    numeric = [r for r in results if r.numeric_match is not None]
    judged = [r for r in results if r.judge_score is not None]
    return MetricSet(
        n=len(results),
        loss=loss,
        perplexity=None if loss is None else math.exp(min(loss, 50.0)),
        exact_match=_mean(r.exact_match for r in generated),
        token_f1=_mean(r.token_f1 for r in generated),
        rouge_l=_mean(r.rouge_l for r in generated),
        bleu=corpus_bleu([r.prediction for r in generated], [r.reference or "" for r in generated], tokenize=bleu_tokenize) if generated else None,
        numeric_accuracy=_mean(r.numeric_match for r in numeric),
        mc_accuracy=_mean(r.mc_correct for r in choices),
        mc_accuracy_norm=_mean(r.mc_correct_norm for r in choices),
        judge_score=_mean(r.judge_score for r in judged),
        n_generated=len(generated),
        n_numeric=len(numeric),
        n_choice=len(choices),
        n_judged=len(judged),
        verdicts={verdict: sum(1 for r in judged if r.judge_verdict == verdict) for verdict in VERDICT_SCORES} if judged else {},
    )


def summarize(results: Sequence[ItemResult], *, bleu_tokenize: str = "13a") -> tuple[MetricSet, dict[str, MetricSet]]:
    """Overall and per-domain scores."""
    by_domain: dict[str, list[ItemResult]] = defaultdict(list)
    for result in results:
        by_domain[result.domain].append(result)
    per_domain = {domain: aggregate(group, bleu_tokenize=bleu_tokenize) for domain, group in sorted(by_domain.items())}
    return aggregate(results, bleu_tokenize=bleu_tokenize), per_domain


def evaluate(model: Any, tokenizer: Any, records: Sequence[Record], settings: ValidateSettings, *, max_length: int, name: str) -> Evaluation:
    if settings.max_examples:
        records = list(records)[: settings.max_examples]
    if not records:
        raise ValueError("nothing to evaluate: the validation split is empty")
    results = score_items(model, tokenizer, [EvalItem.from_record(r) for r in records], settings, max_length=max_length)
    overall, per_domain = summarize(results, bleu_tokenize=settings.bleu_tokenize)
    return Evaluation(model=name, overall=overall, per_domain=per_domain, samples=spread_samples(results, settings.report_samples))


def spread_samples(results: Sequence[ItemResult], count: int) -> list[ItemResult]:
    """Up to ``count`` results taken in turn from each domain and kind (free-form, multiple
    choice), so that every one of them shows."""
    groups: dict[tuple[str, bool], list[ItemResult]] = defaultdict(list)
    for result in results:
        groups[(result.domain, result.chosen is not None)].append(result)
    queues = [iter(group) for _, group in sorted(groups.items())]
    chosen: list[ItemResult] = []
    while queues and len(chosen) < count:
        for queue in list(queues):
            result = next(queue, None)
            if result is None:
                queues.remove(queue)
            elif len(chosen) < count:
                chosen.append(result)
    return chosen
