"""Augmentation strategies: pure functions from one train record to its variants.

Each rule-based strategy takes a record, a seeded ``random.Random`` and a limit and
returns up to ``limit`` new records in an order drawn from the generator, so the same
seed gives the same variants. The model-based strategies are split the same way: a pure
function builds the prompt for the model and another turns the model's text into a record
(or a reason it cannot). Every variant records its ``origin`` (the strategy) and its
parent's id and group in ``meta``, so it lands in its parent's split and nowhere else.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from typing import Any

from fragua.data.records import CHOICE_LETTERS, Message, Record, format_choices, record_id
from fragua.data.textops import conversation_id

SQUAD_CONTEXT, SQUAD_QUESTION = "Context: ", "\n\nQuestion: "
EXPLANATION_KEYS = ("explanation", "exp", "rationale", "explicacion", "explicación")
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'¿¡(]?[A-ZÁÉÍÓÚÑ0-9])")
_SPANISH = frozenset("el la los las de del que qué cómo cuál cuáles cuándo dónde por para una es en y con se su al lo hay puedo".split())
_ENGLISH = frozenset("the an of what how which when where why is are do does to in and for with can on there my it".split())

REFORMULATIONS = {
    "en": (
        "Question: {question}",
        "Please answer the following question.\n{question}",
        "I have a question: {question}",
        "Could you help me with this? {question}",
        "Answer the question below.\n\n{question}",
        "{question}\nPlease answer.",
    ),
    "es": (
        "Pregunta: {question}",
        "Responde a la siguiente pregunta.\n{question}",
        "Tengo una duda: {question}",
        "¿Me puedes ayudar con esto? {question}",
        "Contesta la pregunta de abajo.\n\n{question}",
        "{question}\nResponde, por favor.",
    ),
}
ANSWER_INSTRUCTIONS = {
    "en": {
        "letter": "Answer with the letter of the correct option only.",
        "text": "Answer with the text of the correct option.",
        "short": "Answer in one sentence.",
        "explained": "Explain your answer.",
        "explanation": "Explanation: ",
    },
    "es": {
        "letter": "Responde solo con la letra de la opción correcta.",
        "text": "Responde con el texto de la opción correcta.",
        "short": "Responde en una sola frase.",
        "explained": "Explica tu respuesta.",
        "explanation": "Explicación: ",
    },
}
SQUAD_LAYOUTS = {
    "en": (
        "Question: {question}\n\nContext: {context}",
        "Read the passage and answer the question.\n\nPassage: {context}\n\nQuestion: {question}",
        "{context}\n\nBased on the text above: {question}",
    ),
    "es": (
        "Pregunta: {question}\n\nContexto: {context}",
        "Lee el texto y responde a la pregunta.\n\nTexto: {context}\n\nPregunta: {question}",
        "{context}\n\nSegún el texto anterior: {question}",
    ),
}
PARAPHRASE_PROMPTS = {
    "en": "Rewrite this question in other words, keeping its meaning. Reply with the rewritten question only.\n\n{question}",
    "es": "Reescribe esta pregunta con otras palabras, sin cambiar su significado. Responde solo con la pregunta reescrita.\n\n{question}",
}
SELF_INSTRUCT_PROMPTS = {
    "en": (
        "Here is an example question with its answer.\n\nQuestion: {question}\nAnswer: {answer}\n\n"
        "Write one new question on the same topic, different from the example, and its answer, in the same format:\n"
        "Question: ...\nAnswer: ..."
    ),
    "es": (
        "Este es un ejemplo de pregunta con su respuesta.\n\nPregunta: {question}\nRespuesta: {answer}\n\n"
        "Escribe una pregunta nueva sobre el mismo tema, distinta del ejemplo, y su respuesta, con el mismo formato:\n"
        "Pregunta: ...\nRespuesta: ..."
    ),
}
_LABELLED = re.compile(r"^\s*(?:question|pregunta|q)\s*:\s*(?P<question>.+?)\s*\n\s*(?:answer|respuesta|a)\s*:\s*(?P<answer>.+?)\s*$", re.I | re.S)
_QUESTION_LABEL = re.compile(r"^\s*(?:question|pregunta|rewritten question|pregunta reescrita)\s*:\s*", re.I)


class Rejected(ValueError):
    """Model output that cannot become a record; ``kind`` goes to the quarantine."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Prompt:
    """The final question of a record, taken apart: ``history`` + a user message of
    ``head + question + tail`` (SQuAD context before, multiple-choice options after)."""

    history: list[Message]
    head: str
    question: str
    tail: str
    context: str | None = None

    def user(self, question: str | None = None, *, instruction: str | None = None) -> str:
        text = self.head + (self.question if question is None else question) + self.tail
        return f"{text}\n\n{instruction}" if instruction else text


