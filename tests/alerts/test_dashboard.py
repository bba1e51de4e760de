"""The dashboard and Grafana provisioning, checked for real: every panel's SQL runs on PostgreSQL
filled by a real pipeline run, with Grafana's macros expanded as Grafana expands them."""

import datetime as dt
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import anthropic
import httpx2
import psycopg
import pytest
import yaml

import tierguard
from tests.helpers import (
    API_KEY,
    POLICY,
    QUEUES,
    SCENARIO,
    SYSTEM,
    samples,
    wait_until,
    wrapped_call,
    write_policy,
)
from tierguard.bench.grafana_sql import expand
from tierguard.sim.models import Scenario
from tierguard.sim.server import SimServer
from tierguard.sim.servers import RedisServer
from tierguard.store.db import make_engine, upgrade
from tierguard.store.traffic import fold

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "dashboards" / "tierguard.json").read_text())
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"


def targets():
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            yield panel, target


def test_dashboard_structure():
    assert DASHBOARD["uid"] == "tierguard"
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    boxes = [(p["gridPos"]["x"], p["gridPos"]["y"], p["gridPos"]["w"], p["gridPos"]["h"])
             for p in DASHBOARD["panels"]]
    for i, (x, y, w, h) in enumerate(boxes):
        assert 0 <= x and x + w <= 24
        for x2, y2, w2, h2 in boxes[i + 1:]:
            overlap = x < x2 + w2 and x2 < x + w and y < y2 + h2 and y2 < y + h
            assert not overlap, f"panels overlap at {(x, y)} and {(x2, y2)}"
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["query"] == "grafana-postgresql-datasource"
    assert variables["category"]["multi"] and variables["category"]["includeAll"]
    for panel, target in targets():
        assert panel["datasource"]["uid"] == target["datasource"]["uid"] == "${datasource}"
        assert "IN ($category)" in target["rawSql"]
    route_changes = [a for a in DASHBOARD["annotations"]["list"] if a["name"] == "Route changes"][0]
    assert route_changes["datasource"]["uid"] == "${datasource}"
    assert {p["title"] for p in DASHBOARD["panels"]} >= {
        "Agreement per category", "Route per category", "Samples per minute",
        "Disagreement reasons", "Shadow errors by type", "Latency p50 / p95 per model",
        "Cost over time (USD)"}


def test_provisioning_files():
    ds = yaml.safe_load((PROVISIONING / "datasources" / "tierguard.yaml").read_text())
    [source] = ds["datasources"]
    assert source["type"] == "grafana-postgresql-datasource"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "tierguard.yaml").read_text())
    assert providers["apiVersion"] == 1 and providers["providers"][0]["type"] == "file"
    rules = yaml.safe_load((PROVISIONING / "alerting" / "tierguard.yaml").read_text())
    titles = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            titles.append(rule["title"])
            queries = [d for d in rule["data"] if d["datasourceUid"] != "__expr__"]
            assert {q["datasourceUid"] for q in queries} == {source["uid"]}
            assert rule["condition"] in {d["refId"] for d in rule["data"]}
    assert titles == ["tierguard agreement below threshold", "tierguard monitor blind"]


# Passwords kept out of the URLs (TIERGUARD_*_PASSWORD), with every character URLs trip on.
PASSWORD = "Pw-n0t@in:logs/#%41"
RUN: dict[str, Path] = {}


