"""PostgreSQL for the tests: a fresh, empty database per use, on whatever server is at hand.

Order of preference:

1. a server answering on 127.0.0.1:5432 with trust authentication (user ``postgres`` or
   ``root``): a uniquely named database is created there and dropped afterwards;
2. otherwise a throwaway cluster made from the system's PostgreSQL binaries (``initdb`` and
   ``pg_ctl``, run as the ``postgres`` user when we are root, since initdb refuses root),
   listening on a free port of 127.0.0.1 and deleted afterwards;
3. otherwise the test is skipped, or fails when ``CI=true`` (CI must not silently skip).

``postgres_server()`` (session scope) and ``fresh_database(server)`` (per test) are separate so
a suite starts at most one cluster; ``postgres_url()`` combines them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2 import sql

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5432
CANDIDATE_USERS: tuple[str, ...] = ("postgres", "root")
DATABASE_PREFIX = "daguerre_test_"


class PostgresUnavailable(RuntimeError):
    """No server answers and no throwaway cluster could be started."""


@dataclass(frozen=True)
class PostgresServer:
    """A server we may create databases on (trust authentication, superuser)."""

    host: str
    port: int
    user: str
    private: bool  # True: a throwaway cluster of ours

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{database}"

    def admin_connection(self) -> psycopg2.extensions.connection:
        """An autocommit connection to the ``postgres`` maintenance database."""
        conn = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", connect_timeout=5
        )
        conn.autocommit = True
        return conn


def _answers(host: str, port: int, user: str) -> bool:
    try:
        conn = psycopg2.connect(
            host=host, port=port, user=user, dbname="postgres", connect_timeout=2
        )
    except psycopg2.Error:
        return False
    conn.close()
    return True


def find_running_server(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> PostgresServer | None:
    """The server on ``host:port`` if it lets one of the candidate users in without a password."""
    try:
        with socket.create_connection((host, port), timeout=1):
            pass
    except OSError:
        return None
    for user in CANDIDATE_USERS:
        if _answers(host, port, user):
            return PostgresServer(host=host, port=port, user=user, private=False)
    return None


def _pg_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin with initdb and pg_ctl, else the ones on PATH."""

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True)
    for initdb in candidates:
        bin_dir = Path(initdb).parent
        if (bin_dir / "pg_ctl").exists():
            return bin_dir
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    return None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _as_cluster_owner(cmd: list[str]) -> list[str]:
    """``cmd`` run as the ``postgres`` user when we are root (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *cmd]
    return ["su", "postgres", "-s", "/bin/sh", "-c", subprocess.list2cmdline(cmd)]


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    result = subprocess.run(_as_cluster_owner(cmd), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        detail = result.stderr.strip() or result.stdout.strip()
        if log is not None and log.exists():
            detail += "\n" + log.read_text(errors="replace")[-2000:]
        raise PostgresUnavailable(f"{what} failed ({result.returncode}): {detail}")


@contextmanager
def private_cluster(host: str = DEFAULT_HOST) -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL cluster on a free port; stop and delete it afterwards.

    Raises PostgresUnavailable when there are no binaries or they cannot be run.
    """
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable("no PostgreSQL server binaries (initdb, pg_ctl) found")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PostgresUnavailable("running as root and there is no 'postgres' user") from exc
    # As root, under /tmp: $TMPDIR may be a directory the postgres user cannot enter.
    parent = "/tmp" if os.geteuid() == 0 and os.path.isdir("/tmp") else None
    root = Path(tempfile.mkdtemp(prefix="daguerre-pg-", dir=parent))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    started = False
    try:
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            "initdb",
        )
        options = " ".join(
            [
                f"-c listen_addresses={host}",
                f"-c unix_socket_directories={root}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        )
        for _attempt in range(3):  # the free port may be taken between probe and bind
            port = _free_port(host)
            try:
                _run(
                    [
                        str(bin_dir / "pg_ctl"),
                        "-D",
                        str(data),
                        "-l",
                        str(log),
                        "-o",
                        f"-p {port} {options}",
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ],
                    "pg_ctl start",
                    log,
                )
            except PostgresUnavailable:
                if _attempt == 2:
                    raise
                continue
            started = True
            break
        server = PostgresServer(host=host, port=port, user="postgres", private=True)
        deadline = time.monotonic() + 30
        while not _answers(host, port, "postgres"):
            if time.monotonic() > deadline:
                raise PostgresUnavailable(f"the throwaway cluster on port {port} does not answer")
            time.sleep(0.1)
        yield server
    finally:
        if started:
            subprocess.run(
                _as_cluster_owner(
                    [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
                ),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


def _unavailable(reason: str) -> None:
    """Fail under CI (a silent skip would hide the PostgreSQL tests), else skip the test."""
    if os.environ.get("CI") == "true":
        raise PostgresUnavailable(reason)
    import pytest

    pytest.skip(f"PostgreSQL unavailable: {reason}")


@contextmanager
def postgres_server(*, force_private_cluster: bool = False) -> Iterator[PostgresServer]:
    """A server to make test databases on: the local one if it answers, else a throwaway one.

    ``force_private_cluster`` skips the local server (to test the fallback).
    """
    if not force_private_cluster:
        server = find_running_server()
        if server is not None:
            yield server
            return
    with ExitStack() as stack:
        try:
            server = stack.enter_context(private_cluster())
        except PostgresUnavailable as exc:
            _unavailable(str(exc))
            raise  # only under CI: _unavailable skips otherwise
        yield server


@contextmanager
def fresh_database(server: PostgresServer) -> Iterator[str]:
    """Create an empty uniquely named database on ``server``; yield its SQLAlchemy URL; drop it
    afterwards (after terminating whatever is still connected to it)."""
    name = f"{DATABASE_PREFIX}{uuid.uuid4().hex[:12]}"
    conn = server.admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    try:
        yield server.url(name)
    finally:
        conn = server.admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        finally:
            conn.close()


@contextmanager
def postgres_url(*, force_private_cluster: bool = False) -> Iterator[str]:
    """The SQLAlchemy URL (``postgresql+psycopg2://...``) of a fresh empty database, dropped
    (or its whole throwaway cluster removed) afterwards. Skips the calling test, or raises
    PostgresUnavailable under ``CI=true``, when no PostgreSQL can be had."""
    with (
        postgres_server(force_private_cluster=force_private_cluster) as server,
        fresh_database(server) as url,
    ):
        yield url
