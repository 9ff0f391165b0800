"""Each published version's README.md: what it is, what it was trained on, how it scored, how to load it."""

from __future__ import annotations

from typing import Any

from fragua.reports.markdown import table
from fragua.validate.scoring import MetricSet


def model_card(*, version: str, manifest_fields: dict[str, Any], metrics: MetricSet, report: str) -> str:
    lineage = manifest_fields["lineage"]
    adapter = lineage["method"] != "full"
    loader_module, loader = ("peft", "AutoPeftModelForCausalLM") if adapter else ("transformers", "AutoModelForCausalLM")
    return "\n".join(
        [
            f"# {version}",
            "",
            f"A {lineage['method']} fine-tune of `{lineage['base_model']}` made by Fragua.",
            "",
            "## Data",
            "",
            f"- dataset version `{lineage['dataset_id']}`: {lineage['dataset_counts']}",
            f"- parent version: {lineage.get('parent_version') or 'none'}",
            "",
            "## Metrics on the validation split",
            "",
            table([metrics.model_dump()], ["n", "loss", "perplexity", *metrics.measured()]),
            "## Intended use",
            "",
            "Answering questions in the domains of its training data, in the style of those answers. "
            "It inherits the limitations of its base model; check the validation report before relying on it.",
            "",
            "## How to load",
            "",
            "```python",
            f"from {loader_module} import {loader}",
            "from transformers import AutoTokenizer",
            "",
            f"model = {loader}.from_pretrained(\"PATH/TO/{version}\")",
            "tokenizer = AutoTokenizer.from_pretrained(\"PATH/TO/" + version + "\")  # carries the chat template",
            "```",
            "",
            "or `fragua versions` / `fragua rollback` to manage it in the registry. Weights are safetensors only; "
            "nothing here needs `trust_remote_code`.",
            "",
            f"`fragua export {version} --merged` writes the adapter merged into its base as a standalone safetensors model; "
            f"`fragua export {version} --gguf` also writes a GGUF file for Ollama/llama.cpp (needs llama.cpp's converter).",
            "",
            "## Validation report",
            "",
            report,
        ]
    )
