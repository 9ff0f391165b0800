from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from fragua.registry import AliasConflict, Registry, RegistryError, sha256_file, size_label
from fragua.storage import LocalStore, PreconditionFailed, StoreError


def registry(root: Path) -> Registry:
    return Registry(LocalStore(root), "acme")


def version_files(folder: Path, payload: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(payload.encode() * 100)
    (folder / "tokenizer.json").write_text(json.dumps({"payload": payload}))
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "notes.txt").write_text(payload)
    return {"adapter_model.safetensors": folder / "adapter_model.safetensors", "tokenizer.json": folder / "tokenizer.json", "sub/notes.txt": folder / "sub" / "notes.txt"}


def published(reg: Registry, tmp_path: Path, payload: str) -> str:
    version = reg.allocate("tiny")
    reg.publish(version, version_files(tmp_path / f"src-{payload}", payload), {"metrics": {"f1": 0.5}})
    return version


def test_versions_are_numbered_and_manifest_checksums_match(tmp_path):
    reg = registry(tmp_path / "reg")
    v1 = published(reg, tmp_path, "one")
    v2 = published(reg, tmp_path, "two")
    assert (v1, v2) == ("acme-tiny-v1", "acme-tiny-v2")
    manifest = reg.manifest(v2)
    assert manifest.number == 2 and manifest.size == "tiny" and manifest.metrics == {"f1": 0.5}
    stored = tmp_path / "reg" / "models" / "acme" / "versions" / v2
    for relative, entry in manifest.files.items():
        assert sha256_file(stored / relative) == entry.sha256
        assert (stored / relative).stat().st_size == entry.size
    assert [m.version for m in reg.versions()] == [v1, v2]


def test_a_version_without_manifest_is_invisible(tmp_path):
    reg = registry(tmp_path / "reg")
    v1 = published(reg, tmp_path, "one")
    half = reg.allocate("tiny")
    reg.store.put_file(f"{reg.version_prefix(half)}/adapter_model.safetensors", tmp_path / "src-one" / "adapter_model.safetensors")
    assert [m.version for m in reg.versions()] == [v1]
    with pytest.raises(RegistryError, match=f"no version '{half}'"):
        reg.manifest(half)
    with pytest.raises(RegistryError):
        reg.set_alias("production", half, reason="test")


def test_versions_are_immutable(tmp_path):
    reg = registry(tmp_path / "reg")
    v1 = published(reg, tmp_path, "one")
    with pytest.raises(RegistryError, match="immutable"):
        reg.publish(v1, version_files(tmp_path / "again", "again"), {})


def test_fetch_verifies_checksums(tmp_path):
    reg = registry(tmp_path / "reg")
    v1 = published(reg, tmp_path, "one")
    local = reg.fetch(v1, tmp_path / "cache")
    assert (local / "sub" / "notes.txt").read_text() == "one"
    stored = tmp_path / "reg" / "models" / "acme" / "versions" / v1 / "tokenizer.json"
    stored.write_text("tampered")
    with pytest.raises(RegistryError, match="checksum"):
        reg.fetch(v1, tmp_path / "cache2")


def _allocate(root: str) -> str:
    return registry(Path(root)).allocate("tiny")


def test_concurrent_allocations_in_threads_and_processes_are_distinct(tmp_path):
    root = str(tmp_path / "reg")
    with ThreadPoolExecutor(max_workers=10) as pool:
        threaded = list(pool.map(_allocate, [root] * 20))
    with ProcessPoolExecutor(max_workers=4) as pool:
        processes = list(pool.map(_allocate, [root] * 20))
    everything = threaded + processes
    assert len(set(everything)) == 40
    assert sorted(int(v.rsplit("v", 1)[1]) for v in everything) == list(range(1, 41))


def test_promote_moves_production_and_previous_and_records_events(tmp_path):
    reg = registry(tmp_path / "reg")
    v1, v2 = published(reg, tmp_path, "one"), published(reg, tmp_path, "two")
    reg.promote(v1, reason="first")
    state = reg.promote(v2, reason="second", actor="tester")
    assert (state.version, state.previous) == (v2, v1)
    assert reg.alias("previous")[0].version == v1
    events = [(e.alias, e.from_version, e.to_version) for e in reg.history()]
    assert events == [("production", None, v1), ("production", v1, v2), ("previous", None, v1)]


def test_rollback_returns_to_previous_or_a_named_version(tmp_path):
    reg = registry(tmp_path / "reg")
    v1, v2, v3 = (published(reg, tmp_path, p) for p in ("one", "two", "three"))
    with pytest.raises(RegistryError, match="no production version"):
        reg.rollback()
    reg.promote(v1, reason="a")
    with pytest.raises(RegistryError, match="no previous version"):
        reg.rollback()
    reg.promote(v2, reason="b")
    reg.promote(v3, reason="c")
    assert reg.rollback().version == v2
    assert reg.alias("production")[0].version == v2 and reg.alias("previous")[0].version == v3
    assert reg.rollback(to=v1).version == v1
    with pytest.raises(RegistryError, match="already points"):
        reg.rollback(to=v1)


def test_alias_compare_and_swap_lets_exactly_one_writer_win(tmp_path):
    reg = registry(tmp_path / "reg")
    v1, v2, v3 = (published(reg, tmp_path, p) for p in ("one", "two", "three"))
    reg.promote(v1, reason="a")
    seen = reg.alias("production")
    reg.promote(v2, reason="first writer", expected=seen)
    with pytest.raises(AliasConflict, match="moved while this change was prepared"):
        reg.promote(v3, reason="second writer", expected=seen)
    assert reg.alias("production")[0].version == v2


def test_concurrent_promotes_one_wins(tmp_path):
    reg = registry(tmp_path / "reg")
    versions = [published(reg, tmp_path, f"p{i}") for i in range(8)]
    reg.promote(versions[0], reason="start")
    seen = reg.alias("production")

    def attempt(version: str) -> str:
        try:
            registry(tmp_path / "reg").promote(version, reason="race", expected=seen)
            return "won"
        except AliasConflict:
            return "lost"

    with ThreadPoolExecutor(max_workers=7) as pool:
        outcomes = list(pool.map(attempt, versions[1:]))
    assert outcomes.count("won") == 1 and outcomes.count("lost") == 6


@pytest.mark.parametrize("name", ["../evil", "a/b", "/abs", "bad\x00name", "x..y", "", "sp ace"])
def test_path_tricks_in_names_are_rejected(tmp_path, name):
    reg = registry(tmp_path / "reg")
    with pytest.raises(ValueError):
        reg.manifest(name)
    with pytest.raises(ValueError):
        reg.alias(name)
    with pytest.raises(ValueError):
        Registry(LocalStore(tmp_path), name)


def test_store_rejects_escaping_keys_and_honours_conditions(tmp_path):
    store = LocalStore(tmp_path)
    with pytest.raises(StoreError):
        store.put_bytes("../outside", b"x")
    etag = store.put_bytes("k.json", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put_bytes("k.json", b"2", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put_bytes("k.json", b"2", if_match="not-the-etag")
    store.put_bytes("k.json", b"2", if_match=etag)
    assert store.get_bytes("k.json")[0] == b"2"


@pytest.mark.parametrize("parameters, label", [(700_000, "tiny"), (494_000_000, "490m"), (1_540_000_000, "1.5b"), (7_240_000_000, "7.2b"), (70_600_000_000, "71b"), (1_000_000_000, "1b")])
def test_size_label(parameters, label):
    assert size_label(parameters) == label
