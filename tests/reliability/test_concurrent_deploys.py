"""Three ``fragua deploy`` processes for validated runs at the same moment, on one registry.

tests/test_registry.py races allocations (threads and processes) and alias moves on the
local directory and the S3 server; this runs the whole deploy command, publish, verify and
promote, in separate processes.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from fragua.registry import open_registry
from fragua.registry.versions import PRODUCTION
from fragua.settings import Settings

from ..conftest import QUICK
from .test_validate_failure import QUICK_FLAGS

pytestmark = pytest.mark.e2e


@pytest.mark.slow(seconds=50)
def test_concurrent_deploys_get_distinct_complete_versions_and_exactly_one_is_promoted(prefect_api, validated_work, fragua_cli, tmp_path):
    template, run_id = validated_work
    work = tmp_path / "work"
    shutil.copytree(template, work)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: fragua_cli(*QUICK_FLAGS, "deploy", "--run", run_id, work_dir=work), range(3)))
    for _, output in results:
        assert "Traceback" not in output, output[-3000:]
    winners = [output for code, output in results if code == 0]
    losers = [output for code, output in results if code != 0]
    assert len(winners) == 1, [output[-1500:] for _, output in results]
    for output in losers:
        (error,) = [line for line in output.splitlines() if line.startswith("error:")]
        assert "validate again" in error or "moved while this change was prepared" in error, error

    settings = Settings(work_dir=work, **QUICK)
    registry = open_registry(settings)
    published = [m.version for m in registry.versions()]
    assert published == ["fragua-tiny-v1", "fragua-tiny-v2", "fragua-tiny-v3"]  # one number each, none shared
    for version in published:
        open_registry(settings).fetch(version)  # each one complete: every checksum matches
    production = registry.alias(PRODUCTION)[0].version
    assert production in published and production in winners[0]
    assert [(e.alias, e.from_version, e.to_version) for e in registry.history()] == [(PRODUCTION, None, production)]
