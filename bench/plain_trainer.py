"""The baseline of `train_throughput.py --whole-process`: the usual LoRA fine-tuning script.

transformers.Trainer + peft, nothing from Fragua: reads chat conversations (one
``{"messages": [...]}`` per line), tokenises them with the tokenizer's chat template (loss on
the last assistant turn only), trains with random batches padded to the longest example,
evaluates the validation file once at the end, saves the adapter. Prints one
``BASELINE {json}`` line with its loop's seconds and non-padding tokens per second.

    python bench/plain_trainer.py BASE TRAIN.jsonl VALIDATION.jsonl OUTPUT --steps 30 --batch-size 16 ...
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainerCallback,
                          TrainingArguments, set_seed)


def encode(tokenizer, conversation: list[dict], max_length: int) -> dict:
    """Token ids of the conversation; labels only on the final assistant answer."""
    prompt = tokenizer.apply_chat_template(conversation[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(conversation, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
    return {"input_ids": ids, "labels": [-100] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids):]}


def read(path: str, tokenizer, max_length: int) -> Dataset:
    with open(path, encoding="utf-8") as handle:
        rows = [encode(tokenizer, json.loads(line)["messages"], max_length) for line in handle if line.strip()]
    return Dataset.from_list(rows)


class LoopClock(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        self.began, self.tokens = time.monotonic(), state.num_input_tokens_seen

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.monotonic() - self.began
        self.rate = (state.num_input_tokens_seen - self.tokens) / self.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("base", "train", "validation", "output"):
        parser.add_argument(name)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--scheduler", required=True)
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--r", type=int, required=True)
    parser.add_argument("--alpha", type=int, required=True)
    parser.add_argument("--dropout", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True)
    options = parser.parse_args()

    set_seed(options.seed)
    tokenizer = AutoTokenizer.from_pretrained(options.base)
    train_rows = read(options.train, tokenizer, options.max_length)
    validation_rows = read(options.validation, tokenizer, options.max_length)
    model = AutoModelForCausalLM.from_pretrained(options.base, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    clock = LoopClock()
    args = TrainingArguments(
        output_dir=f"{options.output}/checkpoints", max_steps=options.steps, per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size, learning_rate=options.learning_rate, lr_scheduler_type=options.scheduler,
        warmup_steps=options.warmup, seed=options.seed, save_strategy="no", logging_steps=10, report_to=[], disable_tqdm=True,
        remove_unused_columns=False, include_num_input_tokens_seen="non_padding", use_cpu=not torch.cuda.is_available(),
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=train_rows, eval_dataset=validation_rows, data_collator=collator, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    eval_loss = trainer.evaluate()["eval_loss"]
    model.save_pretrained(f"{options.output}/model")
    tokenizer.save_pretrained(f"{options.output}/model")
    print("BASELINE " + json.dumps({"loop_seconds": round(clock.seconds, 2), "tokens_per_second": round(clock.rate, 1), "eval_loss": eval_loss}),
          flush=True)


if __name__ == "__main__":
    main()
