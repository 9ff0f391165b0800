"""The data a run trains and evaluates on: records encoded with the chat template, held in memory or streamed from storage.

Examples cut at ``max_seq_length`` are kept (counted as truncated); examples with no answer
token left after the cut are dropped (nothing to train on), and the report counts both.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from fragua.data.records import Record
from fragua.models import templates
from fragua.models.templates import IGNORE_INDEX, encode_conversation
from fragua.settings import TrainSettings
from fragua.train.cache import CachedSplit, TrainingCache, source_digest

logger = logging.getLogger("fragua.train")


@dataclass
class EncodedSplit:
    rows: list[dict[str, list[int]]]
    truncated: int
    dropped: int

    @property
    def trained_tokens(self) -> int:
        return sum(sum(1 for label in row["labels"] if label != IGNORE_INDEX) for row in self.rows)


def encode_records(tokenizer: Any, records: list[Record], max_length: int) -> EncodedSplit:
    rows, truncated, dropped = [], 0, 0
    for record in records:
        encoded = encode_conversation(tokenizer, record.messages, max_length)
        truncated += encoded.truncated
        if encoded.trained_tokens == 0:
            dropped += 1
            continue
        rows.append({"input_ids": encoded.input_ids, "labels": encoded.labels})
    return EncodedSplit(rows, truncated, dropped)


@dataclass
class StreamedSplit:
    """A train split read from storage as it is consumed (no local copy): ``records`` opens a new
    pass over it. Training streams it twice and more: once to count what is trainable (the step
    count and the report), then once per epoch."""

    records: Callable[[], Iterator[Record]]
    description: str


@dataclass
class StreamTally:
    """What one pass over a streamed split found: EncodedSplit's counts without keeping the rows."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    trained_tokens: int = 0
    probe_rows: list[list[int]] = field(default_factory=list)


def encoded_stream(tokenizer: Any, records: Iterator[Record], max_length: int, tally: StreamTally | None = None) -> Iterator[dict[str, list[int]]]:
    """Rows to train on, encoded as they are read (those with no answer token left are skipped, as in encode_records)."""
    for record in records:
        encoded = encode_conversation(tokenizer, record.messages, max_length)
        if tally is not None:
            tally.truncated += encoded.truncated
            tally.dropped += encoded.trained_tokens == 0
        if encoded.trained_tokens == 0:
            continue
        if tally is not None:
            tally.examples += 1
            tally.trained_tokens += encoded.trained_tokens
            if len(tally.probe_rows) < 3:
                tally.probe_rows.append(encoded.input_ids[:16])
        yield {"input_ids": encoded.input_ids, "labels": encoded.labels}


def streamed_steps(settings: TrainSettings, examples: int, world_size: int = 1) -> int:
    """Optimiser steps for ``settings.epochs`` over ``examples`` rows, as the Trainer counts them for a sized dataset."""
    if settings.max_steps:
        return settings.max_steps
    batches = math.ceil(examples / (settings.batch_size * world_size))
    return max(1, math.ceil(settings.epochs * math.ceil(batches / settings.gradient_accumulation_steps)))


@dataclass
class TrainingData:
    """The datasets one run hands the Trainer, and what its report says about the train split.

    ``train`` is a ``datasets.Dataset``, or an ``IterableDataset`` read from storage as training goes;
    ``eval`` is None without evaluation rows (then there is no evaluation and no early stopping);
    ``max_steps`` is a streamed split's step count (the Trainer cannot count an unsized dataset), None where the Trainer counts.
    """

    train: Any
    eval: Any | None
    tally: StreamTally
    max_steps: int | None
    streamed_from: str | None


def setup_data(
    tokenizer: Any, train_records: list[Record] | StreamedSplit, eval_records: list[Record], settings: TrainSettings, *,
    cache: TrainingCache | None = None,
) -> TrainingData:
    """Encode the eval split and the train split (read whole, or streamed and counted in one pass); refuse a split with nothing to train on.

    ``cache`` gives back a split tokenised by an earlier run (same rows, tokenizer and max_seq_length) and keeps new ones.
    """
    eval_split = _encoded_dataset(tokenizer, eval_records, settings, cache, "validation")
    if isinstance(train_records, StreamedSplit):
        train_dataset, tally, max_steps = _streamed_train(tokenizer, train_records, settings)
    else:
        train_split = _encoded_dataset(tokenizer, train_records, settings, cache, "train")
        tally = StreamTally(len(train_split.dataset), train_split.truncated, train_split.dropped, train_split.trained_tokens, train_split.probe_rows)
        train_dataset, max_steps = train_split.dataset, None
    if not tally.examples:
        raise ValueError(f"no trainable examples: all {tally.dropped} lost their answer to train.max_seq_length={settings.max_seq_length}")
    return TrainingData(
        train=train_dataset,
        eval=eval_split.dataset if len(eval_split.dataset) else None,
        tally=tally,
        max_steps=max_steps,
        streamed_from=train_records.description if isinstance(train_records, StreamedSplit) else None,
    )


def _encoded_dataset(tokenizer: Any, records: list[Record], settings: TrainSettings, cache: TrainingCache | None, split: str) -> CachedSplit:
    """A split encoded into a ``datasets.Dataset`` with its counts and first rows (the batching probe): from the cache, or encoded now (and cached)."""
    from datasets import Dataset

    key = cache.split_key(split, tokenizer, settings.max_seq_length, source_digest(templates.__file__, __file__)) if cache else None
    cached = cache.load_split(key) if cache and key else None
    if cached is not None:
        logger.info("%s split: %d tokenised rows from the cache", split, len(cached.dataset))
        return cached
    encoded = encode_records(tokenizer, records, settings.max_seq_length)
    result = CachedSplit(Dataset.from_list(encoded.rows), encoded.truncated, encoded.dropped, encoded.trained_tokens,
                         [row["input_ids"][:16] for row in encoded.rows[:3]])
    if cache and key:
        cache.store_split(key, result)
    return result


def _streamed_train(tokenizer: Any, split: StreamedSplit, settings: TrainSettings) -> tuple[Any, StreamTally, int]:
    """One counting pass over the split (the step count, the report, the batching probe), then the dataset that streams it per epoch."""
    tally = StreamTally()
    for _ in encoded_stream(tokenizer, split.records(), settings.max_seq_length, tally):
        pass
    dataset = _streamed_dataset(tokenizer, split, settings)
    max_steps = streamed_steps(settings, tally.examples)
    logger.info("streaming the train split from %s: %d trainable examples, %d optimiser steps", split.description, tally.examples, max_steps)
    return dataset, tally, max_steps


def _streamed_dataset(tokenizer: Any, split: StreamedSplit, settings: TrainSettings) -> Any:
    """The split as a shuffled ``datasets.IterableDataset`` of encoded rows; each epoch is a new pass
    (the Trainer sets the epoch, which reseeds the shuffle buffer)."""
    from datasets import IterableDataset

    def rows() -> Iterator[dict[str, list[int]]]:
        yield from encoded_stream(tokenizer, split.records(), settings.max_seq_length)

    return IterableDataset.from_generator(rows).shuffle(seed=settings.seed, buffer_size=settings.shuffle_buffer)
