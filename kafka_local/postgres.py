"""PostgreSQL for the tests and the benchmarks: the server POSTGRES_URL names, else a throwaway one from Debian's
`postgresql` binaries (initdb + pg_ctl in a temporary directory, on a free port)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from kafka_local.broker import free_port

SERVER_USER = "postgres"  # PostgreSQL refuses to run as root; as root we run it as this system user
MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin: install Debian's "
    "`postgresql` package (apt-get install postgresql; `make test` does it), or set POSTGRES_URL to a server "
    "where the user may CREATE DATABASE"
)


class PostgresBinariesMissingError(RuntimeError):
    """initdb/pg_ctl are not installed."""


def find_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb and pg_ctl."""
    candidates = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
    )
    for bin_dir in reversed(candidates):
        if (bin_dir / "pg_ctl").exists():
            return bin_dir
    raise PostgresBinariesMissingError(MISSING)


def with_database(url: str, dbname: str) -> str:
    """`url` pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


class LocalPostgres:
    """initdb + pg_ctl in a temporary directory, trust auth, listening on 127.0.0.1:<free port>.

    `durable=False` (the tests') turns fsync, synchronous commit and full-page writes off; `durable=True` keeps
    PostgreSQL's defaults (a commit waits for its WAL flush), as a production server runs, for benchmarks.
    """

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.bin_dir = find_bin_dir()
        self.as_root = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="sink-pg-"))
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "socket"
        self.log_file = self.base / "server.log"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        # As root, the child becomes SERVER_USER (runuser); otherwise it runs as the current user.
        prefix = ["runuser", "-u", SERVER_USER, "--"] if self.as_root else []
        done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            output = f"{done.stdout}{done.stderr}{log}"
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{output}")

    def start(self) -> None:
        self.socket_dir.mkdir()
        if self.as_root:
            shutil.chown(self.base, SERVER_USER, SERVER_USER)
            shutil.chown(self.socket_dir, SERVER_USER, SERVER_USER)
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} -c max_connections=200"
        if not self.durable:
            # Durability settings off: a test server loses nothing worth keeping, and starts and writes faster.
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )

    def stop(self) -> None:
        try:
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


@contextmanager
def provide_postgres(*, durable: bool = False) -> Iterator[str]:
    """The URL of a server where we may create databases: POSTGRES_URL, else a throwaway local one
    (`durable`: see `LocalPostgres`; a POSTGRES_URL server keeps its own settings)."""
    if url := os.environ.get("POSTGRES_URL"):
        yield url
        return
    server = LocalPostgres(durable=durable)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on that server (dropped afterwards); yields its URL."""
    name = f"sink_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            # FORCE: a test that failed half-way may still hold connections; they must not keep the database.
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
