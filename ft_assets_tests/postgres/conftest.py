"""A real PostgreSQL server on 127.0.0.1 for the team-deployment tests (marker ``postgres``).

Debian's ``postgresql`` package provides the server; it is installed with apt-get when missing (root
only). PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user. The data
folder is a fresh temporary folder and the server listens on a free port; it stops after the module.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str

    def query(self, database: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode; its rows (none for DDL)."""
        import psycopg2

        connection = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=database
        )
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with contextlib.closing(connection), connection.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall()) if cursor.description else []

    def create_database(self, name: str) -> None:
        self.query("postgres", f'CREATE DATABASE "{name}"')


def _server_bin() -> Path:
    """PostgreSQL's server binaries, installing Debian's package when they are missing."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "postgresql"], check=True, env=env, capture_output=True
        )
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; "
            "install them with: apt-get install -y postgresql"
        )
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A running server with a superuser ``ft_assets`` (password authentication over TCP)."""
    bindir = _server_bin()
    as_server_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="ft-assets-pg-"))
    password = secrets.token_urlsafe(16)
    (root / "pwfile").write_text(password + "\n")
    if as_server_user:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pwfile", "postgres")
    data, log = root / "data", root / "server.log"
    server = Postgres("127.0.0.1", _free_port(), "ft_assets", password)

    def pg(*args: str) -> None:
        done = subprocess.run([*as_server_user, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            server_log = log.read_text() if log.is_file() else ""
            raise RuntimeError(f"{args[0]} failed:\n{done.stdout}\n{done.stderr}\n{server_log}")

    pg(str(bindir / "initdb"), "-D", str(data), "-U", server.user, f"--pwfile={root / 'pwfile'}",
       "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions")  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -p {server.port} -c unix_socket_directories={root} -c fsync=off"
    pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
    try:
        yield server
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
