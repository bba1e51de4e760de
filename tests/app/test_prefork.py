"""Fork safety: a wrapper built before ``fork`` works in every child (issue 23, item 3).

Preforking servers (gunicorn ``--preload``, uWSGI, Celery prefork) build the app, and so the
wrapped client, in the parent, then fork workers. Threads do not survive ``fork``: whatever the
wrapper runs in the background (route refresh, publisher, policy reload, traffic counters) must
start in the child that uses it. Here a real ``gunicorn --preload -w 3`` serves
tests/app/prefork_app.py, and a bare ``os.fork()`` pins the same behaviour without a server.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import anthropic
import pytest
import redis

import tierguard
from tests.app.test_client import queued_jobs
from tests.helpers import API_KEY, samples, wait_until, write_policy
from tierguard.app import publisher as publisher_module
from tierguard.config import get_settings
from tierguard.contract import keys
from tierguard.ops.actions import pin
from tierguard.policy import parse_policy
from tierguard.routing.routes import REDIS_KEY
from tierguard.sim.servers import free_port
from tierguard.store.db import make_engine

ROOT = Path(__file__).resolve().parents[2]
HAIKU, OPUS = "claude-haiku-4-5", "claude-opus-4-7"
LABELS = ["POSITIVE", "NEGATIVE", "NEUTRAL"]
SCENARIO = {"seed": 3, "categories": {"sentiment": {"kind": "label", "labels": LABELS,
                                                    "agreement": 1.0}}}
POLICY = {"defaults": {"sample_rate": 1.0},
          "categories": {"sentiment": {"candidate": HAIKU, "reference": OPUS, "sample_rate": 1.0,
                                       "start_on": "cheapest",
                                       "comparator": {"type": "label", "labels": LABELS}}}}
WORKERS = 3
TTL = 0.2  # the stack fixture's TIERGUARD_ROUTE_TTL
MARGIN = 2.0  # a flip reaches every child within TTL + MARGIN
HOLD = 0.15  # a worker answering one request stays busy this long: concurrent ones go elsewhere


# --- gunicorn ---------------------------------------------------------------------------------

def no_control_socket() -> list[str]:
    """Newer gunicorns open a control socket at one fixed path per user (~/.gunicorn/gunicorn.ctl):
    concurrent masters would take it from each other. This test has no use for it."""
    from gunicorn.config import Config

    return ["--no-control-socket"] if "control_socket_disable" in Config().settings else []


class Gunicorn:
    """``gunicorn --preload -w 3`` (sync workers) serving tests.app.prefork_app, in its own session."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.log = log
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--preload", "-w", str(WORKERS), "-k", "sync",
                 "-b", f"127.0.0.1:{self.port}", "--timeout", "30", "--graceful-timeout", "2",
                 *no_control_socket(), "tests.app.prefork_app:app"],
                env={**os.environ, **env, "PYTHONPATH": path}, cwd=ROOT, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()[-4000:]

    def get(self, path: str, **params: object) -> dict:
        """One request on a new connection (sync workers close every connection anyway)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request("GET", f"{path}?{urlencode(params)}", headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise AssertionError(f"GET {path} -> {resp.status} {body[:2000]!r}\n{self.output()}")
        return json.loads(body)

    def wait_ready(self, timeout: float = 30) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited ({self.proc.returncode}):\n{self.output()}")
            try:
                self.get("/ping")
                return self.output().count("Booting worker") >= WORKERS
            except (OSError, http.client.HTTPException):
                return False

        wait_until(up, timeout, "gunicorn and its workers")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:  # the whole group: a worker the master could not reap goes too
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def spread(server: Gunicorn, path: str, **params: object) -> list[dict]:
    """``WORKERS`` concurrent requests, each holding its worker a moment: usually one per worker."""
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda _: server.get(path, hold=HOLD, **params), range(WORKERS)))


def runs(models: list[str]) -> str:
    """``['a', 'a', 'b']`` as ``'a x2, b x1'``: what served, in order, short."""
    out: list[list] = []
    for m in models:
        if out and out[-1][0] == m:
            out[-1][1] += 1
        else:
            out.append([m, 1])
    return ", ".join(f"{m} x{n}" for m, n in out) or "nothing"


def test_gunicorn_preload_children_follow_a_flip_and_publish_every_sample(stack, simulator,
                                                                          sqlite_url, redis_url,
                                                                          tmp_path):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    assert stack.env["TIERGUARD_ROUTE_TTL"] == str(TTL)
    stack.start_worker(concurrency=4, wait=False)
    server = Gunicorn(stack.env, tmp_path / "gunicorn.log")
    try:
        server.wait_ready()
        stack.wait_ready()
        answers: list[tuple[float, int, str]] = []  # (when answered, pid, model), every /call

        def calls(**params: object) -> list[dict]:
            out = spread(server, "/call", category="sentiment", **params)
            answers.extend((time.monotonic(), a["pid"], a["model"]) for a in out)
            return out

        # Every worker answers, served by the route the policy starts on.
        deadline = time.monotonic() + 10
        while len({pid for _, pid, _ in answers}) < WORKERS and time.monotonic() < deadline:
            calls(text="before the flip")
        pids = {pid for _, pid, _ in answers}
        master = server.get("/ping")["built_in"]
        assert len(pids) == WORKERS and master not in pids, (answers, server.output())
        assert {m for _, _, m in answers} == {HAIKU}, answers

        # The flip, as `tierguard pin sentiment reference` makes it: the database, then Redis.
        r = redis.Redis.from_url(redis_url)
        pin(make_engine(sqlite_url), r, parse_policy(POLICY), "sentiment", "reference",
            reason="prefork test", actor="test")
        flipped = time.monotonic()
        assert r.hget(REDIS_KEY, "sentiment").decode().startswith(OPUS + "|")

        def after_flip(pid: int) -> list[str]:
            return [m for t, p, m in answers if p == pid and t > flipped]

        while (not all(OPUS in after_flip(pid) for pid in pids)
               and time.monotonic() < flipped + TTL + MARGIN):
            calls(text="after the flip")
        calls(text="settled")  # one more from each (usually): nothing goes back
        problems = []
        for pid in sorted(pids):
            served = after_flip(pid)
            followed = served[served.index(OPUS):] if OPUS in served else []
            if not followed or set(followed) != {OPUS}:
                problems.append(f"child {pid} after the flip (within {TTL + MARGIN:.1f}s): "
                                f"{runs(served)}")

        # Every child published every sampled call of its own ...
        made = Counter(pid for _, pid, _ in answers)
        flushed: dict[int, dict] = {}
        deadline = time.monotonic() + 10
        while not pids <= set(flushed) and time.monotonic() < deadline:
            for a in spread(server, "/flush", timeout=1.5):
                flushed[a["pid"]] = a
        assert set(flushed) == pids, (flushed, server.output())
        for pid in sorted(pids):
            stats = flushed[pid]["stats"]
            if stats.get("published", 0) != made[pid] or not flushed[pid]["flushed"]:
                problems.append(f"child {pid} made {made[pid]} sampled calls and published "
                                f"{stats.get('published', 0)} (flushed: {flushed[pid]['flushed']}, "
                                f"stats: {stats})")

        # ... and the worker recorded each of them: one sample row per call (a short wait when
        # the children already said they did not publish them all).
        total, lost = sum(made.values()), any("published" in p for p in problems)
        deadline = time.monotonic() + (2 if lost else 10)
        while samples(sqlite_url) < total and time.monotonic() < deadline:
            time.sleep(0.1)
        if (rows := samples(sqlite_url)) != total:
            problems.append(f"{total} calls, {rows} sample rows; the worker's log ends:\n"
                            f"{stack.logs()[0][-800:]}")
        assert not problems, "\n".join(problems)
    finally:
        server.stop()


# --- os.fork -----------------------------------------------------------------------------------

def call(client, text: str):
    return client.messages.create(category="sentiment", model=OPUS, max_tokens=8,
                                  system="sentiment: answer POSITIVE, NEGATIVE or NEUTRAL",
                                  messages=[{"role": "user", "content": text}])


def traffic_calls(r: redis.Redis) -> int:
    """Production calls of ``sentiment`` the wrappers have counted in Redis, all minutes."""
    total = 0
    for key in r.scan_iter(keys.TRAFFIC.format(minute="*")):
        for name, value in r.hgetall(key).items():
            parts = name.decode().split("|")
            if parts[0] == "sentiment" and parts[-1] == "calls":
                total += int(value)
    return total


def child_run(client, redis_url: str, policy_path: Path, ttl: float) -> dict:
    """What the forked child does and sees; reported to the parent as JSON."""
    r = redis.Redis.from_url(redis_url)
    out: dict = {"pid": os.getpid(), "before": [], "after": []}
    out["before"] = [call(client, f"child before {i}").model for i in range(3)]
    r.hset(REDIS_KEY, "sentiment", f"{OPUS}|2")  # the flip, as RouteTable reads it
    flipped = time.monotonic()
    while time.monotonic() < flipped + ttl + MARGIN:
        out["after"].append(call(client, f"child after {len(out['after'])}").model)
        if out["after"][-1] == OPUS:
            break
        time.sleep(0.02)
    out["followed_after_s"] = (round(time.monotonic() - flipped, 3)
                               if out["after"][-1] == OPUS else None)
    out["flushed"] = client.tierguard_flush(2.0)
    out["stats"] = client.tierguard_stats()
    made = len(out["before"]) + len(out["after"])
    # The child's production calls reach the traffic counters (the parent's one was counted).
    deadline = time.monotonic() + 3 + publisher_module.__dict__.get("TRAFFIC_FLUSH_SECONDS", 5)
    while traffic_calls(r) < 1 + made and time.monotonic() < deadline:
        time.sleep(0.05)
    out["traffic_calls"] = traffic_calls(r)
    # A policy edit reaches the child: sample_rate 0 stops the sampling.
    edited = json.loads(json.dumps(POLICY))
    edited["categories"]["sentiment"]["sample_rate"] = 0.0
    edited["defaults"]["sample_rate"] = 0.0
    write_policy(policy_path, edited)
    edited_at, out["policy_followed_after_s"] = time.monotonic(), None
    while time.monotonic() < edited_at + 0.1 + MARGIN:
        client.tierguard_flush(2.0)  # (a held call is settled, its draw taken, by the flush)
        before = client.tierguard_stats().get("submitted", 0)
        call(client, "after the policy edit")
        client.tierguard_flush(2.0)
        if client.tierguard_stats().get("submitted", 0) == before:  # not sampled: the new policy
            out["policy_followed_after_s"] = round(time.monotonic() - edited_at, 3)
            break
        time.sleep(0.05)
    return out


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_a_forked_child_follows_flips_policy_edits_and_publishes(simulator, redis_url, sqlite_url,
                                                                  tmp_path, monkeypatch):
    sim = simulator(**SCENARIO)
    # Traffic counters are flushed every few seconds; sooner here, so the test need not wait.
    monkeypatch.setattr(publisher_module, "TRAFFIC_FLUSH_SECONDS", 0.2, raising=False)
    policy_path = write_policy(tmp_path / "tierguard.yaml", POLICY)
    ttl = 0.1
    settings = get_settings(redis_url=redis_url, database_url=sqlite_url, route_ttl=ttl,
                            policy=policy_path, policy_reload_s=0.1)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY,
                                                             max_retries=0), settings=settings)
    # The parent uses it first (its background threads run, however lazily they start) and has
    # published and counted everything before it forks.
    r = redis.Redis.from_url(redis_url)
    assert call(client, "parent").model == HAIKU
    assert client.tierguard_flush()
    wait_until(lambda: traffic_calls(r) == 1, 8, "the parent's call in the traffic counters")
    parent_jobs = len(queued_jobs(redis_url, settings.queue))
    assert parent_jobs == 1

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 0
        try:
            os.close(read_fd)
            try:
                report = child_run(client, redis_url, policy_path, ttl)
            except BaseException as err:
                report = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            data = json.dumps(report).encode()
            while data:
                data = data[os.write(write_fd, data):]
        except BaseException:
            code = 1
        finally:
            os._exit(code)

    os.close(write_fd)
    chunks, deadline = [], time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_fd], [], [], 0.2)
            if ready:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert chunks, "the forked child reported nothing (hung or died)"
    report = json.loads(b"".join(chunks))
    assert "error" not in report, report.get("traceback", report)

    jobs = [j for j in queued_jobs(redis_url, settings.queue)
            if str(j["request"]["messages"][0]["content"]).startswith("child ")]
    made = report["before"] + report["after"]
    problems = []
    if report["before"] != [HAIKU] * 3:
        problems.append(f"before the flip the child was served by {report['before']}")
    if report["followed_after_s"] is None:
        problems.append(f"the child's route never followed the flip within {ttl + MARGIN}s "
                        f"(served: {runs(report['after'])})")
    if not report["flushed"] or len(jobs) != len(made):
        problems.append(f"the child made {len(made)} sampled calls; {len(jobs)} job(s) reached the "
                        f"broker (flushed: {report['flushed']}, child's stats: {report['stats']})")
    elif Counter(j["served_model"] for j in jobs) != Counter(made):
        problems.append(f"the jobs' served models {Counter(j['served_model'] for j in jobs)} "
                        f"are not what served the child {Counter(made)}")
    if report["traffic_calls"] != 1 + len(made):
        problems.append(f"traffic counters hold {report['traffic_calls']} calls; the parent made 1 "
                        f"and the child {len(made)} before the count was read")
    if report["policy_followed_after_s"] is None:
        problems.append("the child never applied the edited policy (sample_rate 0)")
    report["after"] = runs(report["after"])
    assert not problems, "\n".join(problems) + f"\nchild's report: {report}"
    client.tierguard_close()