@pytest.fixture(scope="module")
def filled_db(tmp_path_factory, postgres_server):
    """A real pipeline run: wrapper → Redis → worker → simulator → PostgreSQL, with a flip and errors.

    Redis asks for a password, and the database URL carries one (the test server trusts
    127.0.0.1, so it is not checked there): both must stay out of every log line.
    """

    import redis

    redis_server = RedisServer(password=PASSWORD).start()
    tmp = tmp_path_factory.mktemp("dash")
    RUN["log"] = tmp / "worker.log"
    url = postgres_server.create_database("dashboard")
    upgrade(make_engine(url))
    # Haiku refuses a tenth of sentiment's answers: escalated to Opus (the escalation panel, its spend).
    sentiment = {**SCENARIO["categories"]["sentiment"],
                 "models": {"claude-haiku-4-5": {"broken": {"rate": 0.1, "kinds": ["refusal"]}}}}
    sim = SimServer(Scenario.from_dict({**SCENARIO, "categories": {
        **SCENARIO["categories"], "sentiment": sentiment,
        "ticket-routing": {"kind": "label", "labels": QUEUES, "agreement": 0.98,
                           "drift": {"after": 60, "agreement": 0.2}}}})).start_background()
    policy = write_policy(tmp / "tierguard.yaml", {**POLICY, "defaults": {
        **POLICY["defaults"], "min_samples": 20}, "categories": {**POLICY["categories"], "sentiment": {
            **POLICY["categories"]["sentiment"], "escalate_on": ["refusal"]}},
        "challengers": ["claude-sonnet-4-6"]})  # on a fifth of the sampled jobs: the Challengers panel
    RUN["policy"] = policy
    env = {**os.environ, "TIERGUARD_POLICY": str(policy), "TIERGUARD_DATABASE_URL": url,
           "TIERGUARD_DATABASE_PASSWORD": PASSWORD, "TIERGUARD_REDIS_PASSWORD": PASSWORD,
           "TIERGUARD_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
           "ANTHROPIC_BASE_URL": sim.base_url,
           "ANTHROPIC_API_KEY": API_KEY, "TIERGUARD_SHADOW_MAX_ATTEMPTS": "1",
           "TIERGUARD_ROUTE_TTL": "0.2"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    log = open(tmp / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "tierguard", "worker", "-c", "8"], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
        httpx2.post(sim.base_url + "/_sim/ratelimit",  # Opus answers with its rate-limit headers
                    json={"model": "claude-opus-4-7", "limit": 100, "remaining": 60, "reset_in": 600})
        for i in range(300):
            wrapped_call(client, ["sentiment", "ticket-routing", "invoice-extraction"][i % 3], i)
        client.tierguard_flush(10)
        wait_until(lambda: samples(url, 'shadow') == 300, 90, "300 samples")
        worker.terminate()  # queue ten jobs, then make their shadow calls fail
        worker.wait(20)
        for i in range(10):
            wrapped_call(client, "sentiment", 1000 + i)
        client.tierguard_flush(10)
        httpx2.post(sim.base_url + "/_sim/fail", json={"status": 500, "count": 10})
        worker = subprocess.Popen([sys.executable, "-m", "tierguard", "worker", "-c", "8"], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: samples(url, 'shadow') == 310, 60, "310 samples")
        # One request the candidate cannot take: served by the reference, counted as guarded.
        list(client.messages.create(category="sentiment", max_tokens=100_000, stream=True,
                                    system=SYSTEM["sentiment"],
                                    messages=[{"role": "user", "content": "a very long answer"}]))
        wait_until(lambda: samples(url, 'shadow') == 311, 60, "311 samples (one skipped)")
        client.tierguard_close()  # flushes the production counters; beat would fold them
        from tierguard.policy import load_policy

        fold(make_engine(url), redis.Redis.from_url(redis_server.url),
             now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=3), policy=load_policy(policy))
        from tierguard.headroom import history

        assert history.snapshot(make_engine(url), redis.Redis.from_url(redis_server.url),
                                     history.models_of(load_policy(policy))) >= 1
    finally:
        worker.terminate()
        worker.wait(20)
        sim.stop()
        redis_server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return url


def run_sql(url, sql):
    with psycopg.connect(url) as conn:
        cur = conn.execute(sql)
        return [d.name for d in cur.description], cur.fetchall()


def macro_expand(sql):
    now = dt.datetime.now(dt.UTC)
    return expand(sql, now - dt.timedelta(hours=1), now + dt.timedelta(minutes=1), "1m",
                  {"category": ["sentiment", "ticket-routing", "invoice-extraction"]})


def test_every_panel_query_runs_and_returns_what_its_panel_needs(filled_db):
    seen_rows = {}
    for panel, target in targets():
        columns, rows = run_sql(filled_db, macro_expand(target["rawSql"]))
        seen_rows[(panel["title"], target["refId"])] = len(rows)
        if target["format"] == "time_series":
            assert columns[0] == "time", (panel["title"], columns)
            numeric = [i for i in range(1, len(columns)) if columns[i] != "metric"]
            assert numeric, panel["title"]
            for row in rows:
                assert all(row[i] is None or isinstance(row[i], (int, float, Decimal))
                           for i in numeric), (panel["title"], row)
        if panel["type"] == "state-timeline":
            assert columns == ["time", "metric", "value"]
            assert {r[2] for r in rows} <= {1, 2, 3}
    assert [k for k, n in seen_rows.items() if n == 0] == [], seen_rows
    _, routes = run_sql(filled_db, macro_expand(
        [p for p in DASHBOARD["panels"] if p["type"] == "state-timeline"][0]["targets"][0]["rawSql"]))
    assert ("ticket-routing", 2) in {(r[1], r[2]) for r in routes}  # the flip is on the timeline
    _, errors = run_sql(filled_db, macro_expand(
        [p for p in DASHBOARD["panels"] if p["title"] == "Shadow errors by type"][0]["targets"][0]["rawSql"]))
    assert {r[1] for r in errors} == {"server_error", "skipped"}


def test_annotation_and_variable_queries(filled_db):
    anno = [a for a in DASHBOARD["annotations"]["list"] if a["name"] == "Route changes"][0]
    columns, rows = run_sql(filled_db, macro_expand(anno["target"]["rawSql"]))
    assert columns == ["time", "text", "tags"]
    assert len(rows) == 1 and rows[0][2] == "tierguard,ticket-routing"
    assert "ticket-routing: claude-haiku-4-5 → claude-opus-4-7 (cusum, auto)" in rows[0][1]
    var = [v for v in DASHBOARD["templating"]["list"] if v["name"] == "category"][0]
    _, names = run_sql(filled_db, var["query"])
    assert [n[0] for n in names] == ["invoice-extraction", "sentiment", "ticket-routing"]