def prompt_parts(record: Record) -> Prompt | None:
    """The final user question of a record ending in an assistant answer; None otherwise."""
    messages = record.messages
    if len(messages) < 2 or messages[-1].role != "assistant" or messages[-2].role != "user":
        return None
    history, content = list(messages[:-2]), messages[-2].content
    if record.choices:
        tail = format_choices("", record.choices)
        if content.endswith(tail):
            return Prompt(history, "", content[: -len(tail)], tail)
    if content.startswith(SQUAD_CONTEXT) and SQUAD_QUESTION in content:
        context, _, question = content[len(SQUAD_CONTEXT):].rpartition(SQUAD_QUESTION)
        return Prompt(history, content[: len(content) - len(question)], question, "", context)
    return Prompt(history, "", content, "")


def bare_question(record: Record) -> str:
    """The question a record asks, without context, options or wrapper: what leakage checks compare."""
    parts = prompt_parts(record)
    if parts is not None:
        return parts.question
    users = [m.content for m in record.messages if m.role == "user"]
    return users[-1] if users else ""


def detect_language(text: str) -> str:
    """'es' or 'en', from Spanish punctuation and the commoner function words of each."""
    lowered = text.lower()
    if "¿" in lowered or "¡" in lowered or "ñ" in lowered:
        return "es"
    words = _WORD.findall(lowered)
    spanish = sum(w in _SPANISH for w in words)
    english = sum(w in _ENGLISH for w in words)
    return "es" if spanish > english else "en"


def language(record: Record) -> str:
    """The record's own ``lang``/``language`` when it is en or es, else detected from its question."""
    given = str(record.meta.get("lang") or record.meta.get("language") or "").strip().lower()[:2]
    if given in REFORMULATIONS:
        return given
    parts = prompt_parts(record)
    return detect_language((parts.context or "") + " " + parts.question if parts else record.messages[0].content)


def correct_option(record: Record) -> str | None:
    if not record.choices or record.answer is None or record.answer not in CHOICE_LETTERS[: len(record.choices)]:
        return None
    return record.choices[CHOICE_LETTERS.index(record.answer)]


def variant(parent: Record, strategy: str, messages: list[Message], *, choices: list[str] | None = None,
            answer: str | None = None, **meta: Any) -> Record:
    """A record derived from ``parent``, with its domain, source, split and group. The id is
    left empty: the expansion's checks compute content ids for whole batches at once and fill
    it in (:func:`with_content_id` does it for one record)."""
    return Record(
        id="",
        messages=messages,
        choices=choices,
        answer=answer if answer is not None else (None if choices else messages[-1].content),
        domain=parent.domain,
        source=parent.source,
        split=parent.split,
        origin=strategy,
        meta={**parent.meta, **meta, "parent_id": parent.id, "group": parent.group},
    )


def with_content_id(record: Record) -> Record:
    return record.model_copy(update={"id": record_id(conversation_id([(m.role, m.content) for m in record.messages]))})


def _sample(options: list[Any], rng: random.Random, limit: int) -> list[Any]:
    return rng.sample(options, min(limit, len(options)))


# Rule-based strategies ------------------------------------------------------------------


