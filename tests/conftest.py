from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# xdist workers start with COLUMNS=80 and LINES=24 set; rich would fix the CLI console at that
# size when fragua.cli is imported, and a test's CliRunner(env={"COLUMNS": ...}) would not count.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)
# Prefect's home (profiles, local database) stays out of the user's HOME during tests; the
# process that makes it (the xdist controller, or the only process) removes it at the end.
_CLIENT_HOME = None if "PREFECT_HOME" in os.environ else tempfile.mkdtemp(prefix="fragua-prefect-home-")
if _CLIENT_HOME:
    os.environ["PREFECT_HOME"] = _CLIENT_HOME

from fragua.settings import Settings, resource_path  # noqa: E402

from .pgdatabase import fresh_database  # noqa: E402  (reads FRAGUA_TEST_POSTGRES_URL before any test clears FRAGUA_*)

EXAMPLES = resource_path("resources", "examples")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
    """No FRAGUA_* or W&B variables from the outer shell leak into a test."""
    for name in list(os.environ):
        if name.startswith("FRAGUA_") or name.startswith("WANDB_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The embedded tiny base model, built once per test session."""
    from fragua.models.tiny import build_tiny_base
    from fragua.settings import TinyBaseSettings

    return build_tiny_base(tmp_path_factory.mktemp("base") / "fragua-tiny", TinyBaseSettings())


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_base):
    from fragua.models.loading import load_tokenizer

    return load_tokenizer(str(tiny_base))


def _expected_seconds(item: pytest.Item) -> float:
    slow = item.get_closest_marker("slow")
    if slow is not None:
        return slow.kwargs.get("seconds", 30)
    return 10 if item.get_closest_marker("e2e") else 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest tests first (``slow``, by the seconds they took on a busy 2-core machine, then
    ``e2e``): the xdist workers take tests one at a time in this order, so the run ends on
    short tests instead of one worker finishing a long one alone."""
    items.sort(key=lambda item: -_expected_seconds(item))


def pytest_configure(config: pytest.Config) -> None:
    """One real Prefect server for the whole run, launched before anything imports prefect;
    every process of the run (xdist workers, the subprocesses tests start) inherits its
    PREFECT_API_URL, so no flow run starts a temporary server of its own."""
    if hasattr(config, "workerinput"):  # an xdist worker: the controller's server is in its environment
        return
    from .prefect_server import PrefectServer

    if getattr(config.option, "numprocesses", None):
        # Tests run side by side on few cores: one thread each for torch's kernels, as for the
        # processes they start, instead of every process spinning a thread per core.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    server = PrefectServer(Path(tempfile.mkdtemp(prefix="fragua-test-prefect-server-")))
    server.launch()
    config.stash[_PREFECT_SERVER] = server
    os.environ["PREFECT_API_URL"] = server.api_url


def pytest_collection_finish(session: pytest.Session) -> None:
    """The server migrates its database while the tests are collected; they run once it
    answers. A run none of whose tests uses the server (``prefect_api``) stops it instead."""
    from .prefect_server import wait_until_healthy

    config = session.config
    server = config.stash.get(_PREFECT_SERVER, None)
    if server is not None and getattr(config.option, "numprocesses", None):
        return  # the xdist controller: its workers collect and run the tests
    if not any("prefect_api" in item.fixturenames for item in session.items):
        if server is not None:
            server.stop()
        return
    try:
        wait_until_healthy(os.environ["PREFECT_API_URL"], alive=lambda: server is None or server.process.poll() is None)
    except RuntimeError as exc:
        log = server.log_file.read_text()[-4000:] if server else ""
        raise pytest.UsageError(f"{exc}\n{log}") from None


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_PREFECT_SERVER, None)
    if server is not None:
        server.stop()
        shutil.rmtree(server.home, ignore_errors=True)
    if _CLIENT_HOME:
        shutil.rmtree(_CLIENT_HOME, ignore_errors=True)


_PREFECT_SERVER = pytest.StashKey["PrefectServer"]()


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """The suite's Prefect API URL, for tests whose flows (or subprocesses) report to it."""
    from prefect.settings import PREFECT_API_URL

    url = os.environ["PREFECT_API_URL"]
    assert PREFECT_API_URL.value() == url, "prefect was imported before the suite's server was configured"
    return url