def test_alert_rule_queries_run(filled_db):
    rules = yaml.safe_load((PROVISIONING / "alerting" / "tierguard.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            [query] = [d for d in rule["data"] if d["refId"] == "A"]
            columns, rows = run_sql(filled_db, query["model"]["rawSql"])
            assert columns[0] == "category" and len(columns) == 2, rule["title"]
            assert rows, rule["title"]


def test_no_password_in_any_log_line_or_output(filled_db):
    from urllib.parse import quote

    from tests.helpers import tg

    forms = (PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD), "n0t@in", "n0t%40in")
    log = RUN["log"].read_text()
    assert "ready" in log or "celery@" in log  # the worker's own output is there
    env = {**os.environ, "TIERGUARD_POLICY": str(RUN["policy"]), "TIERGUARD_DATABASE_URL": filled_db,
           "TIERGUARD_DATABASE_PASSWORD": PASSWORD, "TIERGUARD_REDIS_PASSWORD": PASSWORD,
           "TIERGUARD_REDIS_URL": "redis://127.0.0.1:1/0"}  # Redis unreachable: errors name it
    outputs = [log]
    for args in (["status", "--json"], ["status"], ["ping", "--timeout", "1"],
                 ["db", "upgrade"], ["maintain", "--dry-run", "--json"]):
        done = tg(*args, env=env, cwd=RUN["log"].parent, check=False)
        outputs.append(done.stdout + done.stderr)
    dead_db = {**env, "TIERGUARD_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"}
    done = tg("db", "upgrade", env=dead_db, cwd=RUN["log"].parent, check=False)
    assert done.returncode == 1 and "postgres:***@127.0.0.1:1" in done.stderr
    outputs.append(done.stdout + done.stderr)
    for text in outputs:
        for form in forms:
            assert form not in text


def test_reader_role_runs_every_panel_and_writes_nothing(filled_db):
    from sqlalchemy.engine import make_url

    from tierguard.store.db import make_engine
    from tierguard.store.reader import READER, TABLES, create_reader

    engine = make_engine(filled_db)
    assert create_reader(engine, "reader-pw") == list(TABLES)
    assert create_reader(engine, "reader-pw-2") == list(TABLES)  # again: password and grants reset
    reader = make_url(filled_db).set(username=READER).render_as_string(hide_password=False)
    queries = [macro_expand(t["rawSql"]) for _, t in targets()]
    queries += [macro_expand(a["target"]["rawSql"]) for a in DASHBOARD["annotations"]["list"]
                if "target" in a and "rawSql" in a["target"]]
    queries += [v["query"] for v in DASHBOARD["templating"]["list"] if v["type"] == "query"]
    rules = yaml.safe_load((PROVISIONING / "alerting" / "tierguard.yaml").read_text())
    queries += [d["model"]["rawSql"] for g in rules["groups"] for r in g["rules"]
                for d in r["data"] if d["datasourceUid"] != "__expr__"]
    for sql in queries:  # the same columns and rows as the owner gets (values may move with now())
        (cols, rows), (want_cols, want_rows) = run_sql(reader, sql), run_sql(filled_db, sql)
        assert (cols, len(rows)) == (want_cols, len(want_rows)) and rows, sql
    with psycopg.connect(reader, autocommit=True) as conn:
        tables = [t for (t,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        assert {"alert", "event", "alembic_version", "sample_default"} <= set(tables)
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")  # privileges, not mode
        for table in tables:
            column = first_column(conn, table)
            for sql in (f"INSERT INTO {table} DEFAULT VALUES", f"UPDATE {table} SET {column} = NULL",
                        f"DELETE FROM {table}", f"TRUNCATE {table}"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql)
            if table not in TABLES:  # and nothing else is readable (partitions only through sample)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(f"SELECT 1 FROM {table} LIMIT 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE mine (x int)")


def first_column(conn, table):
    return conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum = 1",
                        (table,)).fetchone()[0]


def test_cost_panels_show_what_tierguard_costs_prints(filled_db):
    from tierguard.ops.costs import costs
    from tierguard.policy import load_policy

    [(_, target)] = [(p, t) for p, t in targets() if p["title"] == "Cost in range (USD)"]
    now = dt.datetime.now(dt.UTC)
    sql = expand(target["rawSql"], now - dt.timedelta(hours=2), now + dt.timedelta(minutes=1), "1m",
                 {"category": ["sentiment", "ticket-routing", "invoice-extraction"]})
    _, [(production, shadow, savings, escalated)] = run_sql(filled_db, sql)
    printed = costs(make_engine(filled_db), load_policy(RUN["policy"]), now - dt.timedelta(hours=2),
                    now)["total"]
    assert production > 0 and shadow > 0
    assert float(production) == pytest.approx(printed["production_usd"], rel=1e-6)
    assert float(shadow) == pytest.approx(printed["shadow_usd"], rel=1e-6)
    assert float(savings or 0) == pytest.approx(printed["savings_usd"], rel=1e-6, abs=1e-9)
    assert float(escalated) == pytest.approx(printed["escalated_usd"], rel=1e-6) and escalated > 0
