from __future__ import annotations

import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fragua.data import augment
from fragua.data.expand import expand_train
from fragua.data.expand_shards import Sharding
from fragua.data.formats.adapt import from_alpaca, from_chat, from_multiple_choice, from_sharegpt, from_squad
from fragua.data.ingest import collect
from fragua.data.records import CHOICE_LETTERS, Message, Record
from fragua.data.screening import screen
from fragua.data.textops import normalise
from fragua.settings import DataSettings, ExpandSettings

from .conftest import EXAMPLES

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
RULE_STRATEGIES = ["mcq_permutation", "reformulation", "answer_format", "squad_context", "squad_closed_book", "turn_split"]


def record(draft, rid: str, domain: str = "d", **meta) -> Record:
    return Record(id=rid, messages=draft.messages, choices=draft.choices, answer=draft.answer, domain=domain, source="s", meta={**draft.meta, **meta})


MCQ = record(from_multiple_choice({"question": "Which is a fruit?\n(one answer)", "choices": ["stone", "apple", "chair", "cloud"], "answer": "B"}), "m1")
QA = record(from_alpaca({"instruction": "Where is the gym?", "output": "On the second floor. It opens at 7:00 am."}), "q1")
QA_ES = record(from_alpaca({"instruction": "¿Dónde está el gimnasio?", "output": "En la segunda planta."}), "q2")
SQUAD = record(from_squad({"context": "The rooftop pool is on the eighth floor.", "question": "Where is the pool?",
                           "answers": {"text": ["on the eighth floor"], "answer_start": [20]}}), "s1")
UNANSWERABLE = record(from_squad({"context": "The rooftop pool is on the eighth floor.", "question": "How deep is the pool?",
                                  "answers": {"text": [], "answer_start": []}}), "s2")
CHAT = record(from_sharegpt({"conversations": [
    {"from": "system", "value": "You are the concierge."},
    {"from": "human", "value": "What is LoRA?"}, {"from": "gpt", "value": "Small low-rank adapters."},
    {"from": "human", "value": "And QLoRA?"}, {"from": "gpt", "value": "LoRA on a 4-bit base model."},
]}), "c1")


def correct_text(row: Record) -> str:
    return row.choices[CHOICE_LETTERS.index(row.answer)]


# Strategies, one by one --------------------------------------------------------------------


def test_every_permutation_keeps_the_right_answer_right():
    permuted = augment.permute_choices(MCQ, random.Random(0), 100)
    assert len(permuted) == 23  # all 4! - 1 reorderings
    assert len({tuple(r.choices) for r in permuted}) == 23
    for row in permuted:
        assert correct_text(row) == "apple"
        assert row.messages[0].content.startswith("Which is a fruit?\n(one answer)\nA. ")
        assert row.messages[1].content == f"{row.answer}. apple"
        assert row.origin == "mcq_permutation" and row.meta["parent_id"] == "m1" and row.group == "m1"


