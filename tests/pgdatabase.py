"""A PostgreSQL database of its own for one test, on the server the suite is pointed at.

``FRAGUA_TEST_POSTGRES_URL`` names the server: a SQLAlchemy URL to a database whose user may
create databases (default: ``postgresql+psycopg://root@127.0.0.1:5432/postgres``, the server CI
and the development machine run). Empty (``FRAGUA_TEST_POSTGRES_URL=``) skips the PostgreSQL
variants; a server that cannot be reached fails them, so a missing server is never mistaken
for a passing suite.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

VARIABLE = "FRAGUA_TEST_POSTGRES_URL"
DEFAULT_URL = "postgresql+psycopg://root@127.0.0.1:5432/postgres"
# Read once, at import: every test clears FRAGUA_* variables from its environment.
ADMIN_URL = os.environ.get(VARIABLE, DEFAULT_URL)


@contextmanager
def fresh_database(admin_url: str = ADMIN_URL) -> Iterator[str]:
    """Create ``fragua_test_<random>``, yield its URL, and drop it (closing what still uses it):
    parallel xdist workers and the processes tests start never share a table."""
    from fragua.intake.queue import dispose_engine

    if not admin_url:
        pytest.skip(f"{VARIABLE} is empty: the PostgreSQL variants are disabled")
    name = f"fragua_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"connect_timeout": 10})
    shown = make_url(admin_url).render_as_string(hide_password=True)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        reason = " ".join(str(exc.orig).split())  # one line: libpq's message spans two
        pytest.fail(
            f"PostgreSQL at {shown} cannot create a test database ({reason}). Start the server, point "
            f"{VARIABLE} at one (a URL whose user may create databases), or set {VARIABLE}= to skip the PostgreSQL variants.",
            pytrace=False,
        )
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        dispose_engine(url)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
