"""A throwaway Postgres cluster (initdb + pg_ctl) on a free loopback port.

For the test suite and the ledger benchmark, where no DATABASE_URL is given: it needs
only the Postgres server binaries on PATH. initdb refuses to run as root, so as root the
cluster belongs to the `postgres` (or `nobody`) system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class PgClusterError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def available() -> str | None:
    """None if a cluster can be made here, else why not."""
    for tool in ("initdb", "pg_ctl", "createdb"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH (install the Postgres server)"
    if os.geteuid() == 0 and _run_as_user() is None:
        return "running as root and neither a 'postgres' nor a 'nobody' user exists"
    return None


def _run_as_user() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


class PgCluster:
    def __init__(self, *, fsync: bool = False) -> None:
        reason = available()
        if reason:
            raise PgClusterError(reason)
        self.fsync = fsync
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="genai-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.user = _run_as_user() if os.geteuid() == 0 else None
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._sh(
            ["initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "-N"]
        )
        self.running = False

    def _sh(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        if self.user is not None:
            args = ["runuser", "-u", self.user.pw_name, "--", *args]
        done = subprocess.run(args, capture_output=True, text=True, cwd=self.root, timeout=120)
        if check and done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise PgClusterError(f"{' '.join(args)} failed: {done.stderr.strip()}\n{log}")
        return done

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        if not self.fsync:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._sh(["pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
                  "-o", options])  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._sh(["pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data)], check=False)
        self.running = False

    def create_database(self, name: str) -> str:
        self._sh(["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name])
        return self.url(name)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def destroy(self) -> None:
        if self.running:
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
