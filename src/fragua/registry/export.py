"""Exporting a registry version for use outside Fragua: a merged model, and GGUF for Ollama/llama.cpp.

The merged model is the adapter folded into its base (peft ``merge_and_unload``), saved as
safetensors with the tokenizer and the version's model card: loadable with plain
``AutoModelForCausalLM.from_pretrained``. GGUF needs llama.cpp's ``convert_hf_to_gguf.py``,
which is not on PyPI; it is used when found and named in a clear message when not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from fragua.models.loading import is_adapter, load_causal_lm, load_tokenizer
from fragua.registry.versions import MANIFEST, VersionManifest
from fragua.settings import TrainSettings

CONVERTER_NAMES = ("convert_hf_to_gguf.py", "convert-hf-to-gguf.py")
CONVERTER_ENV = "GGUF_CONVERTER"
GGUF_OUTTYPES = ("f32", "f16", "bf16", "q8_0", "auto")
INSTALL_CONVERTER = (
    "GGUF export needs llama.cpp's convert_hf_to_gguf.py, which is not installed. Get it with\n"
    "  git clone --depth 1 https://github.com/ggml-org/llama.cpp\n"
    "  pip install -r llama.cpp/requirements/requirements-convert_hf_to_gguf.txt\n"
    f"then pass --converter llama.cpp/convert_hf_to_gguf.py, set {CONVERTER_ENV}, or put the script on PATH. "
    "The merged safetensors model was written anyway; Ollama can also import it directly (FROM <folder>)."
)


class ExportError(RuntimeError):
    """An export that cannot be done; the message says what to install or change."""


def merge_version(version_dir: Path, manifest: VersionManifest, output: Path, settings: TrainSettings) -> Path:
    """Write ``version_dir`` as a standalone model (adapter merged into its base) to ``output``."""
    from peft import PeftModel

    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = load_tokenizer(str(version_dir), trust_remote_code=settings.trust_remote_code)
    if is_adapter(version_dir):
        base = manifest.lineage.get("base_model")
        if not base:
            raise ExportError(f"{manifest.version} is an adapter but its manifest names no base model (lineage.base_model)")
        model = load_causal_lm(base, settings)
        if model.get_input_embeddings().num_embeddings != len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(model, str(version_dir), is_trainable=False).merge_and_unload()
    else:
        model = load_causal_lm(str(version_dir), settings)
    model.to("cpu")
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    for extra in ("README.md", MANIFEST):
        if (version_dir / extra).is_file():
            shutil.copyfile(version_dir / extra, staging / extra)
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)
    return output


def find_converter(explicit: Path | None = None) -> Path | None:
    """llama.cpp's converter: the explicit path, $GGUF_CONVERTER, or a script on PATH."""
    candidates: list[str | None] = [str(explicit) if explicit else None, os.environ.get(CONVERTER_ENV)]
    candidates += [shutil.which(name) for name in CONVERTER_NAMES]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    if explicit is not None:
        raise ExportError(f"--converter {explicit} does not exist")
    return None


def convert_to_gguf(merged: Path, destination: Path, converter: Path, *, outtype: str = "f16") -> Path:
    """Run llama.cpp's converter on a merged model folder; the GGUF file lands at ``destination``."""
    if outtype not in GGUF_OUTTYPES:
        raise ExportError(f"GGUF type {outtype!r} is not one of {', '.join(GGUF_OUTTYPES)}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial")
    command = [sys.executable, str(converter), str(merged), "--outfile", str(partial), "--outtype", outtype]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        hint = ""
        if "pre-tokenizer was not recognized" in tail:
            hint = (
                "\nllama.cpp does not know this tokenizer (it recognises the tokenizers of the base models it supports; "
                "the built-in tiny model's tokenizer is Fragua's own). The merged safetensors model is still usable."
            )
        raise ExportError(f"{converter} failed (exit {result.returncode}) converting {merged}:\n{tail}{hint}")
    partial.rename(destination)
    return destination
