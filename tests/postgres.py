"""A local PostgreSQL server for the tests that need one: Debian's postgresql package (.ci/run installs it),
its cluster started if it is stopped, a login role for the tests, and a fresh database for each test."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from filelock import FileLock

ROLE = PASSWORD = "mnist_lit_test"
HOST = "127.0.0.1"  # TCP with a password, as workers on other machines would reach it


def unavailable(reason: str):
    """Not installed or not startable: CI must have the server (.ci/run installs it), elsewhere a skip."""
    message = f"PostgreSQL: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def as_postgres(*command: str) -> subprocess.CompletedProcess:
    """`command` as the clusters' owner (the `postgres` user): only root can switch to it."""
    return subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True, text=True,
                          timeout=120)


def clusters() -> list[list[str]]:
    """pg_lsclusters' rows: version, name, port, status, ..."""
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def start_server() -> int:
    """The port of a running cluster: the first one listed, started (or created) if needed."""
    if shutil.which("pg_lsclusters") is None or not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
        unavailable("not installed (Debian: apt-get install postgresql)")
    if not clusters():
        version = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))[-1].parent.parent.name
        subprocess.run(["pg_createcluster", version, "main"], capture_output=True, text=True)
    rows = clusters()
    if not rows:
        unavailable("no cluster, and pg_createcluster <version> main failed (run it as root)")
    version, name, port, status = rows[0][:4]
    if status != "online":
        proc = subprocess.run(["pg_ctlcluster", version, name, "start"], capture_output=True, text=True)
        if proc.returncode != 0:
            unavailable(f"cluster {version}/{name} is stopped and did not start: {proc.stderr.strip()} "
                        f"(run: pg_ctlcluster {version} {name} start, as root)")
    return int(port)


def connect(port: int, dbname: str = "postgres"):
    import psycopg

    return psycopg.connect(host=HOST, port=port, user=ROLE, password=PASSWORD, dbname=dbname,
                           autocommit=True, connect_timeout=10)


def ensure_role(port: int) -> None:
    """The tests' login role, allowed to create databases (made once, as `postgres`)."""
    import psycopg

    try:
        connect(port).close()
        return
    except psycopg.OperationalError:
        pass
    sql = (f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
           f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'; END IF; END$$;")
    proc = as_postgres("psql", "-p", str(port), "-v", "ON_ERROR_STOP=1", "-qc", sql)
    if proc.returncode != 0:
        unavailable(f"cannot create the role {ROLE}: {proc.stderr.strip()} (as root, or create it: "
                    f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}')")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory) -> int:
    """The port of a running local PostgreSQL where the tests' role logs in; under pytest-xdist the
    workers start it one at a time."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install -e '.[postgres]'")
    base = tmp_path_factory.getbasetemp()
    lock = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "postgres.lock"
    with FileLock(lock):
        port = start_server()
        ensure_role(port)
    return port


@pytest.fixture
def postgres_url(postgres_server):
    """The SQLAlchemy URL of a database of the test's own, dropped after it."""
    name = f"mnist_lit_test_{uuid.uuid4().hex[:12]}"
    with connect(postgres_server) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://{ROLE}:{PASSWORD}@{HOST}:{postgres_server}/{name}"
    with connect(postgres_server) as conn:
        # FORCE: a sweep's leftover connections (its workers' pools) do not keep the database alive
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
