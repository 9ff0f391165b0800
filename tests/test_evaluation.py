from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from fragua.data.ingest import collect
from fragua.data.records import Message
from fragua.models.loading import load_for_inference
from fragua.models.templates import IGNORE_INDEX, generation_prompt
from fragua.settings import DataSettings, TrainSettings, ValidateSettings
from fragua.validate.scoring import EvalItem, ItemResult, aggregate, evaluate, labelled_nll, option_logprobs, score_items, spread_samples, summarize

from .conftest import EXAMPLES

NEXT_TOKEN = [  # P(next | current), rows sum to 1
    [0.1, 0.2, 0.3, 0.4],
    [0.25, 0.25, 0.25, 0.25],
    [0.5, 0.125, 0.125, 0.25],
    [0.7, 0.1, 0.1, 0.1],
]


class BigramLM(torch.nn.Module):
    """A model whose next-token distribution depends on the current token only: every
    log-likelihood it gives can be computed by hand from NEXT_TOKEN."""

    def __init__(self) -> None:
        super().__init__()
        self.log_probs = torch.nn.Parameter(torch.log(torch.tensor(NEXT_TOKEN)), requires_grad=False)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.log_probs[input_ids])


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_labelled_nll_by_hand_in_any_batch_size(batch_size):
    sequences = [
        ([0, 1, 2], [IGNORE_INDEX, 1, 2]),  # -log P(1|0) - log P(2|1)
        ([3, 0, 3], [IGNORE_INDEX, IGNORE_INDEX, 3]),  # -log P(3|0)
        ([2], [IGNORE_INDEX]),  # nothing scored
        ([1, 2, 0, 0, 1], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 0, 1]),  # -log P(0|0) - log P(1|0)
    ]
    result = labelled_nll(BigramLM(), sequences, pad_id=0, batch_size=batch_size)
    expected = [(-math.log(0.2) - math.log(0.25), 2), (-math.log(0.4), 1), (0.0, 0), (-math.log(0.1) - math.log(0.2), 2)]
    for (nll, count), (want_nll, want_count) in zip(result, expected):
        assert count == want_count
        assert nll == pytest.approx(want_nll, rel=1e-6)


@pytest.fixture(scope="module")
def tiny_model(tiny_base):
    return load_for_inference(str(tiny_base), TrainSettings())


def mcq(question: str, choices: list[str], correct: int | None, domain: str = "hotel") -> EvalItem:
    from fragua.data.records import format_choices

    return EvalItem(id=question, domain=domain, prompt=(Message(role="user", content=format_choices(question, choices)),), choices=tuple(choices), correct=correct)


def test_option_logprobs_match_a_direct_forward_pass_whatever_the_batching(tiny_model):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    items = [
        mcq("What time is check-in?", ["3:00 pm", "noon", "a quarter past four in the afternoon"], 0),
        mcq("Which floor is the pool on?", ["ground", "eighth"], 1),
    ]
    batched = option_logprobs(model, tokenizer, items, max_length=256, batch_size=3)
    one_by_one = option_logprobs(model, tokenizer, items, max_length=256, batch_size=1)
    for item, scores, single in zip(items, batched, one_by_one):
        # lm-eval's split: the prompt's closing newline is scored with the option, and the whole
        # text is tokenised at once.
        prompt = generation_prompt(tokenizer, item.prompt)
        assert prompt.endswith("\n")
        context = tokenizer(prompt[:-1])["input_ids"]
        for answer, score, alone in zip(item.option_answers(), scores, single):
            whole = tokenizer(prompt + answer)["input_ids"]
            assert whole[: len(context)] == context
            option = whole[len(context):]
            ids = torch.tensor([whole])
            with torch.no_grad():
                log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            direct = sum(float(log_probs[len(context) - 1 + k, token]) for k, token in enumerate(option))
            assert score == pytest.approx(direct, abs=1e-3)
            assert alone == pytest.approx(score, abs=1e-3)


