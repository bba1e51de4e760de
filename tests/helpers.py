"""Helpers the test modules share: policy files, waiting, the CLI as a subprocess, traffic."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
import yaml

from tests import forkserver
from tierguard.compare import Verdict
from tierguard.contract.job import ShadowJob
from tierguard.pipeline.calls import Answer
from tierguard.pipeline.recorder import record
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Sample

API_KEY = "sk-ant-test-" + "x" * 24
# Waits are event-driven (they return as soon as the condition holds); their limits are stretched
# by this factor because the suite runs several tests at once on a couple of cores.
SLACK = float(os.environ.get("TIERGUARD_TEST_SLACK", "2"))


def write_policy(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def wait_for_log(path: Path, text: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout * SLACK
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}):\n{path.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"worker not ready after {timeout * SLACK}s:\n{path.read_text()[-3000:]}")


def wait_until(predicate: Callable[[], object], timeout: float, what: str | Callable[[], str]) -> None:
    """Wait for ``predicate``; ``what`` names it in the failure (a function: read at the failure,
    to say the state it was stuck in)."""
    deadline = time.monotonic() + timeout * SLACK
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    said = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout * SLACK}s waiting for {said}")


def tg(*args, env, cwd, check=True):
    done = forkserver.run(list(args), env=env, cwd=cwd, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


# --- production-like traffic for the simulator ------------------------------

LABELS = ["POSITIVE", "NEGATIVE", "NEUTRAL"]
QUEUES = ["BILLING", "SHIPPING", "TECHNICAL", "ACCOUNT"]
SCENARIO = {"seed": 11, "categories": {
    "sentiment": {"kind": "label", "labels": LABELS, "agreement": 0.98},
    "ticket-routing": {"kind": "label", "labels": QUEUES, "agreement": 0.98,
                       "drift": {"after": 300, "agreement": 0.60}},
    "invoice-extraction": {"kind": "json", "agreement": 0.99}}}
POLICY = {
    "defaults": {"sample_rate": 1.0, "threshold": 0.90, "min_samples": 50},
    "categories": {
        "sentiment": {"comparator": {"type": "label", "labels": LABELS}},
        "ticket-routing": {"comparator": {"type": "label", "labels": QUEUES}},
        "invoice-extraction": {"comparator": {"type": "json", "ignore_keys": ["notes"]}}}}
SYSTEM = {"sentiment": "sentiment: answer POSITIVE, NEGATIVE or NEUTRAL",
          "ticket-routing": "ticket-routing: answer the queue",
          "invoice-extraction": "invoice-extraction: answer JSON"}


def samples(url, kind=None):
    """Sample rows in the database at ``url`` (``kind``: of that kind only)."""
    query = sa.select(sa.func.count()).select_from(Sample)
    with session(make_engine(url)) as s:
        return s.exec(query if kind is None else query.where(Sample.kind == kind)).one()[0]


def wrapped_call(client, category, i):
    return client.messages.create(category=category, max_tokens=64, system=SYSTEM[category],
                                  messages=[{"role": "user", "content": f"{category} request {i}"}])


def flip(engine, policy, category="sentiment"):
    bad = Verdict(False, 0.0, "label POSITIVE vs NEGATIVE")
    for _ in range(25):
        job = ShadowJob(job_id=uuid.uuid4().hex, category=category, served_model="claude-haiku-4-5",
                        shadow_model="claude-opus-4-7", request={"messages": []}, primary_text="POSITIVE")
        record(engine, None, policy, job, Answer("NEGATIVE", 1, 1, 1.0), bad, None, 1)


def traffic_totals(r) -> dict[tuple[str, str, str], int]:
    """The production counters in Redis (every minute's), summed per category, model and metric."""
    from tierguard.contract import keys
    from tierguard.store import traffic

    out: dict[tuple[str, str, str], int] = {}
    for key in r.scan_iter(keys.TRAFFIC.format(minute="*")):
        for (category, model, metric), n in traffic.parse(r.hgetall(key)).items():
            out[(category, model, metric)] = out.get((category, model, metric), 0) + n
    return out
