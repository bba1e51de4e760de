"""``tierguard bench dashboards``: every dashboard query on a month of history, at two sizes.

A private PostgreSQL gets ``rows`` sample rows over 30 days in 20 categories (a
fifth of them first, then the rest) and their rollups. Every panel's SQL — Grafana's
macros expanded as Grafana expands them, with the interval Grafana would pick
for the range — runs for the last 24 hours and the last 30 days; each figure is
the best of three runs. The growth ratio compares the slowest query at the full
size with the slowest at a fifth of it: flat history means close to 1.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import time
from typing import Any

GOAL_MS = 300
GOAL_GROWTH = 1.3
CATEGORIES = 20
RANGES = {"24h": (dt.timedelta(hours=24), "1m"), "30d": (dt.timedelta(days=30), "1h")}
COLUMNS = ("job_id", "category", "kind", "served_model", "shadow_model", "agree", "score", "comparator",
           "reason", "detail", "error", "attempts", "primary_latency_ms", "shadow_latency_ms",
           "primary_input_tokens", "primary_output_tokens", "primary_cost_usd", "shadow_input_tokens",
           "shadow_output_tokens", "shadow_cost_usd", "request_hash", "primary_hash", "requested_at",
           "created_at")


def _rows(start: int, n: int, end: dt.datetime, seed: int) -> str:
    rng = random.Random(seed)
    out = io.StringIO()
    span = 30 * 86400
    for i in range(start, start + n):
        cat = f"cat-{i % CATEGORIES:02d}"
        at = end - dt.timedelta(seconds=rng.random() * span)
        error = "rate_limited" if rng.random() < 0.02 else None
        agree = "" if error else ("t" if rng.random() < 0.96 else "f")
        reason = "" if agree != "f" else rng.choice(["label POSITIVE vs NEGATIVE", "fields differ: total"])
        served, shadow = (("claude-haiku-4-5", "claude-opus-4-7") if i % 7 else
                          ("claude-opus-4-7", "claude-haiku-4-5"))
        ts = at.isoformat()
        shadow_ms = "" if error else f"{rng.lognormvariate(7, 0.5):.1f}"
        out.write("\t".join([f"b{i:09d}", cat, "shadow", served, shadow, agree or r"\N", "1",
                             "label", reason, "{}", error or r"\N", "1",
                             f"{rng.lognormvariate(6.5, 0.4):.1f}", shadow_ms or r"\N", "420", "12",
                             "0.00048", "420" if not error else r"\N", "12" if not error else r"\N",
                             "0.0024" if not error else r"\N", "r", "p", ts, ts]) + "\n")
    return out.getvalue()


def _queries(now: dt.datetime) -> list[tuple[str, str, str]]:
    from tierguard.alerts.grafana import dashboard_path
    from tierguard.bench.grafana_sql import expand

    dashboard = json.loads(dashboard_path().read_text())
    cats = [f"cat-{i:02d}" for i in range(CATEGORIES)]
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name, (span, interval) in RANGES.items():
                sql = expand(target["rawSql"], now - span, now, interval, {"category": cats})
                out.append((f"{panel['title']} ({target['refId']})", name, sql))
    return out


def _measure(url: str, now: dt.datetime) -> list[dict[str, Any]]:
    import psycopg

    results = []
    with psycopg.connect(url) as conn:
        for panel, name, sql in _queries(now):
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                conn.execute(sql).fetchall()
                best = min(best, time.perf_counter() - t0)
            results.append({"panel": panel, "range": name, "ms": round(best * 1000, 1)})
    return results


def dashboard_figures(rows: int = 5_000_000) -> dict[str, Any]:
    import psycopg

    from tierguard.policy import parse_policy
    from tierguard.routing.routes import ensure_categories
    from tierguard.sim.servers import PostgresServer
    from tierguard.store import partitions
    from tierguard.store.db import make_engine, session, upgrade
    from tierguard.store.rollups import rebuild_sql

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    pg = PostgresServer().start()
    try:
        url = pg.create_database("dashboards")
        engine = make_engine(url)
        upgrade(engine)
        partitions.ensure(engine, now, 31)  # what beat's maintain keeps: a day partition per day
        ensure_categories(engine, parse_policy({"categories": {f"cat-{i:02d}": {}
                                                               for i in range(CATEGORIES)}}))
        sizes, measured, loaded = [rows // 5, rows], {}, 0
        for size in sizes:
            with psycopg.connect(url) as conn, conn.cursor() as cur:
                for chunk in range(loaded, size, 500_000):
                    n = min(500_000, size - chunk)
                    with cur.copy(f"COPY sample ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                        copy.write(_rows(chunk, n, now, seed=chunk))
                conn.commit()
            loaded = size
            with session(engine) as s:
                rebuild_sql(s)
                s.commit()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
            measured[size] = _measure(url, now)
    finally:
        pg.destroy()
    full, small = measured[rows], measured[rows // 5]
    worst = max(full, key=lambda q: q["ms"])
    before = next(q for q in small if (q["panel"], q["range"]) == (worst["panel"], worst["range"]))
    return {"rows": rows, "queries": full, "max_ms": worst["ms"],
            "growth_ratio": round(worst["ms"] / max(before["ms"], 0.1), 3),
            "slowest": f"{worst['panel']}, {worst['range']}",
            "rows_small": rows // 5, "max_ms_small": max(q["ms"] for q in small),
            "goal_ms": GOAL_MS, "goal_growth_ratio": GOAL_GROWTH}