def test_multiple_choice_items_pick_the_most_likely_option(tiny_model):
    items = [mcq("What does LoRA train?", ["All model weights", "Small low-rank matrices"], 1, "ml"), mcq("Pool floor?", ["ground", "eighth"], None)]
    results = score_items(tiny_model.model, tiny_model.tokenizer, items, ValidateSettings(), max_length=256)
    for item, result in zip(items, results):
        best = max(range(2), key=lambda i: result.option_logprobs[i])
        assert result.chosen == "AB"[best]
        assert result.prediction == item.option_answers()[best]
        assert result.exact_match is None and result.token_f1 is None  # not a free-form answer
    assert results[0].mc_correct == float(results[0].chosen == "B")
    assert results[1].mc_correct is None  # no answer given: chosen, not scored


def test_aggregate_by_hand():
    results = [
        ItemResult(id="1", domain="hotel", question="q", reference="a b c d", prediction="a b c d", answer_nll=6.0, answer_tokens=3,
                   exact_match=1.0, token_f1=1.0, rouge_l=1.0, bleu=1.0),
        ItemResult(id="2", domain="hotel", question="q", reference="e f g h", prediction="w x y z", answer_nll=2.0, answer_tokens=1,
                   exact_match=0.0, token_f1=0.5, rouge_l=0.25, bleu=0.0, numeric_match=0.0),
        ItemResult(id="3", domain="ml", question="q", reference="A. x", prediction="A. x", chosen="A", chosen_norm="B",
                   answer_nll=4.0, answer_tokens=4, mc_correct=1.0, mc_correct_norm=0.0),
        ItemResult(id="4", domain="ml", question="q", reference="B. y", prediction="A. x", chosen="A", chosen_norm="B",
                   answer_nll=3.0, answer_tokens=2, mc_correct=0.0, mc_correct_norm=1.0),
    ]
    overall, per_domain = summarize(results)
    assert overall.loss == pytest.approx(15 / 10)  # token-weighted: (6+2+4+3) / (3+1+4+2)
    assert overall.perplexity == pytest.approx(math.exp(1.5))
    assert (overall.exact_match, overall.token_f1, overall.rouge_l) == pytest.approx((0.5, 0.75, 0.625))
    assert overall.bleu == pytest.approx(0.5)  # corpus BLEU of the two free-form pairs (see test_metrics)
    assert overall.numeric_accuracy == 0.0 and overall.n_numeric == 1
    assert (overall.mc_accuracy, overall.mc_accuracy_norm, overall.n_choice) == (0.5, 0.5, 2)
    assert (overall.n, overall.n_generated) == (4, 2)
    hotel, ml = per_domain["hotel"], per_domain["ml"]
    assert hotel.loss == pytest.approx(8 / 4) and hotel.mc_accuracy is None and hotel.measured() == [
        "token_f1", "exact_match", "rouge_l", "bleu", "numeric_accuracy"]
    assert ml.loss == pytest.approx(7 / 6) and ml.token_f1 is None and ml.measured() == ["mc_accuracy", "mc_accuracy_norm"]
    assert aggregate([]).loss is None


def test_evaluate_scores_every_domain_and_kind_of_record(tiny_model):
    collected = collect(DataSettings(sources=[{"path": str(EXAMPLES / "batch2")}])).records
    choice_records = [r for r in collected if r.choices][:6]
    records = [r for r in collected if not r.choices][:24] + choice_records
    assert choice_records, "batch2 has multiple-choice rows"
    evaluation = evaluate(tiny_model.model, tiny_model.tokenizer, records, ValidateSettings(batch_size=8, max_new_tokens=8), max_length=256, name="base")
    overall = evaluation.overall
    assert overall.n == len(records) and overall.n_choice == len(choice_records) and overall.n_generated == len(records) - len(choice_records)
    assert sum(m.n for m in evaluation.per_domain.values()) == len(records)
    assert overall.loss > 0 and overall.perplexity == pytest.approx(math.exp(overall.loss))
    assert 0.0 <= overall.token_f1 <= 1.0 and 0.0 <= overall.mc_accuracy <= 1.0
    assert {s.chosen is not None for s in evaluation.samples} == {True, False}  # both kinds shown


def test_spread_samples_takes_turns_between_domains_and_kinds():
    def result(ident, domain, choice=False):
        return ItemResult(id=ident, domain=domain, question="q", reference="r", prediction="p", chosen="A" if choice else None)

    results = [result("h1", "hotel"), result("h2", "hotel"), result("h3", "hotel"), result("m1", "ml"), result("c1", "ml", choice=True)]
    assert [r.id for r in spread_samples(results, 4)] == ["h1", "m1", "c1", "h2"]