def permute_choices(record: Record, rng: random.Random, limit: int) -> list[Record]:
    """Up to ``limit`` reorderings of a multiple-choice record, the answer letter remapped."""
    parts = prompt_parts(record)
    correct = correct_option(record)
    if parts is None or correct is None or not parts.tail:
        return []
    options = list(record.choices or [])
    size = len(options)
    if size <= 6:  # all n! - 1 orders fit in memory
        orders = [list(p) for p in itertools.permutations(range(size)) if list(p) != list(range(size))]
        orders = _sample(orders, rng, limit)
    else:  # many options: draw orders instead of listing n! of them
        orders = []
        for _ in range(limit * 4):
            order = rng.sample(range(size), size)
            if order != list(range(size)) and order not in orders:
                orders.append(order)
            if len(orders) >= limit:
                break
    produced: list[Record] = []
    seen = {tuple(options)}
    for order in orders:
        shuffled = [options[i] for i in order]
        if tuple(shuffled) in seen:  # repeated option texts make some orders identical
            continue
        seen.add(tuple(shuffled))
        letter = CHOICE_LETTERS[shuffled.index(correct)]
        messages = [*parts.history, Message(role="user", content=parts.question + format_choices("", shuffled)),
                    Message(role="assistant", content=f"{letter}. {correct}")]
        produced.append(variant(record, "mcq_permutation", messages, choices=shuffled, answer=letter))
    return produced


def reformulate(record: Record, rng: random.Random, limit: int) -> list[Record]:
    """The question wrapped in other phrasings (English or Spanish, the record's language); answer unchanged."""
    parts = prompt_parts(record)
    if parts is None or parts.context is not None or not parts.question.strip():
        return []
    lang = language(record)
    produced = []
    for template in _sample(list(REFORMULATIONS[lang]), rng, limit):
        user = parts.user(template.format(question=parts.question.strip()))
        messages = [*parts.history, Message(role="user", content=user), record.messages[-1]]
        produced.append(variant(record, "reformulation", messages, choices=record.choices, answer=record.answer, template=template, lang=lang))
    return produced


def explanation(record: Record) -> str | None:
    for key in EXPLANATION_KEYS:
        value = record.meta.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def first_sentence(text: str) -> str | None:
    """The first sentence of a text of two or more sentences; None for one sentence."""
    pieces = _SENTENCE_END.split(text.strip(), maxsplit=1)
    return pieces[0].strip() if len(pieces) == 2 and len(pieces[0].strip()) >= 2 else None


def answer_formats(record: Record, rng: random.Random, limit: int) -> list[Record]:
    """The same question asking for another answer format, stated in the prompt.

    Multiple choice: the letter only, or the option's text only. Any record: with its
    explanation (a ``meta`` explanation/exp/rationale field) and without it; a free-form
    answer of several sentences: its first sentence only.
    """
    parts = prompt_parts(record)
    if parts is None:
        return []
    words = ANSWER_INSTRUCTIONS[language(record)]
    reference = record.messages[-1].content
    correct = correct_option(record)
    formats: list[tuple[str, str]] = []  # (format, answer)
    if correct is not None:
        formats += [("letter", str(record.answer)), ("text", correct)]
    if (reason := explanation(record)) is not None:
        formats.append(("explained", f"{reference}\n\n{words['explanation']}{reason}"))
    if correct is None and (short := first_sentence(reference)) is not None:
        formats.append(("short", short))
    produced = []
    for name, answer in _sample(formats, rng, limit):
        messages = [*parts.history, Message(role="user", content=parts.user(instruction=words[name])), Message(role="assistant", content=answer)]
        answer_field = record.answer if correct is not None else answer
        produced.append(variant(record, "answer_format", messages, choices=record.choices, answer=answer_field, answer_format=name))
    return produced


def squad_with_context(record: Record, rng: random.Random, limit: int) -> list[Record]:
    """A SQuAD question and its context in other layouts (question first, a passage instruction, ...)."""
    parts = prompt_parts(record)
    if parts is None or parts.context is None:
        return []
    lang = language(record)
    produced = []
    for layout in _sample(list(SQUAD_LAYOUTS[lang]), rng, limit):
        user = layout.format(question=parts.question.strip(), context=parts.context.strip())
        messages = [*parts.history, Message(role="user", content=user), record.messages[-1]]
        produced.append(variant(record, "squad_context", messages, answer=record.answer, layout=layout, lang=lang))
    return produced


