"""The embedded default base model: a tiny random-init Llama with a BPE tokenizer trained here.

It exists so that everything runs without the Hugging Face hub. It is saved with
``save_pretrained`` and loaded back through ``from_pretrained`` exactly like a hub id or a
local checkpoint, so no code path is special-cased for it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from fragua.models.loading import ModelLoadError, quiet_transformers
from fragua.models.templates import CHATML_TEMPLATE, END_OF_TEXT, IM_END, IM_START
from fragua.settings import Settings, TinyBaseSettings, resource_path

SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]
BASE_MARKER = "fragua_base.json"  # the train.tiny shape the base in a work dir was built with


def corpus_texts(extra_files: list[Path] | None = None) -> Iterator[str]:
    """The shipped prose corpus plus the shipped example questions and answers."""
    for path in sorted(resource_path("resources", "corpus").glob("*.txt")):
        yield from path.read_text(encoding="utf-8").split("\n\n")
    for path in sorted(resource_path("resources", "examples").rglob("*.jsonl")) + list(extra_files or []):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield " ".join(_strings(json.loads(line)))


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def train_tokenizer(vocab_size: int):
    """Byte-level BPE (any UTF-8 text encodes, nothing is <unk>) with ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus_texts(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        additional_special_tokens=[IM_START],
        model_max_length=None,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_base(output_dir: Path, shape: TinyBaseSettings, *, force: bool = False) -> Path:
    """Train the tokenizer, random-init the model and save both; idempotent unless ``force``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    quiet_transformers()
    output_dir = Path(output_dir)
    if (output_dir / "config.json").is_file() and not force:
        return output_dir
    tokenizer = train_tokenizer(shape.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        initializer_range=shape.init_std,
        bos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TEXT),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(shape.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def ensure_base_model(settings: Settings, *, force: bool = False) -> str:
    """The configured base model id/path; builds the tiny local base when none is configured."""
    if settings.train.base_model:
        return settings.train.base_model
    path = settings.tiny_base_path
    wanted = settings.train.tiny.model_dump(mode="json")
    marker = path / BASE_MARKER
    if marker.is_file() and not force:
        built = json.loads(marker.read_text())
        if built != wanted:
            raise ModelLoadError(
                f"the tiny base model at {path} was built with train.tiny = {built}, but the settings say {wanted}; "
                "run `fragua init-base --force` to rebuild it (versions trained on the old one need the old one to load)"
            )
        return str(path)
    build_tiny_base(path, settings.train.tiny, force=True)
    marker.write_text(json.dumps(wanted, indent=2))
    return str(path)
