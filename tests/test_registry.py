"""The registry contract: every test runs against the local directory and the S3 server (``store``)."""

from __future__ import annotations

import copy
import json
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from fragua.registry.retention import cleanup
from fragua.registry.versions import AliasConflict, Registry, RegistryError, sha256_file, size_label
from fragua.storage.s3 import S3Store
from fragua.storage.store import LocalStore, ObjectStore


def registry(store: ObjectStore) -> Registry:
    return Registry(store, "acme")


def reopen(store: ObjectStore) -> tuple[str, str, str, str]:
    """A picklable description of ``store``: a fresh client in another thread or process."""
    if isinstance(store, LocalStore):
        return ("local", str(store.root), "", "")
    credentials = store.client._request_signer._credentials
    return ("s3", store.client.meta.endpoint_url, store.bucket, f"{store.prefix}|{credentials.access_key}|{credentials.secret_key}")


def settings_for(spec: tuple[str, str, str, str], work: Path):
    from fragua.settings import Settings

    kind, where, bucket, rest = spec
    if kind == "local":
        return Settings(work_dir=work, registry={"model_name": "acme", "root": where})
    prefix, key, secret = rest.split("|")
    return Settings(
        work_dir=work,
        registry={"model_name": "acme", "backend": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": where,
                  "region": "us-east-1", "access_key_id": key, "secret_access_key": secret},
    )


def opened(spec: tuple[str, str, str, str]) -> Registry:
    kind, where, bucket, rest = spec
    if kind == "local":
        return registry(LocalStore(Path(where)))
    import boto3

    prefix, key, secret = rest.split("|")
    client = boto3.client("s3", endpoint_url=where, region_name="us-east-1", aws_access_key_id=key, aws_secret_access_key=secret)
    return registry(S3Store(client, bucket, prefix))


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


def test_versions_are_numbered_and_manifest_checksums_match(store, tmp_path):
    reg = registry(store)
    v1 = published(reg, tmp_path, "one")
    v2 = published(reg, tmp_path, "two")
    assert (v1, v2) == ("acme-tiny-v1", "acme-tiny-v2")
    manifest = reg.manifest(v2)
    assert manifest.number == 2 and manifest.size == "tiny" and manifest.metrics == {"f1": 0.5}
    for relative, entry in manifest.files.items():
        copy = tmp_path / "check" / relative
        store.get_file(f"{reg.version_prefix(v2)}/{relative}", copy)
        assert sha256_file(copy) == entry.sha256 and copy.stat().st_size == entry.size
    assert [m.version for m in reg.versions()] == [v1, v2]


def test_a_version_without_manifest_is_invisible(store, tmp_path):
    reg = registry(store)
    v1 = published(reg, tmp_path, "one")
    half = reg.allocate("tiny")
    reg.store.put_file(f"{reg.version_prefix(half)}/adapter_model.safetensors", tmp_path / "src-one" / "adapter_model.safetensors")
    assert [m.version for m in reg.versions()] == [v1]
    with pytest.raises(RegistryError, match=f"no version '{half}'"):
        reg.manifest(half)
    with pytest.raises(RegistryError):
        reg.set_alias("production", half, reason="test")


def test_versions_are_immutable(store, tmp_path):
    reg = registry(store)
    v1 = published(reg, tmp_path, "one")
    with pytest.raises(RegistryError, match="immutable"):
        reg.publish(v1, version_files(tmp_path / "again", "again"), {})


def test_publishing_again_after_a_lost_response_returns_the_same_version(store, tmp_path):
    reg = registry(store)
    files = version_files(tmp_path / "src", "same")
    version = reg.allocate("tiny")
    first = reg.publish(version, files, {})
    assert reg.publish(version, files, {}) == first  # a retried task whose first attempt had landed


def test_pickle_weights_are_refused(store, tmp_path):
    reg = registry(store)
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(RegistryError, match="pickle"):
        reg.publish(reg.allocate("tiny"), {"pytorch_model.bin": tmp_path / "pytorch_model.bin"}, {})