def squad_closed_book(record: Record, rng: random.Random, limit: int, *, no_answer_text: str = "unanswerable") -> list[Record]:
    """A SQuAD question without its context -> its answer (not for unanswerable questions,
    whose 'no answer' only holds for their context)."""
    parts = prompt_parts(record)
    if parts is None or parts.context is None or limit < 1 or record.messages[-1].content.strip() == no_answer_text:
        return []
    messages = [*parts.history, Message(role="user", content=parts.question.strip()), record.messages[-1]]
    return [variant(record, "squad_closed_book", messages, answer=record.answer)]


def split_turns(record: Record, rng: random.Random, limit: int) -> list[Record]:
    """A conversation with several assistant turns as one example per turn: each earlier turn
    with the conversation before it, and each later turn on its own (system message kept)."""
    messages = record.messages
    answers = [i for i, m in enumerate(messages) if m.role == "assistant" and i > 0 and messages[i - 1].role == "user"]
    if len(answers) < 2 or messages[-1].role != "assistant":
        return []
    system = [m for m in messages[:1] if m.role == "system"]
    turns: list[tuple[str, int, list[Message]]] = []
    for number, index in enumerate(answers, start=1):
        if index < len(messages) - 1:
            turns.append(("history", number, list(messages[: index + 1])))
        if number > 1:
            turns.append(("standalone", number, [*system, messages[index - 1], messages[index]]))
    return [
        variant(record, "turn_split", chosen, turn=number, turns=len(answers), turn_context=kind)
        for kind, number, chosen in _sample(turns, rng, limit)
    ]


# Model-based strategies -----------------------------------------------------------------


def paraphrase_prompt(record: Record) -> list[Message] | None:
    parts = prompt_parts(record)
    if parts is None or not parts.question.strip():
        return None
    return [Message(role="user", content=PARAPHRASE_PROMPTS[language(record)].format(question=parts.question.strip()))]


def paraphrase_variant(record: Record, generated: str) -> tuple[Record, str]:
    """The record with its question replaced by the model's rewording, and that question."""
    parts = prompt_parts(record)
    assert parts is not None
    lines = [line.strip() for line in generated.strip().splitlines() if line.strip()]
    question = _QUESTION_LABEL.sub("", lines[0]).strip().strip('"“”«»') if lines else ""
    if not question:
        raise Rejected("the model wrote no question", "empty")
    if _WORD.findall(question.lower()) == _WORD.findall(parts.question.lower()):
        raise Rejected("the paraphrase repeats the question word for word", "unchanged")
    messages = [*parts.history, Message(role="user", content=parts.user(question)), record.messages[-1]]
    return variant(record, "paraphrase", messages, choices=record.choices, answer=record.answer), question


def self_instruct_prompt(record: Record) -> list[Message] | None:
    parts = prompt_parts(record)
    if parts is None or not parts.question.strip():
        return None
    answer = correct_option(record) or record.messages[-1].content
    template = SELF_INSTRUCT_PROMPTS[language(record)]
    return [Message(role="user", content=template.format(question=parts.question.strip(), answer=answer.strip()))]


def self_instruct_variant(record: Record, generated: str) -> tuple[Record, str]:
    """A new question/answer example parsed from the model's 'Question: … Answer: …' text."""
    match = _LABELLED.match(generated)
    if match is None:
        raise Rejected(f"the model's text is not 'Question: … Answer: …': {generated[:120]!r}", "unparseable")
    question, answer = match["question"].strip(), match["answer"].strip()
    parts = prompt_parts(record)
    history = [m for m in (parts.history if parts else []) if m.role == "system"]
    messages = [*history, Message(role="user", content=question), Message(role="assistant", content=answer)]
    return variant(record, "self_instruct", messages), question
