"""Alias moves verify the target version's full checksums first; downloads and mirrors clean up after themselves.

Registry tests run against the local directory and the S3 server (``store``); the command-line
tests run the real ``fragua`` command in its own process against both.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from fragua.registry.downloads import STAGING_SUFFIX
from fragua.registry.retention import cleanup
from fragua.registry.versions import Registry, RegistryError, VersionDamaged
from fragua.storage.store import LocalStore, ObjectStore

from .test_cli import fragua_process
from .test_registry import published, registry

WEIGHTS = "adapter_model.safetensors"


def flip_a_byte(store: ObjectStore, key: str) -> None:
    """One byte changed, the size kept: what bit rot or a bad copy does."""
    if isinstance(store, LocalStore):
        with store.path(key).open("r+b") as handle:
            handle.seek(10)
            byte = handle.read(1)
            handle.seek(10)
            handle.write(bytes([byte[0] ^ 0xFF]))
        return
    data = bytearray(store.get_bytes(key)[0])
    data[10] ^= 0xFF
    store.put_bytes(key, bytes(data))


def settle(store: ObjectStore, keys: list[str]) -> None:
    """Wait until a later write to these objects is sure to change their fingerprint (local files
    written within the last couple of seconds are checked but not remembered)."""
    deadline = time.monotonic() + 120
    while not all(store.fingerprint(key).settled for key in keys):
        assert time.monotonic() < deadline, "the store's fingerprints never settled"
        time.sleep(0.2)


def test_every_alias_move_refuses_a_damaged_version_and_the_alias_stays(store, tmp_path):
    from fragua.jobs.registry import promote_version
    from fragua.settings import Settings

    from .test_registry import reopen, settings_for

    reg = registry(store)
    v1, v2, v3 = (published(reg, tmp_path, p) for p in ("one", "two", "three"))
    reg.promote(v1, reason="a")
    reg.promote(v2, reason="b")  # previous -> v1
    flip_a_byte(store, f"{reg.version_prefix(v1)}/{WEIGHTS}")
    flip_a_byte(store, f"{reg.version_prefix(v3)}/{WEIGHTS}")
    aliases, events = reg.aliases(), reg.history()

    attempts = {
        "rollback to previous": lambda: reg.rollback(),
        "rollback --to": lambda: reg.rollback(to=v1),
        "promote": lambda: reg.promote(v3, reason="c"),
        "another alias": lambda: reg.set_alias("staging", v1, reason="d"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(VersionDamaged) as refused:
            attempt()
        message = str(refused.value)
        assert "\n" not in message, what
        assert f"is damaged: {WEIGHTS} does not match its manifest checksum; no alias was moved" in message, what
    settings: Settings = settings_for(reopen(store), tmp_path / "work")
    with pytest.raises(VersionDamaged, match=f"version {v3} in .* is damaged"):  # what `deploy --version` calls
        promote_version(settings, v3, expected_production=v2, reason="manual deploy")
    assert reg.aliases() == aliases and reg.history() == events
    # A missing file is refused like a changed one.
    store.delete(f"{reg.version_prefix(v2)}/sub/notes.txt")
    with pytest.raises(VersionDamaged, match="sub/notes.txt is missing from the store"):
        reg.set_alias("staging", v2, reason="e")
    assert reg.aliases() == aliases


def test_verification_is_remembered_until_a_file_changes(store, tmp_path):
    reg = Registry(store, "acme", verification_cache=tmp_path / "verified")
    v1 = published(reg, tmp_path, "one")
    keys = [f"{reg.version_prefix(v1)}/{relative}" for relative in reg.manifest(v1).files]
    settle(store, keys)

    first = reg.verify(v1)
    assert (first.hashed, first.cached) == (3, 0)
    second = reg.verify(v1)
    assert (second.hashed, second.cached) == (0, 3)
    reg.promote(v1, reason="uses what verify found")
    # Another process sharing the work dir (a fresh registry on the same cache folder) reads nothing either.
    other = Registry(store, "acme", verification_cache=tmp_path / "verified")
    assert other.verify(v1).cached == 3

    flip_a_byte(store, keys[0])
    with pytest.raises(VersionDamaged, match=f"{WEIGHTS} does not match"):
        other.verify(v1)
    with pytest.raises(VersionDamaged):
        reg.set_alias("staging", v1, reason="the cache vouches for the old state, not this one")


def test_a_verified_download_spares_the_next_move_a_second_read(store, tmp_path):
    reg = Registry(store, "acme", cache_root=tmp_path / "cache", verification_cache=tmp_path / "verified")
    v1 = published(reg, tmp_path, "one")
    settle(store, [f"{reg.version_prefix(v1)}/{relative}" for relative in reg.manifest(v1).files])
    reg.fetch(v1)
    assert reg.verify(v1).hashed == 0


def test_big_files_are_hashed_as_a_stream(store, tmp_path):
    reg = registry(store)
    files = {WEIGHTS: tmp_path / WEIGHTS}
    files[WEIGHTS].write_bytes(os.urandom(5 << 20))
    version = reg.allocate("tiny")
    reg.publish(version, files, {})
    assert len(list(store.read_chunks(f"{reg.version_prefix(version)}/{WEIGHTS}"))) >= 5  # 1 MiB chunks, never the whole file
    assert reg.verify(version).hashed == 1


def test_previous_never_points_at_a_vanished_version(store, tmp_path):
    reg = registry(store)
    v1, v2, v3, v4 = (published(reg, tmp_path, p) for p in ("one", "two", "three", "four"))
    reg.promote(v1, reason="a")
    reg.promote(v2, reason="b")  # previous -> v1
    store.delete(f"{reg.version_prefix(v1)}/manifest.json")  # removed by hand behind the registry's back
    with pytest.raises(RegistryError) as refused:
        reg.rollback()
    message = str(refused.value)
    assert f"previous points to {v1}, which is no longer in" in message and "--to" in message
    assert f"published: {v3}, {v4}" in message and "\n" not in message
    assert reg.production().version == v2

    # Production's own version vanishes; the next promote cannot record it as previous: previous goes.
    store.delete(f"{reg.version_prefix(v2)}/manifest.json")
    reg.promote(v3, reason="c")
    assert reg.alias("previous") == (None, None)
    assert reg.history()[-1].alias == "previous" and reg.history()[-1].to_version is None
    with pytest.raises(RegistryError, match=f"no previous version to roll back to from {v3}; name one with --to"):
        reg.rollback()
    reg.promote(v4, reason="d")
    assert reg.rollback().version == v3


KILLED_FETCH = """
import sys, time
from pathlib import Path
from fragua.registry.downloads import staging_folder
with staging_folder(Path(sys.argv[1]), sys.argv[2]) as staging:
    (staging / "adapter_model.safetensors").write_bytes(b"the first half")
    print(staging.name, flush=True)
    time.sleep(600)
