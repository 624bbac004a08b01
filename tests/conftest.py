"""Shared fixtures. ``postgres_server``/``database_url``: a throwaway PostgreSQL server.

The server is started once per session with ``initdb``/``pg_ctl`` in a temporary folder, listens
on a free localhost port (password login, like a real deployment) and is stopped at teardown.
Each test that asks for ``database_url`` gets a fresh, empty database on it. Under ``CI=true``
missing binaries fail the tests instead of skipping them. ``fp32_cpu``: encoding without bf16
autocast, whatever the CPU.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

INSTALL_POSTGRES = ("PostgreSQL server binaries (initdb, pg_ctl) are not on PATH: install "
                    "PostgreSQL 15 (Debian/Ubuntu: apt-get install postgresql-15, then add "
                    "/usr/lib/postgresql/15/bin to PATH) to run the database tests")
_PASSWORD = "t0p'secret"
_databases = itertools.count()


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str

    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        from urllib.parse import quote

        secret = quote(self.password if password is None else password, safe="")
        return f"postgresql://{self.user}:{secret}@{self.host}:{self.port}/{dbname}"


def _server_user() -> dict:
    """``subprocess`` arguments running the server as a non-root user (initdb refuses root)."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    pytest.fail("running as root without a 'postgres' or 'nobody' user to run PostgreSQL as")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this test session; stopped and deleted afterwards."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {INSTALL_POSTGRES}")
        pytest.skip(INSTALL_POSTGRES)
    as_user = _server_user()
    base = Path(tempfile.mkdtemp(prefix="cetd-pg-"))  # short: unix socket paths are limited
    pwfile = base / "pwfile"
    pwfile.write_text(_PASSWORD + "\n")
    if as_user:
        for path in (base, pwfile):
            os.chown(path, as_user["user"], as_user["group"])
    run = dict(cwd=base, capture_output=True, text=True, timeout=120,
               env={**os.environ, "LC_ALL": "C"}, **as_user)
    data, log, port = base / "data", base / "server.log", _free_port()
    try:
        subprocess.run([initdb, "-D", str(data), "-U", "postgres", "-E", "UTF8", "--locale=C",
                        "--auth-local=trust", "--auth-host=scram-sha-256",
                        f"--pwfile={pwfile}", "--no-sync"], check=True, **run)
        subprocess.run([pg_ctl, "-D", str(data), "-l", str(log), "-w", "-o",
                        f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off",
                        "start"], check=True, **run)
    except subprocess.CalledProcessError as err:
        server_log = log.read_text() if log.exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {err.stderr}\n{server_log}")
    try:
        yield PostgresServer("127.0.0.1", port, "postgres", _PASSWORD)
    finally:
        subprocess.run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], **run)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """URL (with password) of a new, empty database, dropped after the test."""
    import psycopg
    from psycopg import sql

    name = f"cetd_test_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield postgres_server.url(name)
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def fp32_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Encode in fp32 as on a CPU without native bf16, for tests that compare our embeddings
    with sentence-transformers' (fp32) to 1e-5; bf16 autocast would otherwise turn on by
    itself on a CPU that has it."""
    from cetd_phase1.modeling import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