def test_fetch_verifies_checksums(store, tmp_path):
    reg = registry(store)
    v1 = published(reg, tmp_path, "one")
    local = reg.fetch(v1, tmp_path / "cache")
    assert (local / "sub" / "notes.txt").read_text() == "one"
    assert json.loads((local / "manifest.json").read_text())["version"] == v1
    store.put_bytes(f"{reg.version_prefix(v1)}/tokenizer.json", b"tampered")
    with pytest.raises(RegistryError, match="checksum"):
        reg.fetch(v1, tmp_path / "cache2")
    assert not (tmp_path / "cache2" / v1).exists()


def _fetch(spec: tuple[str, str, str, str], version: str, cache: str) -> str:
    return str(opened(spec).fetch(version, Path(cache)))


def test_concurrent_fetches_of_one_version_into_one_cache_all_get_a_verified_copy(store, tmp_path):
    reg = registry(store)
    files = version_files(tmp_path / "src", "big")
    files["adapter_model.safetensors"].write_bytes(b"w" * (8 << 20))  # a download long enough to overlap
    version = reg.allocate("tiny")
    reg.publish(version, files, {})
    with ProcessPoolExecutor(4) as pool:
        for attempt in range(3):
            cache = tmp_path / f"cache{attempt}"
            paths = list(pool.map(_fetch, [reopen(store)] * 4, [version] * 4, [str(cache)] * 4))
            assert set(paths) == {str(cache / version)}
            assert reg._verified(cache / version, reg.manifest(version))
            assert [p.name for p in cache.iterdir()] == [version]  # no staging folder left behind


def _allocate(spec: tuple[str, str, str, str]) -> str:
    return opened(spec).allocate("tiny")


def test_20_concurrent_allocations_give_20_distinct_versions(store):
    spec = reopen(store)
    with ThreadPoolExecutor(max_workers=20) as pool:
        threaded = list(pool.map(_allocate, [spec] * 20))
    with ProcessPoolExecutor(max_workers=4) as pool:
        processes = list(pool.map(_allocate, [spec] * 20))
    assert len(set(threaded)) == 20
    everything = threaded + processes
    assert sorted(int(v.rsplit("v", 1)[1]) for v in everything) == list(range(1, 41))


def test_promote_moves_production_and_previous_and_records_events(store, tmp_path):
    reg = registry(store)
    v1, v2 = published(reg, tmp_path, "one"), published(reg, tmp_path, "two")
    reg.promote(v1, reason="first")
    state = reg.promote(v2, reason="second", actor="tester")
    assert (state.version, state.previous) == (v2, v1)
    assert reg.alias("previous")[0].version == v1
    events = [(e.alias, e.from_version, e.to_version) for e in reg.history()]
    assert events == [("production", None, v1), ("production", v1, v2), ("previous", None, v1)]


def test_rollback_returns_to_previous_or_a_named_version(store, tmp_path):
    reg = registry(store)
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


def test_alias_compare_and_swap_lets_exactly_one_writer_win(store, tmp_path):
    reg = registry(store)
    v1, v2, v3 = (published(reg, tmp_path, p) for p in ("one", "two", "three"))
    reg.promote(v1, reason="a")
    seen = reg.alias("production")
    reg.promote(v2, reason="first writer", expected=seen)
    with pytest.raises(AliasConflict, match="moved while this change was prepared"):
        reg.promote(v3, reason="second writer", expected=seen)
    assert reg.alias("production")[0].version == v2


def test_concurrent_promotes_one_wins(store, tmp_path):
    reg = registry(store)
    versions = [published(reg, tmp_path, f"p{i}") for i in range(8)]
    reg.promote(versions[0], reason="start")
    seen = reg.alias("production")
    spec = reopen(store)

    def attempt(version: str) -> str:
        try:
            opened(spec).promote(version, reason="race", expected=seen)
            return "won"
        except AliasConflict as exc:
            assert "moved while this change was prepared" in str(exc) and "nothing was changed" in str(exc)
            return "lost"

    with ThreadPoolExecutor(max_workers=7) as pool:
        outcomes = list(pool.map(attempt, versions[1:]))
    assert outcomes.count("won") == 1 and outcomes.count("lost") == 6
    winner = versions[1:][outcomes.index("won")]
    assert reg.alias("production")[0].version == winner
    assert [e.to_version for e in reg.history() if e.alias == "production"] == [versions[0], winner]


