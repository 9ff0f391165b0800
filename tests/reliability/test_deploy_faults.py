"""A deploy to the S3 server while the server fails under it, watched by a second client.

tests/test_deploy_s3.py proves the outcomes (retried to success, alias restored, nothing
left after a server that stays down). This test adds what a reader sees *during* the deploy:
at every moment, each visible version is complete and ``production`` points at one.
"""

from __future__ import annotations

import threading
import time

import pytest

from fragua.registry import open_registry
from fragua.registry.versions import PRODUCTION
from fragua.storage.store import NotFound, StoreError

from ..test_deploy_s3 import deploy_settings, revalidate_against_production  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e


class RegistryWatcher(threading.Thread):
    """Polls the registry through its own client and records anything a reader must never see."""

    def __init__(self, settings) -> None:
        super().__init__(daemon=True)
        # One attempt per request: a reader that does not retry sees an outage the moment it starts.
        self.settings = settings.model_copy(update={"registry": settings.registry.model_copy(update={"max_attempts": 1})})
        self.stopped = threading.Event()
        self.saw_outage = threading.Event()
        self.violations: list[str] = []
        self.looks = 0
        self.unreachable = 0
        self.seen: set[tuple[str | None, tuple[str, ...]]] = set()

    def look(self) -> None:
        registry = open_registry(self.settings)
        visible = registry.versions()
        for manifest in visible:
            prefix = registry.version_prefix(manifest.version)
            for relative, entry in manifest.files.items():
                try:
                    size = registry.store.size(f"{prefix}/{relative}")
                except NotFound:
                    self.violations.append(f"{manifest.version} is visible without {relative}")
                    continue
                if size != entry.size:
                    self.violations.append(f"{manifest.version}: {relative} is {size} bytes, the manifest says {entry.size}")
        state, _ = registry.alias(PRODUCTION)
        names = tuple(m.version for m in visible)
        if state is not None and state.version not in names:
            self.violations.append(f"production points at {state.version}, which is not a complete version ({names})")
        self.seen.add((state.version if state else None, names))
        self.looks += 1

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.look()
            except StoreError:
                self.unreachable += 1  # the server is down: a reader gets an error, never a partial version
                self.saw_outage.set()
            time.sleep(0.02)


def test_a_reader_never_sees_a_partial_version_while_uploads_fail_and_the_server_restarts(prefect_api, deploy_settings, s3_server):  # noqa: F811
    from fragua.flows.deploy import deploy_flow

    settings, run_id = deploy_settings
    assert deploy_flow(settings, run_id).production == "fragua-tiny-v1"
    revalidate_against_production(settings, run_id)

    uploads = s3_server.fail("PUT", "/versions/fragua-tiny-v2/", times=3, status=503)
    manifests = s3_server.fail("PUT", "/versions/fragua-tiny-v2/manifest.json", times=2, status=500)
    watcher = RegistryWatcher(settings)

    def restart_once_a_reader_found_it_down() -> None:
        # however busy the machine, the outage is seen; the deploy's upload retries meanwhile
        watcher.saw_outage.wait(timeout=30)
        s3_server.start()

    s3_server.on_stop = lambda: threading.Thread(target=restart_once_a_reader_found_it_down, daemon=True).start()
    stop = s3_server.stop_on("PUT", "/versions/fragua-tiny-v2/", after=5)  # past the 5xx ones: a few files in, then down
    watcher.start()
    try:
        outcome = deploy_flow(settings, run_id)
    finally:
        s3_server.on_stop = None
        watcher.stopped.set()
        watcher.join(timeout=30)
    assert len(uploads.hits) == 3 and len(manifests.hits) == 2 and stop.hits and s3_server.running
    assert outcome.promoted and outcome.version == "fragua-tiny-v2"  # retried into the same version

    assert watcher.violations == []
    assert watcher.looks > 10 and watcher.unreachable > 0, (watcher.looks, watcher.unreachable)
    # What readers saw, in order of appearance: v1 alone in production, then v2 complete, then promoted.
    assert ("fragua-tiny-v1", ("fragua-tiny-v1",)) in watcher.seen
    assert all(production in names for production, names in watcher.seen)
    registry = open_registry(settings)
    assert [m.version for m in registry.versions()] == ["fragua-tiny-v1", "fragua-tiny-v2"]
    assert [key for key in registry.store.list_keys("") if "/allocations/" in key] == [
        "models/fragua/allocations/v1.json", "models/fragua/allocations/v2.json"]
    open_registry(settings).confirm(PRODUCTION, "fragua-tiny-v2")
    open_registry(settings).fetch("fragua-tiny-v2")  # every checksum matches
