"""A PostgreSQL database of the test's own, on the machine's local server.

Every machine of this project (CI's too) runs PostgreSQL at 127.0.0.1:5432
with trust authentication. Tests create a database named
``ff_process_<random>`` and drop it afterwards; they never start a server.
``FLEETFLOW_TEST_POSTGRES`` overrides the server URL.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest

SERVER = os.environ.get("FLEETFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL does not answer at {SERVER} ({exc}); these tests need the local "
            "server (127.0.0.1:5432, trust auth) that every machine of this project runs",
            pytrace=False,
        )


@contextlib.contextmanager
def database(tag: str = "t") -> Iterator[str]:
    """Create a fresh database, yield its URL, drop it (and its connections) afterwards."""
    name = f"ff_process_{tag}_{secrets.token_hex(4)}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{SERVER}/{name}"
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