def test_two_concurrent_deploy_promotions_exactly_one_wins(store, tmp_path):
    """What two deploy flows validated against the same production do at the same moment."""
    from fragua.jobs.registry import promote_version

    reg = registry(store)
    base, left, right = (published(reg, tmp_path, p) for p in ("base", "left", "right"))
    reg.promote(base, reason="start")
    settings = settings_for(reopen(store), tmp_path / "work")
    barrier = threading.Barrier(2)

    def deploy(version: str) -> str:
        barrier.wait()
        try:
            promote_version(settings, version, expected_production=base, reason="race")
            return "won"
        except RegistryError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(deploy, [left, right]))
    assert outcomes.count("won") == 1
    message = next(o for o in outcomes if o != "won")
    assert "validate again" in message or "moved while this change was prepared" in message
    assert reg.alias("production")[0].version in (left, right)


@pytest.mark.parametrize("name", ["../evil", "a/b", "/abs", "bad\x00name", "x..y", "", "sp ace", "tab\tname", "dot/../dot"])
def test_path_tricks_in_names_are_rejected(store, tmp_path, name):
    reg = registry(store)
    with pytest.raises(ValueError):
        reg.manifest(name)
    with pytest.raises(ValueError):
        reg.alias(name)
    with pytest.raises(ValueError):
        reg.allocate(name)
    with pytest.raises(ValueError):
        Registry(store, name)
    assert store.list_keys("") == []  # nothing was written anywhere


def test_revert_restores_production_and_previous(store, tmp_path):
    reg = registry(store)
    v1, v2, v3 = (published(reg, tmp_path, p) for p in ("one", "two", "three"))
    reg.promote(v1, reason="a")
    reg.promote(v2, reason="b")
    moved = reg.promote(v3, reason="deploy")
    assert reg.revert(moved, previous_before=v1, reason="smoke check failed")
    assert reg.alias("production")[0].version == v2 and reg.alias("previous")[0].version == v1
    assert reg.history()[-1].reason == "smoke check failed"


def test_revert_of_a_first_deploy_removes_production(store, tmp_path):
    reg = registry(store)
    v1 = published(reg, tmp_path, "one")
    moved = reg.promote(v1, reason="first")
    assert reg.revert(moved, previous_before=None, reason="smoke check failed")
    assert reg.alias("production") == (None, None)
    assert [(e.from_version, e.to_version) for e in reg.history()] == [(None, v1), (v1, None)]


def test_revert_leaves_a_later_move_alone(store, tmp_path):
    reg = registry(store)
    v1, v2, v3 = (published(reg, tmp_path, p) for p in ("one", "two", "three"))
    reg.promote(v1, reason="a")
    moved = reg.promote(v2, reason="deploy")
    reg.promote(v3, reason="someone else")
    assert not reg.revert(moved, previous_before=None, reason="smoke check failed")
    assert reg.alias("production")[0].version == v3


def test_confirm_checks_alias_and_every_file(store, tmp_path):
    reg = registry(store)
    v1, v2 = published(reg, tmp_path, "one"), published(reg, tmp_path, "two")
    reg.promote(v1, reason="a")
    reg.confirm("production", v1)
    with pytest.raises(RegistryError, match="points to"):
        reg.confirm("production", v2)
    store.delete(f"{reg.version_prefix(v1)}/sub/notes.txt")
    with pytest.raises(RegistryError, match="lost sub/notes.txt"):
        reg.confirm("production", v1)


# gc and retention --------------------------------------------------------------------------


