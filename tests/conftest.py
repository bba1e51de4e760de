"""Fixtures that start real servers: Redis, PostgreSQL, the simulated Messages API, Celery workers.

A missing server binary is a test failure with the reason, never a skip.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import forkserver
from tests.helpers import API_KEY, wait_for_log, wait_until, write_policy
from tierguard.config import Settings, get_settings
from tierguard.sim.models import Scenario
from tierguard.sim.server import SimServer
from tierguard.sim.servers import PostgresServer, RedisServer, ServerUnavailable
from tierguard.store.db import make_engine, upgrade


def _memory_tmp() -> None:
    """Temporary files (SQLite databases, logs, PostgreSQL's data folder) in /dev/shm when it has
    room, so a test's fsyncs cost nothing; a TMPDIR the caller set wins. Subprocesses inherit it."""
    if "TMPDIR" in os.environ or not os.access("/dev/shm", os.W_OK):
        return
    free = os.statvfs("/dev/shm")
    if free.f_bavail * free.f_frsize < 2 << 30:
        return
    folder = "/dev/shm/tierguard-tests"
    os.makedirs(folder, mode=0o755, exist_ok=True)
    os.environ["TMPDIR"] = folder
    tempfile.tempdir = None


_memory_tmp()


# One Redis and one PostgreSQL for the whole run: with pytest-xdist the controller starts them and
# every worker process gets its own Redis database (and each test its own PostgreSQL database).
_SHARED: dict[str, object] = {}


def _shared_servers() -> dict[str, object]:
    if not _SHARED:
        for name, make in (("redis", RedisServer), ("postgres", PostgresServer)):
            try:
                _SHARED[name] = make().start()
            except (ServerUnavailable, RuntimeError) as e:
                _SHARED[name] = f"{type(e).__name__}: {e}"
    return _SHARED


_CORES: list = []  # every wrapper core this test process built (app/core.Core), oldest first


def _record_cores() -> None:
    from tierguard.app.core import Core

    if getattr(Core.__init__, "_recorded", False):
        return
    built, close = Core.__init__, Core.close

    def recorded(self, *args, **kwargs):
        built(self, *args, **kwargs)
        _CORES.append(self)

    def closed(self):
        if self in _CORES:
            _CORES.remove(self)
        close(self)

    recorded._recorded = True  # type: ignore[attr-defined]
    Core.__init__, Core.close = recorded, closed


@pytest.fixture(autouse=True)
def _close_left_clients() -> Iterator[None]:
    """Close the wrapped clients a test left open. One left open keeps refreshing its routes, and a
    route refresh that finds Redis empty (flushed for the next test) copies its own database's
    routes into it: the next test in this process would route by the last one's database."""
    _record_cores()
    start = len(_CORES)
    yield
    left, _CORES[start:] = _CORES[start:], []
    for core in left:  # (those it closed itself are no longer listed)
        try:
            core.close()
        except Exception:  # closed already, or its Redis stopped by the test: nothing to keep
            pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test that ran workers (or gateways) shows the end of each one's log with its failure,
    and each running gateway's ``/tierguard/stats`` (a flake seen only in CI can then be read from
    CI's output)."""
    outcome = yield
    report = outcome.get_result()
    stack = getattr(item, "funcargs", {}).get("stack")
    if report.when == "call" and report.failed and stack is not None:
        for i, text in enumerate(_logs_or_reason(stack)):
            report.sections.append((f"worker-{i}.log (last 60 lines)", "\n".join(text.splitlines()[-60:])))
        for name, text in stack.gateway_reports():
            report.sections.append((name, text))


def _logs_or_reason(stack) -> list[str]:
    try:
        return stack.logs()
    except OSError as err:
        return [f"(logs unreadable: {err})"]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    shared = _shared_servers()
    node.workerinput["tg_redis"] = getattr(shared["redis"], "port", shared["redis"])
    pg = shared["postgres"]
    node.workerinput["tg_postgres"] = [pg.port, str(pg.datadir)] if isinstance(pg, PostgresServer) else pg


def pytest_unconfigure(config: pytest.Config) -> None:
    for server in _SHARED.values():
        if isinstance(server, RedisServer):
            server.stop()
        elif isinstance(server, PostgresServer):
            server.destroy()
    _SHARED.clear()


def _given(config: pytest.Config, key: str) -> object:
    value = getattr(config, "workerinput", {}).get(key)
    if isinstance(value, str):
        raise ServerUnavailable(value)
    return value


@pytest.fixture(scope="session")
def redis_server(pytestconfig: pytest.Config) -> Iterator[RedisServer]:
    port = _given(pytestconfig, "tg_redis")
    if port:
        worker = pytestconfig.workerinput["workerid"]  # type: ignore[attr-defined]
        yield RedisServer(port=port, db=1 + int(worker.removeprefix("gw")))
        return
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(pytestconfig: pytest.Config) -> Iterator[PostgresServer]:
    given = _given(pytestconfig, "tg_postgres")
    if given:
        yield PostgresServer.attached(*given)
        return
    server = PostgresServer().start()
    yield server
    server.destroy()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, for a test that stops and restarts it."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    import redis

    redis.Redis.from_url(redis_server.url).flushdb()
    return redis_server.url


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database("t_" + uuid.uuid4().hex[:12])


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tierguard.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tierguard.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def engine(db_url: str):
    e = make_engine(db_url)
    upgrade(e)
    yield e
    e.dispose()


@pytest.fixture
def simulator() -> Iterator[Callable[..., SimServer]]:
    servers: list[SimServer] = []

    def start(**scenario: object) -> SimServer:
        server = SimServer(Scenario.from_dict(scenario)).start_background()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch):
    """Environment for one pipeline: policy file, DB URL, Redis URL, SDK pointed at a server."""

    class Stack:
        def __init__(self) -> None:
            self.workers: list[subprocess.Popen] = []
            self.others: list[subprocess.Popen] = []
            self.gateways: list[str] = []  # base URLs
            self.env: dict[str, str] = {}

        def configure(self, *, policy: dict, database_url: str, base_url: str,
                      **settings: object) -> Settings:
            policy_path = write_policy(tmp_path / "tierguard.yaml", policy)
            self.env = {"TIERGUARD_POLICY": str(policy_path), "TIERGUARD_DATABASE_URL": database_url,
                        "TIERGUARD_REDIS_URL": redis_url, "ANTHROPIC_BASE_URL": base_url,
                        "ANTHROPIC_API_KEY": API_KEY, "TIERGUARD_ROUTE_TTL": "0.2",
                        "TIERGUARD_METRICS_PORT": "0"}  # parallel tests: no fixed port unless asked
            self.env.update({f"TIERGUARD_{k.upper()}": str(v) for k, v in settings.items()})
            for k, v in self.env.items():
                monkeypatch.setenv(k, v)
            upgrade(make_engine(database_url))
            return get_settings()

        def start_worker(self, concurrency: int = 16, pool: str = "threads",
                         wait: bool = True) -> subprocess.Popen:
            proc = forkserver.start(["worker", "-c", str(concurrency), "--pool", pool],
                                    env={**os.environ, **self.env}, cwd=tmp_path,
                                    log=tmp_path / f"worker-{len(self.workers)}.log")
            self.workers.append(proc)
            if wait:
                wait_for_log(tmp_path / f"worker-{len(self.workers) - 1}.log", "ready.", proc, timeout=90)
            return proc

        def start_beat(self) -> subprocess.Popen:
            log = tmp_path / "beat.log"
            proc = forkserver.start(["beat"], env={**os.environ, **self.env}, cwd=tmp_path, log=log)
            self.others.append(proc)
            wait_for_log(log, "beat: Starting", proc, timeout=90)
            return proc

        def env_for_cli(self) -> dict[str, str]:
            return {**os.environ, **self.env}

        def start_gateway(self, **env: str) -> str:
            """A ``tierguard gateway`` process (uvicorn) on a free port; its base URL once ready."""
            import httpx2

            from tierguard.sim.servers import free_port

            port = free_port()
            log = tmp_path / f"gateway-{port}.log"
            proc = forkserver.start(["gateway", "--port", str(port)], env={**os.environ, **self.env, **env},
                                    cwd=tmp_path, log=log)
            self.others.append(proc)
            base = f"http://127.0.0.1:{port}"

            def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"gateway exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
                try:
                    return httpx2.get(base + "/readyz", timeout=1).status_code == 200
                except httpx2.TransportError:
                    return False

            wait_until(ready, 90, "the gateway to be ready")
            self.gateways.append(base)
            return base

        def logs(self) -> list[str]:
            return [(tmp_path / f"worker-{i}.log").read_text() for i in range(len(self.workers))]

        def gateway_reports(self) -> list[tuple[str, str]]:
            """(title, text): each gateway's stats (while it runs) and the end of its log."""
            import httpx2

            out = []
            for base in self.gateways:
                port = base.rsplit(":", 1)[1]
                try:
                    out.append((f"gateway {port} /tierguard/stats",
                                httpx2.get(base + "/tierguard/stats", timeout=2).text))
                except Exception as err:
                    out.append((f"gateway {port} /tierguard/stats", f"(unread: {err!r})"))
                try:
                    text = (tmp_path / f"gateway-{port}.log").read_text()
                except OSError as err:
                    text = f"(unreadable: {err})"
                out.append((f"gateway-{port}.log (last 40 lines)", "\n".join(text.splitlines()[-40:])))
            return out

        def wait_ready(self) -> None:
            for i, proc in enumerate(self.workers):
                wait_for_log(tmp_path / f"worker-{i}.log", "ready.", proc, timeout=90)

        def stop_workers(self) -> None:
            for p in self.workers + self.others:
                if p.poll() is None:
                    p.terminate()
            for p in self.workers + self.others:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    s = Stack()
    yield s
    s.stop_workers()


@pytest.fixture
def receiver():
    from tests.receiver import Receiver

    r = Receiver().start()
    yield r
    r.stop()


SLOW = ("takes_a_minute", "takes_minutes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that needs a minute or more says so in its name (``…_takes_a_minute``) and starts
    first, one per parallel process, so that it runs beside the rest instead of at the end."""
    slow = [item for item in items if any(word in item.name for word in SLOW)]
    if not slow:
        return
    rest = [item for item in items if item not in slow]
    processes = int(getattr(config, "workerinput", {}).get("workercount", 1))
    share = max(1, len(items) // processes)
    for k, item in enumerate(slow):
        rest.insert(min(len(rest), (k % processes) * share + k // processes), item)
    items[:] = rest