"""


def downloading(cache: Path, version: str) -> tuple[subprocess.Popen[str], str]:
    """A process in the middle of a download: its staging folder made, part of a file written."""
    process = subprocess.Popen([sys.executable, "-c", KILLED_FETCH, str(cache), version], stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def test_staging_folders_of_killed_downloads_are_removed_and_live_ones_kept(tmp_path):
    store = LocalStore(tmp_path / "store")
    cache = tmp_path / "cache"
    reg = Registry(store, "acme", cache_root=cache)
    version = published(reg, tmp_path, "one")
    killed, killed_folder = downloading(cache, version)
    live, live_folder = downloading(cache, version)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        old = cache / f".{version}.from-an-older-fragua{STAGING_SUFFIX}"  # no lock file: judged by age
        old.mkdir()
        os.utime(old, (time.time() - 7200, time.time() - 7200))
        recent = cache / f".{version}.just-made{STAGING_SUFFIX}"
        recent.mkdir()

        planned = cleanup(reg, keep_last=None, grace=timedelta(hours=1), dry_run=True)
        assert sorted(planned.stale_downloads) == sorted([killed_folder, old.name])
        assert (cache / killed_folder).is_dir()

        assert reg.fetch(version) == cache / version  # the next download clears what killed ones left
        assert not (cache / killed_folder).exists() and not old.exists()
        assert (cache / live_folder).is_dir() and recent.is_dir()  # a running download is never touched
    finally:
        live.kill()
        live.wait()
    report = cleanup(reg, keep_last=None, grace=timedelta(hours=1))  # `fragua registry gc`
    assert report.stale_downloads == [live_folder]
    assert sorted(p.name for p in cache.iterdir()) == sorted([recent.name, version])


# The real command, in its own process ----------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def cli_registry(request, tmp_path, monkeypatch) -> tuple[Path, dict[str, str], Registry]:
    """A work dir, the environment that points `fragua` at its registry, and that registry."""
    from fragua.registry import open_registry
    from fragua.settings import Settings

    from .s3server import SECRET_KEY

    work = tmp_path / "work"
    env = dict(os.environ)
    if request.param == "local":
        return work, env, open_registry(Settings(work_dir=work))
    s3 = request.getfixturevalue("s3_settings")
    registry_env = {"backend": "s3", "bucket": s3.bucket, "prefix": s3.prefix, "endpoint_url": s3.endpoint_url, "region": s3.region,
                    "access_key_id": s3.access_key_id, "secret_access_key": SECRET_KEY}
    env |= {f"FRAGUA_REGISTRY__{name.upper()}": value for name, value in registry_env.items()}
    return work, env, open_registry(Settings(work_dir=work, registry=registry_env))


@pytest.mark.slow(seconds=40)
def test_deploy_and_rollback_commands_refuse_a_damaged_version_in_one_line(prefect_api, cli_registry, tmp_path):
    work, env, reg = cli_registry
    v1, v2 = (published(reg, tmp_path, p) for p in ("one", "two"))
    reg.promote(v1, reason="a")
    reg.promote(v2, reason="b")
    flip_a_byte(reg.store, f"{reg.version_prefix(v1)}/{WEIGHTS}")
    events = reg.history()
    for command in (["deploy", "--version", v1], ["rollback", "--to", v1]):
        code, output = fragua_process("--work-dir", str(work), *command, env=env)
        assert code == 1, output
        assert "Traceback" not in output and "promoted" not in output
        said = " ".join(output.split())  # the console wraps long lines
        assert f"error: version {v1} in {reg.describe()} is damaged: {WEIGHTS} does not match its manifest checksum; no alias was moved" in said
    assert reg.production().version == v2 and reg.alias("previous")[0].version == v1
    assert reg.history() == events


@pytest.mark.parametrize("command", [["rollback", "--to", "../evil"], ["deploy", "--version", "a/b"], ["deploy", "--version", "x..y"]])
def test_path_tricks_in_version_names_are_one_line(tmp_path, command):
    code, output = fragua_process("--work-dir", str(tmp_path / "work"), *command, env=dict(os.environ))
    assert code == 2
    assert output.strip().splitlines() == [f"error: invalid version {command[-1]!r}: use letters, digits, '.', '_' and '-' only "
                                           "(no '/', '..', spaces or control characters), at most 100 characters"]
    assert not (tmp_path / "work").exists()


# Mirrored checkpoints ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_publishing_a_run_removes_its_mirrored_checkpoints_and_no_others(validated_work, tmp_path):
    from fragua.jobs.registry import publish_run
    from fragua.settings import Settings
    from fragua.storage import open_store
    from fragua.train.checkpoint_mirror import CheckpointMirror

    from .conftest import QUICK
    from .test_checkpoint_mirror import fake_checkpoint

    template, run_id = validated_work
    work = tmp_path / "work"
    shutil.copytree(template, work)
    settings = Settings(work_dir=work, **QUICK)
    store = open_store(settings)
    ours, other = CheckpointMirror(store, run_id, keep=2), CheckpointMirror(store, f"{run_id}0", keep=2)
    for mirror, folder in ((ours, tmp_path / "ours"), (other, tmp_path / "other")):
        mirror.upload(fake_checkpoint(folder, 2))
        mirror.upload(fake_checkpoint(folder, 4))
    others_before = store.list_keys(other.prefix)

    manifest = publish_run(settings, run_id)
    assert manifest.version == "fragua-tiny-v1"
    assert store.list_keys(ours.prefix) == [] and ours.complete_steps() == []
    assert store.list_keys(other.prefix) == others_before and other.complete_steps() == [2, 4]
