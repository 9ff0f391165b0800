"""Exporting a registry version for use outside Fragua: a merged model, and GGUF for Ollama/llama.cpp.

The merged model is the adapter folded into its base (peft ``merge_and_unload``), saved as
safetensors with the tokenizer and the version's model card: loadable with plain
``AutoModelForCausalLM.from_pretrained``. GGUF needs llama.cpp's ``convert_hf_to_gguf.py``,
which is not on PyPI; it is used when found and named in a clear message when not.

An export never deletes what it did not write. Each export folder gets a marker
(``fragua-export.json``: the version, the kind, the files written); a folder that exists and is
not empty is refused unless ``overwrite``, and even then only a folder with that marker is
replaced, and only the files the marker lists: anything else the user put there is kept. The
export is written to a staging folder next to its destination and renamed into place, so a
crash leaves the previous export or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Literal

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
EXPORT_MARKER = "fragua-export.json"
OVERWRITE_HINT = "pass --overwrite to replace a previous Fragua export"


class ExportError(RuntimeError):
    """An export that cannot be done; the message says what to install or change."""


# Destinations: refuse what is not ours, stage, rename into place ------------------------------


def prepare_output(output: Path) -> Path:
    """The folder exports go into (created if missing); a file there is a clear error, not a traceback."""
    output = output.expanduser().resolve()
    existing = next(folder for folder in (output, *output.parents) if folder.exists())
    if not existing.is_dir():
        which = "" if existing == output else f": {existing}"
        raise ExportError(f"--output {output}{which} is a file, not a folder; name a folder to export into")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the export folder {output}: {exc.strerror or exc}") from exc
    return output


def read_marker(folder: Path) -> dict | None:
    """The marker of a previous Fragua export in ``folder``, or None when there is none (or it is not ours)."""
    try:
        marker = json.loads((folder / EXPORT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), list):
        return None
    return marker


def previous_export(target: Path, *, overwrite: bool) -> dict | None:
    """What ``target`` holds of a previous export (its marker), None when it is absent or empty;
    raises ExportError when it may not be replaced."""
    if not target.exists() and not target.is_symlink():
        return None
    if target.is_symlink() or not target.is_dir():
        raise ExportError(f"{target} exists and is not a folder Fragua exported; move it away or choose another --output")
    if not any(target.iterdir()):
        return None
    if not overwrite:
        raise ExportError(f"{target} already exists and is not empty; {OVERWRITE_HINT}")
    marker = read_marker(target)
    if marker is None:
        raise ExportError(
            f"{target} is not a Fragua export (it has no {EXPORT_MARKER}), so --overwrite does not replace it; "
            "move it away or choose another --output"
        )
    return marker


def check_file_destination(destination: Path, owner: dict | None, *, overwrite: bool) -> None:
    """A single-file output (the GGUF) may replace only a file an earlier export of ``owner``'s folder wrote."""
    if not destination.exists() and not destination.is_symlink():
        return
    if not overwrite:
        raise ExportError(f"{destination} already exists; {OVERWRITE_HINT}")
    if destination.is_symlink() or not destination.is_file() or owner is None or owner.get("gguf") != destination.name:
        raise ExportError(
            f"{destination} is not a GGUF file a Fragua export wrote (the {EXPORT_MARKER} of the merged folder beside it does not "
            "name it), so --overwrite does not replace it; move it away or choose another --output"
        )


def _is_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _relative_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not _is_folder(p))


def _user_entries(target: Path, marker: dict) -> list[Path]:
    """What the user added to a previous export: files it did not list, and empty folders."""
    listed = {*marker["files"], EXPORT_MARKER}
    entries = list(target.rglob("*"))
    return [p for p in entries if (not _is_folder(p) and str(p.relative_to(target)) not in listed) or (_is_folder(p) and not any(p.iterdir()))]


def _keep(entry: Path, source: Path, staging: Path) -> None:
    """Carry a user's file into the new export: a hard link (no copy, no window where it is missing), else a copy."""
    destination = staging / entry.relative_to(source)
    if _is_folder(entry):
        destination.mkdir(parents=True, exist_ok=True)
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(entry, destination, follow_symlinks=False)
    except OSError:
        shutil.copy2(entry, destination, follow_symlinks=False)


def write_marker(folder: Path, marker: dict) -> None:
    partial = folder / f".{EXPORT_MARKER}.partial"
    partial.write_text(json.dumps(marker, indent=2) + "\n")
    partial.replace(folder / EXPORT_MARKER)


@contextmanager
def export_folder(target: Path, version: str, kind: Literal["copy", "merged"], *, overwrite: bool) -> Iterator[Path]:
    """A staging folder to write the export of ``version`` into; when the body succeeds it becomes
    ``target`` with its marker, and the files of a previous export there are replaced while the user's stay.

    Refused before anything is written when ``target`` holds anything but a previous export (or,
    without ``overwrite``, anything at all)."""
    previous_export(target, overwrite=overwrite)
    prefix = f".{target.name}.partial-"
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    retired = target.with_name(f".{target.name}.previous-{staging.name.removeprefix(prefix)}")
    try:
        yield staging
        previous = previous_export(target, overwrite=overwrite)  # again: the folder may have changed while the export was written
        written = _relative_files(staging)
        kept = _user_entries(target, previous) if previous else []
        clashes = [str(e.relative_to(target)) for e in kept if str(e.relative_to(target)) in written]
        if clashes:
            raise ExportError(
                f"{target} holds files of yours that the new export would overwrite ({', '.join(clashes[:5])}); move them away and export again"
            )
        gguf = previous.get("gguf") if previous else None
        if gguf and not (target.parent / str(gguf)).is_file():
            gguf = None
        write_marker(staging, {
            "fragua_export": 1, "version": version, "kind": kind, "files": written, "gguf": gguf,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        for entry in kept:
            _keep(entry, target, staging)
        if previous is not None:
            target.rename(retired)
        elif target.is_dir():
            target.rmdir()  # empty: nothing of the user's is lost
        staging.rename(target)
        shutil.rmtree(retired, ignore_errors=True)  # only what the previous export listed: the user's files are in target now
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the export was committed


def record_gguf(folder: Path, gguf: Path) -> None:
    """Name the GGUF file in the merged folder's marker, so a later --overwrite may replace it."""
    marker = read_marker(folder)
    if marker is not None:
        write_marker(folder, {**marker, "gguf": gguf.name})


def copy_version(version_dir: Path, target: Path, version: str, *, overwrite: bool) -> Path:
    """The version's files as stored (already verified by the registry) under ``target``."""
    with export_folder(target, version, "copy", overwrite=overwrite) as staging:
        shutil.copytree(version_dir, staging, dirs_exist_ok=True)
    return target


# Merging and converting ------------------------------------------------------------------------


def merge_version(version_dir: Path, manifest: VersionManifest, target: Path, settings: TrainSettings, *, overwrite: bool = False) -> Path:
    """Write ``version_dir`` as a standalone model (adapter merged into its base) to ``target``."""
    with export_folder(target, manifest.version, "merged", overwrite=overwrite) as staging:
        _write_merged(version_dir, manifest, staging, settings)
    return target


def _write_merged(version_dir: Path, manifest: VersionManifest, staging: Path, settings: TrainSettings) -> None:
    from peft import PeftModel

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
