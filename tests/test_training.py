from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fragua.data.ingest import collect
from fragua.settings import DataSettings, TrainSettings
from fragua.train.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint
from fragua.train.trainer import train

from .conftest import EXAMPLES


@pytest.fixture(scope="module")
def records():
    collected = collect(DataSettings(sources=[{"path": str(EXAMPLES / "batch1")}])).records
    return [r for r in collected if r.split == "train"][:64], [r for r in collected if r.split == "validation"][:16]


def run(tiny_base, records, run_dir, **overrides):
    settings = TrainSettings(**{"max_steps": 6, "save_steps": 2, "batch_size": 8, "logging_steps": 2, "save_total_limit": 5, **overrides})
    train_records, eval_records = records
    events = []
    report = train(
        base_model=str(tiny_base), settings=settings, train_records=train_records, eval_records=eval_records,
        run_dir=run_dir, report_to=[], run_name=run_dir.name, progress=events.append,
    )
    return report, events


def test_lora_weights_change_and_the_adapter_carries_the_chat_template(tiny_base, records, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    report, events = run(tiny_base, records, tmp_path / "run")
    assert report.global_step == 6 and report.resumed_from is None
    assert [e["step"] for e in events] == [2, 4, 6]
    adapter = load_file(str(tmp_path / "run" / "model" / "adapter_model.safetensors"))
    assert any("lora_B" in name for name in adapter)
    # LoRA B starts at zero: any non-zero B proves the adapters trained.
    assert all(tensor.abs().sum() > 0 for name, tensor in adapter.items() if "lora_B" in name)
    set_seed(42)
    fresh = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), LoraConfig(r=64, lora_alpha=128, target_modules="all-linear"))
    fresh_a = {n: p for n, p in fresh.named_parameters() if "lora_A" in n}
    assert fresh_a and any(not torch.equal(adapter[n.replace(".default", "")], p.detach()) for n, p in fresh_a.items())
    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    assert "<|im_start|>" in saved.chat_template
    assert report.base_parameters > 100_000 and report.trained_tokens > 0 and report.eval_loss is not None


def test_the_last_step_is_logged_when_logging_steps_do_not_reach_it(tiny_base, records, tmp_path):
    report, events = run(tiny_base, records, tmp_path / "run", max_steps=3, logging_steps=10, save_steps=100)
    assert [e["step"] for e in events] == [3]
    assert report.train_loss is not None and report.train_loss == events[-1]["loss"]


def test_the_validation_split_is_evaluated_once_at_the_end_and_the_phases_are_timed(tiny_base, records, tmp_path):
    # 64 examples in batches of 8: one epoch is 8 steps; max_steps ends the loop in the second epoch,
    # where the epoch-end evaluation runs; its loss is the final one, not evaluated again.
    report, _ = run(tiny_base, records, tmp_path / "run", max_steps=12, save_steps=100)
    evaluations = [entry for entry in report.log_history if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [8, 12]
    assert report.eval_loss == evaluations[-1]["eval_loss"]
    assert list(report.phase_seconds) == ["setup", "training", "evaluation", "save"]
    assert all(seconds >= 0 for seconds in report.phase_seconds.values())
    assert report.phase_seconds["evaluation"] == pytest.approx(sum(entry["eval_runtime"] for entry in evaluations), abs=0.05)



def test_throughput_leaves_the_loops_validation_passes_out(monkeypatch):
    from types import SimpleNamespace

    from fragua.train import callbacks

    now = [100.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: now[0])
    throughput = callbacks.Throughput()
    reporter = callbacks.progress_reporter(None, throughput)
    state = SimpleNamespace(global_step=0, num_input_tokens_seen=0, is_world_process_zero=True)
    reporter.on_train_begin(None, state, None)
    now[0] += 50.0  # 20 s of steps, a 30 s evaluation (logged as its runtime), then 10 s of steps
    reporter.on_evaluate(None, state, None, metrics={"eval_loss": 2.0, "eval_runtime": 30.0})
    state.num_input_tokens_seen = 3000
    assert throughput.rate(state.num_input_tokens_seen) == 150.0
    now[0] += 10.0
    state.num_input_tokens_seen = 4000
    reporter.on_train_end(None, state, None)
    assert reporter.session_tokens_per_second == pytest.approx(133.3)


def test_the_final_loss_is_evaluated_only_when_the_loop_did_not_end_on_an_evaluation():
    from types import SimpleNamespace

    from fragua.train.trainer import final_eval_loss

    evaluated = []

    def trainer(history, global_step, best=None):
        state = SimpleNamespace(log_history=history, global_step=global_step, best_model_checkpoint=best and "checkpoint-4", best_metric=best)
        return SimpleNamespace(state=state, args=SimpleNamespace(load_best_model_at_end=best is not None),
                               evaluate=lambda: evaluated.append(global_step) or {"eval_loss": 9.0})

    history = [{"loss": 3.0, "step": 4}, {"eval_loss": 2.5, "step": 4}, {"eval_loss": 2.0, "step": 8}]
    assert final_eval_loss(trainer(history, 8)) == 2.0 and evaluated == []
    assert final_eval_loss(trainer(history, 8, best=2.5)) == 2.5 and evaluated == []  # the best checkpoint was loaded
    assert final_eval_loss(trainer(history, 10)) == 9.0 and evaluated == [10]  # steps after the last evaluation


def test_resume_skips_a_checkpoint_without_completion_marker(tiny_base, records, tmp_path):
    run_dir = tmp_path / "run"
    complete, _ = run(tiny_base, records, run_dir)
    checkpoints = run_dir / "checkpoints"
    assert latest_complete_checkpoint(checkpoints).name == "checkpoint-6"
    # Simulate a save killed half-way at step 6: no marker, and step 4 is the newest complete one.
    (checkpoints / "checkpoint-6" / COMPLETE_MARKER).unlink()
    (checkpoints / "checkpoint-6" / "optimizer.pt").write_bytes(b"truncated")
    assert latest_complete_checkpoint(checkpoints).name == "checkpoint-4"
    resumed, events = run(tiny_base, records, run_dir)
    assert resumed.resumed_from.endswith("checkpoint-4")
    assert [e["step"] for e in events] == [6]
    assert resumed.global_step == 6
    assert resumed.train_loss == pytest.approx(complete.train_loss, rel=1e-4)
    marker = json.loads((checkpoints / "checkpoint-6" / COMPLETE_MARKER).read_text())
    assert marker["global_step"] == 6


def test_full_fine_tuning_saves_a_whole_model(tiny_base, records, tmp_path):
    report, _ = run(tiny_base, records, tmp_path / "full", method="full", max_steps=2)
    saved = tmp_path / "full" / "model"
    assert (saved / "model.safetensors").is_file() and not (saved / "adapter_config.json").exists()
    assert report.method == "full"
    shutil.rmtree(saved)


def test_qlora_without_bitsandbytes_fails_before_loading(tiny_base, records, tmp_path, monkeypatch):
    import builtins

    from fragua.models.loading import ModelLoadError

    real_import = builtins.__import__

    def no_bitsandbytes(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bitsandbytes)
    with pytest.raises(ModelLoadError, match="use train.method 'lora' instead"):
        run(tiny_base, records, tmp_path / "q", method="qlora")


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_its_adapters_on_a_quantised_base(tiny_base, records, tmp_path, bits):
    pytest.importorskip("bitsandbytes")
    from fragua.models.loading import ModelLoadError, require_quantization_backend

    try:
        require_quantization_backend()
    except ModelLoadError as exc:
        pytest.skip(str(exc))
    report, events = run(tiny_base, records, tmp_path / f"q{bits}", method="qlora", quant={"bits": bits}, max_steps=3, save_steps=10, logging_steps=1)
    adapter = load_file(str(tmp_path / f"q{bits}" / "model" / "adapter_model.safetensors"))
    lora_b = {name: tensor for name, tensor in adapter.items() if "lora_B" in name}
    # LoRA B starts at zero; the probe forward before training must not have frozen them.
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b.values())
    assert report.method == "qlora" and report.global_step == 3 and len(events) == 3
    assert report.batching.startswith("padding-free")
    assert events[-1]["loss"] < events[0]["loss"] * 1.5