def make_settings(work_dir: Path, **overrides) -> Settings:
    overrides.setdefault("tracking", {"mode": "disabled"})
    return Settings(work_dir=work_dir, **overrides)


# S3 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (random free port), for the whole session; stopped at the end."""
    from .s3server import S3TestServer

    server = S3TestServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_settings(s3_server, monkeypatch):
    """RegistrySettings for a fresh bucket on the test server; faults cleared before and after."""
    import uuid

    import boto3

    from fragua.settings import RegistrySettings

    from .s3server import ACCESS_KEY, REGION, SECRET_KEY

    # Nothing from the outer shell's AWS configuration may reach the client.
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    if not s3_server.running:
        s3_server.start()
    s3_server.clear_faults()
    bucket = f"fragua-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3", endpoint_url=s3_server.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
    ).create_bucket(Bucket=bucket)
    yield RegistrySettings(
        backend="s3", bucket=bucket, prefix="team/registry", endpoint_url=s3_server.endpoint, region=REGION,
        access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, max_attempts=2,
        # small parts so that test files of a few MB go multipart
        multipart_threshold_mb=5, multipart_chunk_mb=5,
    )
    s3_server.clear_faults()
    if not s3_server.running:
        s3_server.start()


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """The same contract, two backends: a local directory and an S3 bucket on the test server."""
    from fragua.storage.store import LocalStore

    if request.param == "local":
        return LocalStore(tmp_path / "store")
    from fragua.storage.s3 import S3Store

    return S3Store.from_settings(request.getfixturevalue("s3_settings"))


# The intake queue's database ---------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def queue_url(request, tmp_path):
    """The intake queue's database, one variant per backend: SQLite in the test's folder, and a
    PostgreSQL database created for this test alone and dropped after it (tests/pgdatabase.py)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue' / 'intake.db'}"
        return
    with fresh_database() as url:
        yield url


# A validated run -------------------------------------------------------------------------

QUICK = {
    "tracking": {"mode": "disabled"},
    "train": {"max_steps": 2},
    "validate": {"max_examples": 4, "min_score": 0.0, "require_beat_base": False, "max_new_tokens": 8},
}


@pytest.fixture(scope="session")
def validated_work(tmp_path_factory) -> tuple[Path, str]:
    """A work dir holding the tiny base, a dataset and a trained, validated run."""
    work = tmp_path_factory.mktemp("validated") / "work"
    from fragua.jobs.data import ingest_sources
    from fragua.jobs.train import train_model
    from fragua.jobs.validate import evaluate_model, record_validation

    settings = Settings(work_dir=work, **QUICK)
    dataset = ingest_sources(settings)
    trained = train_model(settings, dataset.id)
    candidate = evaluate_model(settings, dataset.id, trained.adapter_dir, name="candidate")
    record_validation(settings, trained.run_id, dataset.id, candidate, None, None, None)
    return work, trained.run_id


@pytest.fixture(scope="session")
def published_work(tmp_path_factory) -> tuple[Path, list[str]]:
    """A work dir whose registry holds two published adapter versions of the tiny base
    (different training seeds), production pointing at the first."""
    work = tmp_path_factory.mktemp("published") / "work"
    from fragua.jobs.data import ingest_sources
    from fragua.jobs.registry import promote_version, publish_run
    from fragua.jobs.train import train_model
    from fragua.jobs.validate import evaluate_model, record_validation

    dataset = ingest_sources(Settings(work_dir=work, **QUICK))
    versions = []
    for seed in (1, 2):
        settings = Settings(work_dir=work, **{**QUICK, "train": {**QUICK["train"], "seed": seed}})
        trained = train_model(settings, dataset.id)
        candidate = evaluate_model(settings, dataset.id, trained.adapter_dir, name="candidate")
        record_validation(settings, trained.run_id, dataset.id, candidate, None, None, None)
        versions.append(publish_run(settings, trained.run_id).version)
    promote_version(Settings(work_dir=work, **QUICK), versions[0], expected_production=None, reason="first deploy")
    return work, versions