def unfinished(reg: Registry, tmp_path: Path) -> str:
    version = reg.allocate("tiny")
    reg.store.put_file(f"{reg.version_prefix(version)}/adapter_model.safetensors", version_files(tmp_path / "half", "half")["adapter_model.safetensors"])
    return version


def test_gc_removes_unfinished_versions_and_never_reuses_their_number(store, tmp_path):
    reg = registry(store)
    v1 = published(reg, tmp_path, "one")
    half = unfinished(reg, tmp_path)
    recent = cleanup(reg, keep_last=None, grace=timedelta(hours=1))
    assert recent.unfinished == [] and recent.too_recent == [half]
    assert store.list_keys(f"{reg.version_prefix(half)}/")  # an upload may still be running: left alone
    planned = cleanup(reg, keep_last=None, grace=timedelta(0), dry_run=True)
    assert planned.unfinished == [half] and store.list_keys(f"{reg.version_prefix(half)}/")
    report = cleanup(reg, keep_last=None, grace=timedelta(0))
    assert report.unfinished == [half] and report.deleted_objects == 1
    assert store.list_keys(f"{reg.version_prefix(half)}/") == []
    assert [m.version for m in reg.versions()] == [v1]
    assert reg.allocate("tiny") == "acme-tiny-v3"


def test_retention_keeps_the_last_k_and_every_aliased_version(store, tmp_path):
    reg = registry(store)
    versions = [published(reg, tmp_path, f"r{i}") for i in range(6)]
    reg.promote(versions[0], reason="old production")
    reg.promote(versions[1], reason="production")  # previous -> versions[0]
    reg.set_alias("staging", versions[2], reason="a custom alias")
    report = cleanup(reg, keep_last=2, grace=timedelta(0))
    assert report.expired == [versions[3]]
    assert report.kept_for_alias == versions[:3]
    assert [m.version for m in reg.versions()] == [versions[0], versions[1], versions[2], versions[4], versions[5]]
    assert store.list_keys(f"{reg.version_prefix(versions[3])}/") == []
    assert reg.rollback().version == versions[0]  # instant, the aliased version is all there
    reg.fetch(versions[0], tmp_path / "cache")


def test_an_alias_cannot_land_on_a_version_retention_deleted(store, tmp_path):
    reg = registry(store)
    v1, v2 = published(reg, tmp_path, "one"), published(reg, tmp_path, "two")
    reg.promote(v2, reason="a")
    manifest_key = f"{reg.version_prefix(v1)}/manifest.json"

    class RetentionStrikesBetweenCheckAndWrite(type(store)):
        def put_bytes(self, key, data, **conditions):
            if key.endswith("aliases/production.json"):
                self.delete(manifest_key)  # what retention does first, just after our check
            return super().put_bytes(key, data, **conditions)

    racing = copy.copy(store)
    racing.__class__ = RetentionStrikesBetweenCheckAndWrite
    with pytest.raises(RegistryError, match="deleted .* while alias 'production' moved"):
        registry(racing).set_alias("production", v1, reason="late")
    assert reg.alias("production")[0].version == v2
    with pytest.raises(RegistryError, match="no version"):
        reg.set_alias("production", v1, reason="later")


def test_gc_aborts_multipart_uploads_left_by_a_killed_process(s3_settings):
    from fragua.storage.s3 import open_s3_store

    store = open_s3_store(s3_settings)
    reg = registry(store)
    version = reg.allocate("tiny")
    key = f"{store.prefix}/{reg.version_prefix(version)}/adapter_model.safetensors"
    store.client.create_multipart_upload(Bucket=store.bucket, Key=key)
    # (moto reports every upload as initiated in 2010, so the grace period is not exercised here)
    assert cleanup(reg, keep_last=None, grace=timedelta(0)).aborted_uploads == 1
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


@pytest.mark.parametrize("parameters, label", [(700_000, "tiny"), (494_000_000, "490m"), (1_540_000_000, "1.5b"), (7_240_000_000, "7.2b"), (70_600_000_000, "71b"), (1_000_000_000, "1b")])
def test_size_label(parameters, label):
    assert size_label(parameters) == label
