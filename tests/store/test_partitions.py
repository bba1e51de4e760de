"""PostgreSQL's daily partitions of ``sample``: the converting migration, retention, dedupe."""

import dataclasses
import datetime as dt
import json
import os
import uuid

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

import tierguard.headroom.history  # noqa: F401
import tierguard.store.batch_jobs  # noqa: F401  (registers its tables)
from tests.helpers import last_json, tg
from tests.store.test_rollups import POLICY, result
from tierguard.pipeline.recorder import record_many
from tierguard.store import partitions
from tierguard.store.db import make_engine, session, upgrade
from tierguard.store.tables import Event, RouteChange, Sample

NOW = dt.datetime.now(dt.UTC)


def row(job_id, requested_at, created_at):
    return {"job_id": job_id, "category": "a", "kind": "shadow", "served_model": "h",
            "shadow_model": "o", "agree": True, "score": 1.0, "comparator": "label", "reason": "",
            "detail": {}, "attempts": 1, "request_hash": "r", "primary_hash": "p",
            "requested_at": requested_at, "created_at": created_at}


def count(engine, table="sample", where="true"):
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE {where}")).scalar_one()


def test_migration_converts_a_populated_table_without_losing_a_row(postgres_url):
    engine = make_engine(postgres_url)
    upgrade(engine, "0006")
    rows = [row(f"j{i}", None if i % 5 == 0 else NOW - dt.timedelta(days=i % 40, minutes=i),
                NOW - dt.timedelta(days=i % 40)) for i in range(2_000)]
    with engine.begin() as conn:
        conn.execute(Sample.__table__.insert(), rows)
    upgrade(engine)
    assert partitions.partitioned(engine)
    assert count(engine) == 2_000
    assert count(engine, where="requested_at IS NULL") == 0
    assert count(engine, "ONLY sample_default") == 0  # every day of the history got its partition
    with engine.connect() as conn:
        held = partitions.days(conn)
        assert set(held) >= {partitions.day_of(NOW - dt.timedelta(days=k)) for k in range(40)}
        assert set(held) >= partitions.window(NOW, 0)  # and a week ahead
        assert conn.execute(sa.text(  # a row lives in its own day's partition
            f"SELECT count(*) FROM {held[partitions.day_of(NOW)]}")).scalar_one() == 50
        ctx = MigrationContext.configure(conn, opts={"include_name": partitions.include_name})
        assert compare_metadata(ctx, SQLModel.metadata) == []
    # The primary key still dedupes a redelivered job (same requested_at, same partition).
    again = result("a", "agree", 10.0, False, 0, "dup")
    record_many(engine, None, POLICY, [again])
    record_many(engine, None, POLICY, [again, again])
    assert count(engine, where="job_id = 'dup'") == 1
    from alembic import command

    from tierguard.store.db import alembic_config

    command.downgrade(alembic_config(engine), "0006")  # and back: one plain table, rows kept
    assert not partitions.partitioned(engine) and count(engine) == 2_001


def test_retention_drops_whole_days_and_keeps_the_audit_tables(postgres_url, tmp_path, redis_url):
    engine = make_engine(postgres_url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(Sample.__table__.insert(), [
            row("recent", NOW - dt.timedelta(days=1), NOW),
            row("old-1", NOW - dt.timedelta(days=45), NOW),     # default partition: no day for it yet
            row("old-2", (NOW - dt.timedelta(days=45)).replace(hour=0, minute=0), NOW),  # its day's start
            row("future", NOW + dt.timedelta(days=20), NOW),    # a clock far ahead: default too
        ])
    with session(engine) as s:
        s.add(RouteChange(category="a", from_model="x", to_model="y", rule="pin", reason="old",
                          created_at=NOW - dt.timedelta(days=500)))
        s.add(Event(key="e", kind="test", severity="info", summary="old",
                    created_at=NOW - dt.timedelta(days=500)))
        s.commit()
    # A day partition created for rows already in the default takes them along.
    with engine.begin() as conn:
        made = partitions.ensure_days(conn, {partitions.day_of(NOW - dt.timedelta(days=45))})
    assert made == [f"sample_p{NOW - dt.timedelta(days=45):%Y%m%d}"]
    assert count(engine, made[0]) == 2 and count(engine, "ONLY sample_default") == 2  # recent, future
    (tmp_path / "policy.yaml").write_text(json.dumps({"retention": {"samples_days": 30}}))
    env = {**os.environ, "TIERGUARD_DATABASE_URL": postgres_url, "TIERGUARD_REDIS_URL": redis_url,
           "TIERGUARD_POLICY": str(tmp_path / "policy.yaml")}
    dry = last_json(tg("maintain", "--dry-run", "--json", env=env, cwd=tmp_path).stdout)
    assert dry["partitions_would_drop"] == [{"partition": made[0], "rows": 2}]
    assert dry["would_delete"]["sample"] == 2 and count(engine) == 4
    done = last_json(tg("maintain", "--json", env=env, cwd=tmp_path).stdout)
    assert done["partitions_dropped"] == dry["partitions_would_drop"]
    assert done["deleted"]["sample"] == 2
    with engine.connect() as conn:
        held = partitions.days(conn)
    assert set(held) == partitions.window(NOW, 30)  # the window and a week ahead, nothing older
    made_now = partitions.window(NOW, 30) - partitions.window(NOW, 0)  # the upgrade made a week ahead
    assert sorted(done["partitions_created"]) == sorted(held[d] for d in made_now)
    assert sorted(x for (x,) in engine.connect().execute(sa.text("SELECT job_id FROM sample"))) == [
        "future", "recent"]
    assert count(engine, "route_change") == 1 and count(engine, "event") == 1
    again = last_json(tg("maintain", "--json", env=env, cwd=tmp_path).stdout)
    assert again["partitions_dropped"] == [] and again["partitions_created"] == []
    assert again["deleted"]["sample"] == 0


def test_a_late_sample_past_retention_is_still_recorded(postgres_url):
    engine = make_engine(postgres_url)
    upgrade(engine)
    late = result("a", "agree", 10.0, False, 0, uuid.uuid4().hex)
    late = dataclasses.replace(late, job=dataclasses.replace(
        late.job, requested_at=(NOW - dt.timedelta(days=90)).isoformat()))
    record_many(engine, None, POLICY, [late])
    assert count(engine, "ONLY sample_default") == 1
