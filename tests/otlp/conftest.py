"""A real Arize Phoenix, started once per test session, that the OTLP tests export to and query.

Phoenix's dependencies do not belong in tierguard's venv, so it lives in a venv of its own,
``.venv-phoenix/`` at the repository's root (git-ignored; ``TIERGUARD_PHOENIX_VENV`` moves it),
created and filled from the package index on first use (about 50 s here; every package at the
version ``phoenix-constraints.txt`` pins) and reused after;
``phoenix serve`` then runs with a temporary working dir on free ports (ready in about 12 s).
A failed install or start is a test failure saying why, never a skip.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tierguard.sim.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
PHOENIX = "arize-phoenix>=20.20,<21"
PHOENIX_PINS = Path(__file__).with_name("phoenix-constraints.txt")  # its whole venv, pinned
INSTALL_TIMEOUT, START_TIMEOUT = 900, 120


def phoenix_venv() -> Path:
    """The venv with ``phoenix`` in it, created and filled on first use (one installer at a time)."""
    venv = Path(os.environ.get("TIERGUARD_PHOENIX_VENV") or ROOT / ".venv-phoenix")
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / ".venv-phoenix.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / "bin" / "phoenix").exists():
            return venv
        for step in ([sys.executable, "-m", "venv", "--clear", str(venv)],
                     [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                      "--disable-pip-version-check", "-c", str(PHOENIX_PINS), PHOENIX]):
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"installing Phoenix took over {INSTALL_TIMEOUT}s: {' '.join(step)}")
            if done.returncode != 0:
                pytest.fail(f"cannot install Phoenix into {venv} ({' '.join(step[-2:])}):\n"
                            f"{done.stderr[-3000:]}")
    return venv


class Phoenix:
    """A running ``phoenix serve`` and the few REST calls the tests make."""

    def __init__(self, venv: Path):
        self.venv, self.port, self.grpc_port = venv, free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tempfile.TemporaryDirectory(prefix="phoenix-")
        self.log_path = Path(self.dir.name) / "phoenix.log"
        self.proc: subprocess.Popen | None = None
        self.install_s = self.start_s = 0.0

    def start(self) -> Phoenix:
        env = {**os.environ, "PHOENIX_WORKING_DIR": self.dir.name, "PHOENIX_PORT": str(self.port),
               "PHOENIX_GRPC_PORT": str(self.grpc_port), "PHOENIX_HOST": "127.0.0.1",
               "PHOENIX_TELEMETRY_ENABLED": "false", "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false"}
        started = time.monotonic()
        self.proc = subprocess.Popen([str(self.venv / "bin" / "phoenix"), "serve"], env=env,
                                     stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT,
                                     cwd=self.dir.name, start_new_session=True)
        while not self._healthy():
            if self.proc.poll() is not None:
                pytest.fail(f"phoenix serve exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() - started > START_TIMEOUT:
                self.stop()
                pytest.fail(f"phoenix serve not ready after {START_TIMEOUT}s:\n{self.log()}")
            time.sleep(0.2)
        self.start_s = time.monotonic() - started
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        return self.log_path.read_text()[-3000:]

    def get(self, path: str, **query: Any) -> dict:
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)

    def spans(self, project: str) -> list[dict]:
        """Every span of ``project`` (none while Phoenix has not created it yet)."""
        out: list[dict] = []
        cursor = None
        while True:
            query: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            try:
                page = self.get(f"/v1/projects/{urllib.parse.quote(project)}/spans", **query)
            except urllib.error.HTTPError as err:
                if err.code == 404:
                    return []
                raise
            out += page["data"]
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def wait_spans(self, project: str, n: int, timeout: float = 30) -> list[dict]:
        """``project``'s spans once there are at least ``n`` (Phoenix inserts in the background)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.spans(project)
            if len(found) >= n or time.monotonic() > deadline:
                return found
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.dir.cleanup()


@pytest.fixture(scope="session")
def phoenix() -> Iterator[Phoenix]:
    began = time.monotonic()
    venv = phoenix_venv()
    server = Phoenix(venv)
    server.install_s = time.monotonic() - began
    server.start()
    sys.stderr.write(f"\n[phoenix] venv ready in {server.install_s:.1f}s, server in {server.start_s:.1f}s "
                     f"at {server.url}\n")
    yield server
    server.stop()


@pytest.fixture
def project() -> str:
    """A Phoenix project of this test's own (the exporter's service name)."""
    return "tg-" + uuid.uuid4().hex[:12]
