"""``tierguard bench headroom``: production's 429s with and without watching, and what room is used.

The simulator holds an Opus rate limit (token buckets per key and model, a scaled
minute). Production calls Opus at 60 % of the request and token limits; a Haiku
category's shadows go to Opus too and would add another 60 % if sent blindly. The
same traffic runs twice, shadows off then on, against a real worker process and
Redis; each sampled job must end recorded or skipped exactly once. Shares are of
what the limit could serve over the run: its refill, plus the full bucket it
starts with (one more minute's worth).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

OPUS, HAIKU = "claude-opus-4-7", "claude-haiku-4-5"
LABELS = ["POSITIVE", "NEGATIVE", "NEUTRAL"]
KEY = "sk-bench-headroom-" + "k" * 20


def _body(category: str, i: int) -> dict[str, Any]:
    return {"max_tokens": 8, "system": f"{category}: label it",
            "messages": [{"role": "user", "content": f"item {i}: " + "the order arrived late. " * 8}]}


def _limits(requests: int) -> dict[str, int]:
    """Per-minute limits that ``requests`` calls a minute fill (tokens as the simulator counts
    them for these requests)."""
    from tierguard.sim.server import input_tokens

    per_call_in = input_tokens(_body("prod", 0))
    return {"requests_per_minute": requests,
            "input_tokens_per_minute": int(requests * per_call_in * 1.02),
            "output_tokens_per_minute": int(requests * 3 * 1.02)}


def _run(shadows: bool, *, minutes: float, time_scale: float, limit: int, share: float,
         folder: str, redis_url: str) -> dict[str, Any]:
    import anthropic
    import httpx2
    import redis as redis_lib
    import sqlalchemy as sa
    import yaml

    from tierguard.app.client import ShadowedAnthropic
    from tierguard.config import get_settings
    from tierguard.contract import keys
    from tierguard.contract.broker import make_celery
    from tierguard.policy import parse_policy
    from tierguard.sim.models import Scenario
    from tierguard.sim.server import SimServer
    from tierguard.sim.servers import stop_processes
    from tierguard.store.db import make_engine, session, upgrade
    from tierguard.store.tables import Sample

    tag = "on" if shadows else "off"
    limits = _limits(limit)
    sim = SimServer(Scenario.from_dict({
        "time_scale": time_scale, "rate_limits": {OPUS: limits},
        "categories": {c: {"kind": "label", "labels": LABELS, "agreement": 1.0}
                       for c in ("prod", "triage")}})).start_background()
    r = redis_lib.Redis.from_url(redis_url)
    r.flushdb()
    db_url = f"sqlite:///{folder}/headroom-{tag}.db"
    upgrade(make_engine(db_url))
    policy = {"categories": {
        "prod": {"start_on": "reference", "sample_rate": 0.0,
                 "comparator": {"type": "label", "labels": LABELS}},
        "triage": {"sample_rate": 1.0 if shadows else 0.0,
                   "comparator": {"type": "label", "labels": LABELS}}}}
    policy_path = os.path.join(folder, f"policy-{tag}.yaml")
    with open(policy_path, "w") as f:
        yaml.safe_dump(policy, f)
    env = {**os.environ, "TIERGUARD_DATABASE_URL": db_url, "TIERGUARD_REDIS_URL": redis_url,
           "TIERGUARD_POLICY": policy_path, "ANTHROPIC_BASE_URL": sim.base_url,
           "ANTHROPIC_API_KEY": KEY, "TIERGUARD_METRICS_PORT": "0", "TIERGUARD_ROUTE_TTL": "0.5"}
    worker = subprocess.Popen([sys.executable, "-m", "tierguard", "worker", "-c", "16",
                               "--loglevel", "WARNING"], env=env,
                              stdout=open(os.path.join(folder, f"worker-{tag}.log"), "w"),
                              stderr=subprocess.STDOUT)
    settings = get_settings(redis_url=redis_url, database_url=db_url, policy=policy_path)
    try:
        app = make_celery(settings)
        deadline = time.monotonic() + 60
        while not (app.control.ping(timeout=0.5) or []):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {folder}/worker-{tag}.log")
        client = ShadowedAnthropic(anthropic.Anthropic(base_url=sim.base_url, api_key=KEY, max_retries=0),
                                   settings=settings, policy=parse_policy(policy))
        seconds = minutes * 60 / time_scale
        per_s = limit * share * time_scale / 60  # each category's calls per second
        counts = {"prod_ok": 0, "prod_429": 0, "triage": 0}
        lock = threading.Lock()

        def traffic(category: str, offset: float) -> None:
            start = time.monotonic() + offset / per_s
            i = 0
            while (due := start + i / per_s) < start + seconds:
                time.sleep(max(0.0, due - time.monotonic()))
                try:
                    client.messages.create(category=category, **_body(category, i))
                    with lock:
                        counts["prod_ok" if category == "prod" else "triage"] += 1
                except anthropic.RateLimitError:
                    with lock:
                        counts["prod_429"] += 1
                i += 1

        threads = [threading.Thread(target=traffic, args=("prod", 0.0)),
                   threading.Thread(target=traffic, args=("triage", 0.5))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        served = httpx2.get(sim.base_url + "/_sim/stats").json()["served"].get(OPUS, 0)
        client.tierguard_flush(10)
        sampled = client.tierguard_stats().get("published", 0)
        engine = make_engine(db_url)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the backlog drains once production stops
            with session(engine) as s:
                done = s.execute(sa.select(sa.func.count()).select_from(Sample)).scalar_one()
            if done >= sampled:
                break
            time.sleep(0.5)
        with session(engine) as s:
            rows = s.execute(sa.select(Sample.job_id, Sample.error)).all()
        deferred = int(r.hget(keys.DEFERRED, OPUS) or 0)
        client.tierguard_close()
    finally:
        stop_processes([worker], timeout=20)
        sim.stop()
    capacity = limit * (minutes + 1)  # the refill over the run, and the full bucket it starts with
    return {"production_429": counts["prod_429"], "production_ok": counts["prod_ok"],
            "sampled": sampled, "recorded": sum(1 for _, e in rows if e != "skipped"),
            "skipped": sum(1 for _, e in rows if e == "skipped"),
            "unique": len({j for j, _ in rows}), "rows": len(rows), "deferred": deferred,
            "shadow_calls": served - counts["prod_ok"], "capacity": capacity}


def headroom_figures(minutes: float = 5.0, time_scale: float = 10.0, limit: int = 120,
                     share: float = 0.6) -> dict[str, Any]:
    from tierguard.sim.servers import RedisServer

    folder = tempfile.mkdtemp(prefix="tierguard-bench-headroom-")
    redis = RedisServer().start()
    try:
        off, on = (_run(s, minutes=minutes, time_scale=time_scale, limit=limit, share=share,
                        folder=folder, redis_url=redis.url) for s in (False, True))
    finally:
        redis.stop()
    production = on["production_ok"] / on["capacity"]
    return {"production_429_shadows_off": off["production_429"],
            "production_429_shadows_on": on["production_429"],
            "shadow_sampled": on["sampled"], "shadow_recorded": on["recorded"],
            "shadow_deferred": on["deferred"], "shadow_skipped": on["skipped"],
            "shadow_share_of_limit": round(on["shadow_calls"] / on["capacity"], 3),
            "room_share": round(1 - production, 3),
            "each_job_once": on["rows"] == on["unique"] == on["sampled"],
            "scaled_minutes": minutes, "time_scale": time_scale, "requests_per_minute": limit,
            "production_share_target": share, "folder": folder}
