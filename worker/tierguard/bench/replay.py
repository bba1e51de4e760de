"""``tierguard bench replay``: a month of outcomes backtested, end to end, from a file and from the database.

One million pre-judged outcomes over 20 categories (three drift partway) are
written once as JSON lines and once as ``sample`` rows in a private PostgreSQL.
Each path is timed as a user runs it: the wall time of ``tierguard replay FILE
--json`` and of ``tierguard replay --from-db --json``, start-up included.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

GOAL = 200_000
CATEGORIES = 20


def outcomes(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(category index, agree) per outcome; categories 0–2 drift to 0.82 halfway."""
    rng = np.random.default_rng(seed)
    cat = np.arange(n) % CATEGORIES
    p = np.where((cat < 3) & (np.arange(n) > n // 2), 0.82, 0.97)
    return cat, rng.random(n) < p


def _timed(args: list[str], env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tierguard", *args], capture_output=True, text=True,
                          env=env, check=False)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"tierguard {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return elapsed, json.loads(done.stdout.strip().splitlines()[-1])


def replay_figures(samples: int = 1_000_000) -> dict[str, Any]:
    from tierguard.policy import parse_policy
    from tierguard.routing.routes import ensure_categories
    from tierguard.sim.servers import PostgresServer
    from tierguard.store.db import make_engine, upgrade

    folder = Path(tempfile.mkdtemp(prefix="tierguard-bench-replay-"))
    cat, agree = outcomes(samples)
    names = [f"c{i:02d}" for i in range(CATEGORIES)]
    path = folder / "outcomes.jsonl"
    with open(path, "w") as f:
        for c, a in zip(cat.tolist(), agree.tolist(), strict=True):
            f.write(f'{{"category": "{names[c]}", "agree": {"true" if a else "false"}}}\n')
    env = {**os.environ, "TIERGUARD_POLICY": str(folder / "none.yaml")}
    file_s, file_result = _timed(["replay", str(path), "--json"], env)

    pg = PostgresServer().start()
    try:
        url = pg.create_database("replay")
        engine = make_engine(url)
        upgrade(engine)
        ensure_categories(engine, parse_policy({"categories": {n: {} for n in names}}))
        t0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
        buffer = io.StringIO()
        for i, (c, a) in enumerate(zip(cat.tolist(), agree.tolist(), strict=True)):
            at = (t0 + dt.timedelta(seconds=i * 2.5)).isoformat()
            buffer.write(f"j{i:08d}\t{names[c]}\tshadow\tclaude-haiku-4-5\tclaude-opus-4-7\t"
                         f"{'t' if a else 'f'}\texact\t\t{{}}\t1\tr\tp\t{at}\n")
        buffer.seek(0)
        import psycopg

        with psycopg.connect(url) as conn, conn.cursor() as cur:
            with cur.copy("COPY sample (job_id, category, kind, served_model, shadow_model, agree, "
                          "comparator, reason, detail, attempts, request_hash, primary_hash, "
                          "created_at) FROM STDIN") as copy:
                copy.write(buffer.read())
            cur.execute("ANALYZE sample")
        db_s, db_result = _timed(["replay", "--from-db", "--json"],
                                 {**env, "TIERGUARD_DATABASE_URL": url})
    finally:
        pg.destroy()
    same = [(c["category"], c["index"], c["to"]) for c in file_result["changes"]] == [
        (c["category"], c["index"], c["to"]) for c in db_result["changes"]]
    return {"samples": samples, "seconds": round(file_s, 3), "samples_per_s": round(samples / file_s),
            "file_seconds": round(file_s, 3), "file_samples_per_s": round(samples / file_s),
            "db_seconds": round(db_s, 3), "db_samples_per_s": round(samples / db_s),
            "changes": len(file_result["changes"]), "same_changes": same,
            "goal_samples_per_s": GOAL}
