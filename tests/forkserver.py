"""Start ``tierguard`` processes (workers, beat, gateways, the CLI) forked from a warm parent.

Every such process imports the same third-party stack (the anthropic SDK's thousands of pydantic
models, SQLAlchemy, Celery, uvicorn…), which costs a second or two of CPU each; the suite starts
hundreds. One server per test process imports them once, single-threaded, then forks a child per
request: the child takes the test's environment, folder and log file and runs the real
``tierguard`` command line, as ``python -m tierguard`` would. tierguard's own modules are not
preloaded (some read the environment when imported), so each child imports them fresh.

:class:`Forked` stands in for :class:`subprocess.Popen` (``pid``, ``poll``, ``wait``,
``terminate``, ``kill``): the server is the children's parent and reaps them.
``TIERGUARD_TEST_FORKSERVER=0`` starts plain subprocesses instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRELOAD = ("anthropic", "pydantic", "sqlalchemy", "sqlmodel", "alembic", "celery", "celery.worker",
           "celery.bin.celery", "kombu.transport.redis", "redis", "httpx2", "psycopg", "numpy",
           "prometheus_client", "uvicorn", "starlette", "yaml", "rich", "typer", "fastjsonschema",
           "aiohttp", "click")
ENABLED = os.environ.get("TIERGUARD_TEST_FORKSERVER", "1") != "0"


def _child(request: dict) -> None:
    """In the forked child: become the requested process, then run the command line."""
    code = 1
    try:
        if request.get("session"):
            os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        if request.get("nofile"):
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, tuple(request["nofile"]))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        out = os.open(request["out"], flags, 0o644)
        os.dup2(out, 1)
        os.dup2(os.open(request["err"], flags, 0o644) if request.get("err") else out, 2)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        import random
        import tempfile

        random.seed()
        tempfile.tempdir = None
        sys.argv = ["tierguard", *request["args"]]
        import runpy

        runpy.run_module("tierguard", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    """The server's loop: one JSON request a line on stdin, one JSON answer a line on stdout."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    import numpy

    codes: dict[int, int] = {}
    reply = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                numpy.random.seed()
                _child(request)
            answer: dict = {"pid": pid}
        else:  # poll
            pid = request["pid"]
            if pid not in codes:
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:  # not ours, or gone
                    done, status = pid, 0
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
            answer = {"code": codes.get(pid)}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()


class _Server:
    """The client side: one server process per test process, started on first use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def ask(self, request: dict) -> dict:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                code = "from tests.forkserver import serve; serve()"
                self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                             env={**os.environ, "PYTHONPATH": _path()})
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the test fork server exited")
            return json.loads(line)


def _path() -> str:
    here = [str(ROOT / "worker"), str(ROOT)]
    given = os.environ.get("PYTHONPATH")
    return os.pathsep.join(here + ([given] if given else []))


SERVER = _Server()


class Forked:
    """A ``tierguard`` process forked by the server, used like :class:`subprocess.Popen`."""

    def __init__(self, args: list[str], pid: int) -> None:
        self.args, self.pid, self.returncode = args, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = SERVER.ask({"op": "poll", "pid": self.pid})["code"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(args: list[str], *, env: dict[str, str], cwd: Path, log: Path, session: bool = True,
          nofile: tuple[int, int] | None = None) -> Forked | subprocess.Popen:
    """``python -m tierguard ARGS`` with its output (stdout and stderr) appended to ``log``
    (``nofile``: its open-files limit, soft and hard)."""
    open(log, "w").close()  # there (and empty) once this returns, as with Popen's stdout
    if not ENABLED:
        def limit() -> None:
            if nofile:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        return subprocess.Popen([sys.executable, "-m", "tierguard", *args], env=env,
                                stdout=open(log, "a"), stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=session, preexec_fn=limit)
    answer = SERVER.ask({"op": "spawn", "args": args, "env": env, "cwd": str(cwd), "out": str(log),
                         "session": session, "nofile": nofile})
    return Forked(["tierguard", *args], answer["pid"])


def run(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """``python -m tierguard ARGS`` to completion, its stdout and stderr captured apart."""
    if not ENABLED:
        return subprocess.run([sys.executable, "-m", "tierguard", *args], capture_output=True,
                              text=True, env=env, cwd=cwd, timeout=timeout)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder) / "out", Path(folder) / "err"
        answer = SERVER.ask({"op": "spawn", "args": [str(a) for a in args], "env": env,
                             "cwd": str(cwd), "out": str(out), "err": str(err), "session": False})
        proc = Forked(["tierguard", *args], answer["pid"])
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        read = lambda p: p.read_text() if p.exists() else ""  # noqa: E731
        return subprocess.CompletedProcess(["tierguard", *args], code, read(out), read(err))