def test_permutations_of_a_whole_dataset_keep_every_answer_right():
    """HEAD-QA and multiple-choice files through ingest, expanded by permutation only: the
    option the answer letter points to is the parent's right option in every row."""
    data = DataSettings(sources=[{"path": str(FIXTURES / "head_qa_en.json")}, {"path": str(EXAMPLES / "batch2" / "mcq.jsonl")}], validation_fraction=0.1)
    train = [r for r in collect(data).records if r.split == "train"]
    expansion = expand_train(train, ExpandSettings(expansion_factor=6.0, strategies=["mcq_permutation"]), data)
    parents = {r.id: r for r in train}
    permuted = [r for r in expansion.records if r.origin == "mcq_permutation"]
    assert len(permuted) == 5 * len(train)
    for row in permuted:
        parent = parents[row.meta["parent_id"]]
        assert correct_text(row) == correct_text(parent)
        assert sorted(row.choices) == sorted(parent.choices) and row.choices != parent.choices
        assert row.reference == f"{row.answer}. {correct_text(parent)}"
        assert row.messages[-2].content.endswith("\n".join(f"{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(row.choices)))


def test_permutation_keeps_the_conversation_before_the_question():
    draft = from_chat({"messages": [{"role": "system", "content": "Pick one."}, {"role": "user", "content": "Q?\nA. x\nB. y"},
                                    {"role": "assistant", "content": "B. y"}]})
    parent = Record(id="p", messages=draft.messages, choices=["x", "y"], answer="B", source="s")
    (row,) = augment.permute_choices(parent, random.Random(0), 5)
    assert [m.content for m in row.messages] == ["Pick one.", "Q?\nA. y\nB. x", "A. y"]


def test_reformulation_uses_the_question_language_and_keeps_the_answer():
    english = augment.reformulate(QA, random.Random(1), 10)
    spanish = augment.reformulate(QA_ES, random.Random(1), 10)
    assert len(english) == len(augment.REFORMULATIONS["en"]) and len(spanish) == len(augment.REFORMULATIONS["es"])
    assert {r.messages[0].content for r in english} == {t.format(question="Where is the gym?") for t in augment.REFORMULATIONS["en"]}
    assert {r.messages[0].content for r in spanish} == {t.format(question="¿Dónde está el gimnasio?") for t in augment.REFORMULATIONS["es"]}
    assert all(r.reference == QA.reference and r.meta["lang"] == "en" for r in english)
    mcq = augment.reformulate(MCQ, random.Random(0), 1)[0]
    assert mcq.messages[0].content.endswith("A. stone\nB. apple\nC. chair\nD. cloud") and correct_text(mcq) == "apple"


def test_language_detection_and_the_rows_own_language():
    assert augment.detect_language("¿Qué es LoRA?") == "es"
    assert augment.detect_language("Cuál es la capital de Francia") == "es"
    assert augment.detect_language("What is the capital of France") == "en"
    assert augment.language(record(from_alpaca({"instruction": "Hola", "output": "Buenas."}), "x", lang="es")) == "es"


def test_answer_formats_letter_text_one_sentence_and_explanation():
    mcq = {r.meta["answer_format"]: r for r in augment.answer_formats(MCQ, random.Random(0), 10)}
    assert set(mcq) == {"letter", "text"}
    assert mcq["letter"].reference == "B" and mcq["letter"].messages[0].content.endswith("Answer with the letter of the correct option only.")
    assert mcq["text"].reference == "apple" and correct_text(mcq["text"]) == "apple"
    (short,) = augment.answer_formats(QA, random.Random(0), 10)
    assert short.reference == "On the second floor." and short.messages[0].content == "Where is the gym?\n\nAnswer in one sentence."
    explained = record(from_multiple_choice({"question": "¿Cuál es una fruta?", "choices": ["piedra", "manzana"], "answer": "B",
                                             "explanation": "La manzana crece en un árbol."}), "e1")
    formats = {r.meta["answer_format"]: r for r in augment.answer_formats(explained, random.Random(0), 10)}
    assert formats["explained"].reference == "B. manzana\n\nExplicación: La manzana crece en un árbol."
    assert formats["explained"].messages[0].content.endswith("Explica tu respuesta.")
    assert augment.answer_formats(QA_ES, random.Random(0), 10) == []  # one sentence, no explanation: nothing to vary


def test_squad_variants_with_context_and_closed_book():
    with_context = augment.squad_with_context(SQUAD, random.Random(0), 10)
    assert len(with_context) == 3 and all(r.reference == "on the eighth floor" for r in with_context)
    assert all("The rooftop pool is on the eighth floor." in r.messages[0].content and "Where is the pool?" in r.messages[0].content for r in with_context)
    assert SQUAD.messages[0].content not in {r.messages[0].content for r in with_context}
    (closed,) = augment.squad_closed_book(SQUAD, random.Random(0), 10)
    assert [m.content for m in closed.messages] == ["Where is the pool?", "on the eighth floor"]
    assert augment.squad_closed_book(UNANSWERABLE, random.Random(0), 10) == []
    assert len(augment.squad_with_context(UNANSWERABLE, random.Random(0), 10)) == 3
    assert augment.squad_with_context(QA, random.Random(0), 10) == [] == augment.squad_closed_book(QA, random.Random(0), 10)


def test_multi_turn_conversations_split_into_per_turn_examples():
    turns = augment.split_turns(CHAT, random.Random(0), 10)
    contents = sorted([m.content for m in r.messages] for r in turns)
    assert contents == [
        ["You are the concierge.", "And QLoRA?", "LoRA on a 4-bit base model."],
        ["You are the concierge.", "What is LoRA?", "Small low-rank adapters."],
    ]
    assert all(r.origin == "turn_split" and r.meta["parent_id"] == "c1" for r in turns)
    assert augment.split_turns(QA, random.Random(0), 10) == []


def test_model_output_parsing():
    row, question = augment.paraphrase_variant(QA, "Rewritten question: Where can I find the gym?\nextra")
    assert question == "Where can I find the gym?" and row.messages[0].content == question and row.reference == QA.reference
    with pytest.raises(augment.Rejected, match="word for word"):
        augment.paraphrase_variant(QA, "where is the GYM")
    with pytest.raises(augment.Rejected) as empty:
        augment.paraphrase_variant(QA, "  \n ")
    assert empty.value.kind == "empty"
    squad_row, _ = augment.paraphrase_variant(SQUAD, "On which floor is the pool?")
    assert squad_row.messages[0].content == "Context: The rooftop pool is on the eighth floor.\n\nQuestion: On which floor is the pool?"
    new, _ = augment.self_instruct_variant(CHAT, "Question: What is DoRA?\nAnswer: Weight-decomposed LoRA.")
    assert [m.content for m in new.messages] == ["You are the concierge.", "What is DoRA?", "Weight-decomposed LoRA."]
    assert new.origin == "self_instruct" and new.meta["parent_id"] == "c1" and new.choices is None
    with pytest.raises(augment.Rejected) as unparseable:
        augment.self_instruct_variant(CHAT, "no labels here")
    assert unparseable.value.kind == "unparseable"
    assert "Pregunta:" in augment.self_instruct_prompt(QA_ES)[0].content


def test_screening_is_ingests_quality_check():
    bad = Record(id="b", messages=[Message(role="user", content="Where is the pool?"), Message(role="assistant", content="n/a")], source="s")
    ids, errors = screen([QA, bad], DataSettings())
    assert errors.ok.tolist() == [True, False] and errors.kind(1) == "low_quality"
    assert ids[0] == QA.model_copy(update={"id": ids[0]}).id and len(ids[0]) == 16


# Expansion ----------------------------------------------------------------------------------


def test_expansion_reaches_the_factor_by_weight_and_reports_it():
    train = [MCQ, QA, QA_ES, SQUAD, CHAT]
    settings = ExpandSettings(expansion_factor=3.0, strategies=["mcq_permutation", "reformulation"], weights={"mcq_permutation": 3})
    expansion = expand_train(train, settings)
    report = expansion.report
    assert len(expansion.records) == 15 and expansion.records[:5] == train
    assert report["achieved_factor"] == 3.0 and report["train_after"] == 15
    added = {name: tally["added"] for name, tally in report["strategies"].items()}
    assert sum(added.values()) == 10 and added["mcq_permutation"] > added["reformulation"]
    assert report["per_domain"]["d"] == {"before": 5, "after": 15, "factor": 3.0, "added": added}
    assert {e["parent"] for e in report["examples"]["mcq_permutation"]} == {MCQ.messages[0].content}
    for row in expansion.records[5:]:
        assert row.meta["parent_id"] in {r.id for r in train} and row.origin in added and row.split == "train"


def test_each_domain_is_expanded_toward_the_factor():
    rows = [record(from_alpaca({"instruction": f"Question number {i} about topic {d}?", "output": f"Answer {i} for {d}."}), f"{d}{i}", domain=d)
            for d, n in (("big", 40), ("small", 4)) for i in range(n)]
    report = expand_train(rows, ExpandSettings(expansion_factor=2.0)).report
    assert report["per_domain"]["big"]["factor"] == 2.0 and report["per_domain"]["small"]["factor"] == 2.0


def test_a_strategy_without_rows_leaves_its_share_to_the_others():
    expansion = expand_train([QA], ExpandSettings(expansion_factor=4.0, strategies=["mcq_permutation", "reformulation"]))
    assert expansion.report["strategies"]["reformulation"]["added"] == 3 and expansion.report["achieved_factor"] == 4.0
    assert "mcq_permutation: no train row it applies to" in expansion.report["notes"]


def test_running_out_of_variants_is_reported():
    expansion = expand_train([QA_ES], ExpandSettings(expansion_factor=20.0, strategies=["reformulation"]))
    assert expansion.report["train_after"] == 1 + len(augment.REFORMULATIONS["es"])
    assert any("ran out" in note for note in expansion.report["notes"])


def test_expansion_is_deterministic_for_a_seed():
    train = [MCQ, QA, QA_ES, SQUAD, CHAT]
    a = expand_train(train, ExpandSettings(expansion_factor=4.0, seed=5)).records
    b = expand_train(train, ExpandSettings(expansion_factor=4.0, seed=5)).records
    c = expand_train(train, ExpandSettings(expansion_factor=4.0, seed=6)).records
    assert [r.id for r in a] == [r.id for r in b] != [r.id for r in c]


def test_exact_duplicates_are_dropped_after_expansion():
    # The reformulation of one row equals another train row: it is counted, not added.
    twin = record(from_alpaca({"instruction": "Question: Where is the gym?", "output": QA.reference}), "t")
    expansion = expand_train([QA, twin], ExpandSettings(expansion_factor=20.0, strategies=["reformulation"]))
    contents = [tuple(m.content for m in r.messages) for r in expansion.records]
    assert len(contents) == len(set(contents))
    assert expansion.report["strategies"]["reformulation"]["duplicates"] >= 1


class PoolShards:
    """Shards on a thread pool, finishing in any order."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool

    def share(self, guard, held_out):
        return guard

    def submit(self, work, guard=None):
        return self.pool.submit(work.run, guard)


def test_expansion_does_not_depend_on_where_or_how_finely_it_is_sharded():
    data = DataSettings(sources=[{"path": str(EXAMPLES)}, {"path": str(FIXTURES)}], validation_fraction=0.3, max_chars=200,
                        max_rejected_fraction=1.0)  # short enough that some variants are quarantined
    records = collect(data).records
    train = [r for r in records if r.split == "train"]
    held_out = [r for r in records if r.split != "train"]
    settings = ExpandSettings(expansion_factor=3.5)
    inline = expand_train(train, settings, data, held_out=held_out)
    with ThreadPoolExecutor(4) as pool:
        for rows in (1, 3, 1000):
            sharded = expand_train(train, settings, data, held_out=held_out, sharding=Sharding(PoolShards(pool), rows=rows, in_flight=2))
            assert sharded.records == inline.records and sharded.report == inline.report and sharded.rejected == inline.rejected
    assert len(inline.records) > len(train) and len({r.origin for r in inline.records}) >= 4 and inline.rejected


def test_weights_must_name_enabled_strategies():
    with pytest.raises(ValueError, match="expand.weights names paraphrase"):
        ExpandSettings(weights={"paraphrase": 2})
    with pytest.raises(ValueError, match="need a generator"):
        expand_train([QA], ExpandSettings(expansion_factor=2.0, strategies=["paraphrase"]))


# No leakage (minimum bar) ------------------------------------------------------------------


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _jaccard(a: str, b: str) -> float:
    return len(_words(a) & _words(b)) / max(1, len(_words(a) | _words(b)))


def _reworded(question: str, variant: int) -> str:
    """Lexical paraphrases: the words reordered and upper-cased, or a filler word added."""
    words = re.findall(r"\w+", question)
    if variant == 0:
        return " ".join(reversed(words)).upper() + "?"
    if variant == 1 and len(words) >= 4:
        return "Please, " + question.lower()
    return question


def test_no_validation_example_or_paraphrase_of_it_reaches_the_expanded_train_split():
    """Every strategy on every format, plus a model that tries to sneak validation questions
    (verbatim and reworded) in through paraphrase and self-instruct."""
    data = DataSettings(sources=[{"path": str(EXAMPLES)}, {"path": str(FIXTURES)}], validation_fraction=0.3)
    records = collect(data).records
    train = [r for r in records if r.split == "train"]
    held_out = [r for r in records if r.split != "train"]
    questions = [augment.bare_question(r) for r in held_out]
    calls = []

    def cheating_model(prompts, seed):
        calls.append(len(prompts))
        out = []
        for i, prompt in enumerate(prompts):
            stolen = questions[(seed + i) % len(questions)]
            text = _reworded(stolen, (seed + i) % 3)
            out.append(f"Question: {text}\nAnswer: {held_out[(seed + i) % len(held_out)].reference}" if "Answer:" in prompt[-1].content else text)
        return out

    settings = ExpandSettings(expansion_factor=3.0, strategies=[*RULE_STRATEGIES, "paraphrase", "self_instruct"])
    expansion = expand_train(train, settings, data, held_out=held_out, generator=cheating_model, generator_label="cheater")
    added = expansion.records[len(train):]
    assert calls and {r.origin for r in added} == set(RULE_STRATEGIES)  # every model row was caught
    held_ids = {r.id for r in held_out}
    held_groups = {r.group for r in held_out}
    held_questions = {normalise(q) for q in questions}
    train_ids = {r.id for r in train}
    for row in added:
        assert row.split == "train" and row.meta["parent_id"] in train_ids and row.group not in held_groups
        assert row.id not in held_ids
        question = augment.bare_question(row)
        assert normalise(question) not in held_questions
        assert max(_jaccard(question, q) for q in questions) < 0.9, question
    leaks = [q for q in expansion.rejected if q["kind"] == "leak"]
    report = expansion.report
    assert report["leakage"]["rejected"] == len(leaks) == report["strategies"]["paraphrase"]["rejected"]["leak"] + report["strategies"]["self_instruct"]["rejected"]["leak"]
    assert report["strategies"]["paraphrase"]["generated"] > 0 and report["strategies"]["paraphrase"]["added"] == 0


def test_a_train_row_that_repeats_a_validation_question_is_not_expanded():
    validation = record(from_alpaca({"instruction": "Where is the gym?", "output": "Ask at reception."}), "v")
    validation = validation.model_copy(update={"split": "validation"})
    expansion = expand_train([QA, QA_ES], ExpandSettings(expansion_factor=3.0, strategies=["reformulation"]), held_out=[validation])
    assert {r.meta["parent_id"] for r in expansion.records[2:]} == {QA_ES.id}
    assert expansion.report["leakage"]["train_rows_not_expanded"] == 1
