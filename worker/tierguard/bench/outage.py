"""``tierguard bench pipeline --db-outage S``: what a database outage costs in shadow calls.

Jobs are sent to a real worker while PostgreSQL is stopped for ``S`` seconds; every message
whose recording fails runs again until the database is back. The figure is the shadow calls the
simulator answered per job (goal ≤ 1.05: no answer bought twice), with every job recorded once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

GOAL_CALLS_PER_JOB = 1.05


def _jobs(n: int, category: str) -> list[dict[str, Any]]:
    from tierguard.contract.job import ShadowJob

    return [ShadowJob(job_id=uuid.uuid4().hex, category=category, served_model="claude-haiku-4-5",
                      shadow_model="claude-opus-4-7", primary_text="A1",
                      request={"max_tokens": 8, "system": f"{category}: pick",
                               "messages": [{"role": "user", "content": f"item {i}"}]}).to_dict()
            for i in range(n)]


def _recorded(db_url: str) -> int:
    import sqlalchemy as sa

    from tierguard.store.db import make_engine

    try:
        with make_engine(db_url).connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM sample")).scalar_one())
    except sa.exc.OperationalError:
        return -1


def outage_figures(outage_s: float = 60.0, jobs: int = 200) -> dict[str, Any]:
    """Send ``jobs`` jobs with the database stopped, start it after ``outage_s``; count calls."""
    import yaml

    from tierguard.config import get_settings
    from tierguard.contract.broker import BATCH_TASK, make_celery
    from tierguard.sim.models import Scenario
    from tierguard.sim.server import SimServer
    from tierguard.sim.servers import PostgresServer, RedisServer, stop_processes
    from tierguard.store.db import make_engine, upgrade

    folder = tempfile.mkdtemp(prefix="tierguard-bench-outage-")
    sim = SimServer(Scenario.from_dict({"latency_ms": 50, "categories": {
        "bench": {"kind": "label", "labels": ["A1", "B2"], "agreement": 1.0}}})).start_background()
    redis, pg = RedisServer().start(), PostgresServer().start()
    procs: list[subprocess.Popen] = []
    try:
        db_url = pg.create_database("outage")
        upgrade(make_engine(db_url))
        policy = os.path.join(folder, "tierguard.yaml")
        with open(policy, "w") as f:
            yaml.safe_dump({"categories": {"bench": {"comparator": {"type": "label",
                                                                    "labels": ["A1", "B2"]}}}}, f)
        env = {**os.environ, "TIERGUARD_DATABASE_URL": db_url, "TIERGUARD_REDIS_URL": redis.url,
               "TIERGUARD_POLICY": policy, "ANTHROPIC_BASE_URL": sim.base_url,
               "ANTHROPIC_API_KEY": "sk-bench", "TIERGUARD_METRICS_PORT": "0"}
        procs.append(subprocess.Popen([sys.executable, "-m", "tierguard", "worker", "-c", "8",
                                       "--loglevel", "WARNING"], env=env,
                                      stdout=open(os.path.join(folder, "worker.log"), "w"),
                                      stderr=subprocess.STDOUT))
        app = make_celery(get_settings(redis_url=redis.url))
        while not app.control.ping(timeout=0.5):
            if procs[0].poll() is not None:
                raise RuntimeError(f"the worker did not start; see {folder}/worker.log")
        pg.stop()
        started = time.monotonic()
        sent = _jobs(jobs, "bench")
        for i in range(0, jobs, 50):
            app.send_task(BATCH_TASK, args=[sent[i:i + 50]], task_id=sent[i]["job_id"],
                          queue=get_settings().queue)
        time.sleep(max(0.0, outage_s - (time.monotonic() - started)))
        pg.start()
        deadline = time.monotonic() + 300
        while _recorded(db_url) < jobs and time.monotonic() < deadline:
            time.sleep(0.5)
        with sim.sim.lock:
            calls = sum(sim.sim.requests.values())
        recorded = _recorded(db_url)
    finally:
        stop_processes(procs)
        sim.stop()
        redis.stop()
        pg.destroy()
    return {"fault": "database_outage", "outage_s": outage_s, "jobs": jobs, "recorded": recorded,
            "shadow_calls": calls, "calls_per_job": round(calls / jobs, 3),
            "goal_calls_per_job": GOAL_CALLS_PER_JOB}