@pytest.fixture(scope="module")
def base_without_chat_tokens(tmp_path_factory):
    """A base model whose tokenizer has no chat template and no ChatML tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from fragua.models.tiny import corpus_texts

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(corpus_texts(), trainers.BpeTrainer(vocab_size=600, special_tokens=["</s>"], show_progress=False,
                                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.1,
                         eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("plain-base")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_chatml_tokens_missing_from_the_vocabulary_are_added_and_trained(base_without_chat_tokens, records, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fragua.models.loading import load_for_inference
    from fragua.models.templates import CHATML_TEMPLATE

    report, _ = run(base_without_chat_tokens, records, tmp_path / "run", max_steps=4)
    assert report.added_tokens == ["<|im_start|>", "<|im_end|>"]
    saved = tmp_path / "run" / "model"
    tokenizer = AutoTokenizer.from_pretrained(saved)
    assert tokenizer.chat_template == CHATML_TEMPLATE
    new_ids = tokenizer.convert_tokens_to_ids(report.added_tokens)
    base = AutoModelForCausalLM.from_pretrained(base_without_chat_tokens)
    assert max(new_ids) >= base.get_input_embeddings().num_embeddings  # rows the base did not have
    base.resize_token_embeddings(len(tokenizer))
    loaded = load_for_inference(saved, TrainSettings())
    trained_rows = loaded.model.get_input_embeddings()(torch.tensor(new_ids))
    initial_rows = base.get_input_embeddings()(torch.tensor(new_ids))
    assert not torch.allclose(trained_rows, initial_rows)  # the new rows learned
    old_ids = torch.tensor([5, 17, 42])
    torch.testing.assert_close(loaded.model.get_input_embeddings()(old_ids), base.get_input_embeddings()(old_ids))


def test_early_stopping_keeps_the_best_checkpoint(tiny_base, records, tmp_path):
    # A learning rate this high makes validation loss climb after the first evaluations.
    report, _ = run(tiny_base, records, tmp_path / "run", max_steps=40, learning_rate=0.3, lr_scheduler="constant",
                    save_steps=2, eval_steps=2, early_stopping_patience=2)
    evals = [e["eval_loss"] for e in report.log_history if "eval_loss" in e]
    assert report.stopped_early and report.global_step < report.max_steps == 40
    assert report.best_checkpoint and Path(report.best_checkpoint).parent == tmp_path / "run" / "checkpoints"
    best = min(evals)
    assert evals.index(best) == len(evals) - 3  # two evaluations without improvement, then stop; none repeated after training
    assert report.eval_loss == best  # the best weights were loaded at the end: their loss, not evaluated again


def test_the_same_seed_gives_the_same_loss_curve(tiny_base, records, tmp_path):
    def curve(name: str, seed: int) -> list[float]:
        report, _ = run(tiny_base, records, tmp_path / name, max_steps=4, logging_steps=1, save_steps=100, seed=seed)
        return [e["loss"] for e in report.log_history if "loss" in e]

    first = curve("a", 7)
    assert curve("b", 7) == first
    assert curve("c", 8) != first
