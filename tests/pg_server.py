"""A real PostgreSQL server for tests: a cluster made by ``initdb`` in a temporary directory, started
by ``pg_ctl`` on a free port of 127.0.0.1 (its unix socket in the same directory), stopped at the end.

PostgreSQL refuses to run as root: when the tests run as root the server runs as the ``postgres``
system user (the Debian package makes it). Without the binaries the tests that need them skip, saying
how to install them. Use the session fixture :func:`pg_server` (import it into a test module or a
conftest), then :meth:`PgServer.database` for a fresh, empty database per test.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The system user the server runs as when the tests run as root.
SERVER_USER = "postgres"
#: The superuser initdb makes (its password, for URLs that carry one: password authentication is on).
SUPERUSER, PASSWORD = "swml", "swml-test-password"


def _binaries() -> Path | None:
    """The directory of initdb and pg_ctl (the newest Debian version's), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One cluster; :meth:`stop` and :meth:`start` again keep its data and port (a server going away
    and coming back)."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin = bin_dir
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        pwfile = root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        self._own(root)
        self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}", "-A", "scram-sha-256",
            "--no-sync", "-E", "UTF8", "--locale=C",
        )  # fmt: skip

    def _own(self, path: Path) -> None:
        if self.as_root:
            shutil.chown(path, SERVER_USER, SERVER_USER)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "-t", "60", "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{SUPERUSER}{secret}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database; its URL (with the password)."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bin_dir = _binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; `make` installs it)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[dev]'")
    root = Path(tempfile.mkdtemp(prefix="swml-pg-"))
    server: PgServer | None = None
    try:
        server = PgServer(bin_dir, root)
        server.start()
        yield server
    finally:
        if server is not None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                server.stop()
        shutil.rmtree(root, ignore_errors=True)
