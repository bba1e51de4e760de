"""Rollups equal the raw aggregates of the samples they count, whatever arrives twice or late."""

import datetime as dt
import math
import uuid
from collections import Counter, defaultdict

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import SQLModel, select

from tierguard.compare import Verdict
from tierguard.contract.job import ShadowJob
from tierguard.pipeline.calls import Answer
from tierguard.pipeline.recorder import record_many
from tierguard.pipeline.results import Result
from tierguard.policy import parse_policy
from tierguard.store.db import make_engine, session, upgrade
from tierguard.store.rollups import bucket_end_ms, latency_bucket, rebuild
from tierguard.store.tables import Rollup, RollupError, Sample

POLICY = parse_policy({"defaults": {"min_samples": 10**6}})  # never flip: only counting here

outcome = st.sampled_from(["agree", "disagree", "rate_limited", "skipped", "judge_error"])
job = st.tuples(st.sampled_from(["a", "b", "c"]), outcome,
                st.floats(0.5, 90_000), st.booleans(), st.integers(0, 3))


def result(category, kind, latency, reverse, attempt, job_id):
    served, shadow = ("claude-opus-4-7", "claude-haiku-4-5") if reverse else ("claude-haiku-4-5",
                                                                              "claude-opus-4-7")
    late = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=attempt * 7)).isoformat()  # queued for hours
    j = ShadowJob(job_id=job_id, category=category, served_model=served, shadow_model=shadow,
                  request={"messages": [{"role": "user", "content": "x"}]}, primary_text="A",
                  primary_input_tokens=10, primary_output_tokens=2, primary_latency_ms=latency / 3,
                  requested_at=late)
    if kind in ("agree", "disagree"):
        return Result(j, Answer("A" if kind == "agree" else "B", 12, 3, latency),
                      Verdict(kind == "agree", 1.0, kind), None, attempt + 1)
    return Result(j, None, None, (kind, "failed"), attempt + 1)


def raw_aggregates(engine, seconds):
    counts, errors = defaultdict(Counter), Counter()
    with session(engine) as s:
        for x in s.exec(select(Sample)):
            at = x.created_at if x.created_at.tzinfo else x.created_at.replace(tzinfo=dt.UTC)
            key = (x.category, int(at.timestamp()) // seconds * seconds, x.served_model, x.shadow_model,
                   x.kind)
            c = counts[key]
            c["samples"] += 1
            c["agreements"] += x.error is None and x.agree is True
            c["disagreements"] += x.error is None and x.agree is False
            c["errors"] += x.error is not None and x.error != "skipped"
            c["skipped"] += x.error == "skipped"
            c["shadow_output_tokens"] += x.shadow_output_tokens or 0
            if x.shadow_latency_ms is not None:
                c[f"lat{latency_bucket(x.shadow_latency_ms)}"] += 1
            if x.error:
                errors[(x.category, key[1], x.error)] += 1
    return counts, errors


def rollups_of(engine, grain):
    counts, errors = defaultdict(Counter), Counter()
    with session(engine) as s:
        table = Rollup.__table__
        for r in s.execute(sa.select(table).where(table.c.grain == grain)).mappings():
            at = r["at"] if r["at"].tzinfo else r["at"].replace(tzinfo=dt.UTC)
            c = counts[(r["category"], int(at.timestamp()), r["served_model"], r["shadow_model"],
                        r["kind"])]
            for name in ("samples", "agreements", "disagreements", "errors", "skipped",
                         "shadow_output_tokens"):
                if r[name]:
                    c[name] += r[name]
            for b in range(24):
                if r[f"shadow_lat_{b:02d}"]:
                    c[f"lat{b}"] += r[f"shadow_lat_{b:02d}"]
        for e in s.exec(select(RollupError).where(RollupError.grain == grain)):
            at = e.at if e.at.tzinfo else e.at.replace(tzinfo=dt.UTC)
            errors[(e.category, int(at.timestamp()), e.error)] += e.count
    return counts, errors


def same(engine):
    for grain, seconds in (("1m", 60), ("5m", 300), ("1h", 3600)):
        raw, raw_errors = raw_aggregates(engine, seconds)
        rolled, rolled_errors = rollups_of(engine, grain)
        assert {k: +v for k, v in raw.items()} == {k: +v for k, v in rolled.items()}
        assert raw_errors == rolled_errors


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(job, min_size=1, max_size=12), min_size=1, max_size=6),
       redeliver=st.lists(st.integers(0, 50), max_size=15))
def test_rollups_equal_raw_aggregates_with_redelivery_and_late_jobs(tmp_path_factory, batches,
                                                                    redeliver):
    engine = make_engine("sqlite://")
    SQLModel.metadata.create_all(engine)  # the migrations have their own test; this one counts
    sent = []
    for batch in batches:
        results = [result(*j, job_id=uuid.uuid4().hex) for j in batch]
        results += [sent[i % len(sent)] for i in redeliver[:3]] if sent else []  # redelivered
        sent += results
        record_many(engine, None, POLICY, results)
    record_many(engine, None, POLICY, [sent[i % len(sent)] for i in redeliver])  # a redelivery storm
    same(engine)
    # A rebuild from the raw rows gives the very same rollups.
    with session(engine) as s:
        rebuild(s)
        s.commit()
    same(engine)


def test_on_postgresql_too_and_its_sql_rebuild(postgres_url):
    engine = make_engine(postgres_url)
    upgrade(engine)
    results = [result("a", kind, 100.0 * (i + 1), i % 2 == 0, 0, uuid.uuid4().hex)
               for i, kind in enumerate(["agree", "disagree", "skipped", "rate_limited"] * 5)]
    record_many(engine, None, POLICY, results)
    record_many(engine, None, POLICY, results[:7])  # duplicates: not counted again
    same(engine)
    with session(engine) as s:  # the one-pass SQL rebuild gives the same rollups
        rebuild(s)
        s.commit()
    same(engine)


def test_latency_buckets_are_log_spaced_and_cover_the_range():
    assert latency_bucket(1) == latency_bucket(8) == 0
    assert latency_bucket(8.01) == 1 and latency_bucket(bucket_end_ms(1)) == 1
    assert latency_bucket(bucket_end_ms(10) * 1.01) == 11
    assert latency_bucket(10**7) == 23
    for ms in (9, 50, 333, 1000, 4500, 20_000):
        b = latency_bucket(ms)
        assert bucket_end_ms(b - 1) < ms <= bucket_end_ms(b)
        assert bucket_end_ms(b) / ms < math.sqrt(2) + 1e-9  # p50/p95 within a factor √2


def test_maintain_prunes_past_retention_and_never_the_audit_tables(tmp_path, redis_url):
    import json
    import os

    from tests.helpers import last_json, tg
    from tierguard.store.tables import Event, RouteChange, Traffic

    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_engine(url)
    upgrade(engine)
    now = dt.datetime.now(dt.UTC)
    for age_days in (1, 45, 500):  # a recent sample, one past samples_days, one past rollups_days too
        r = result("a", "agree", 100.0, False, 0, f"job-{age_days}")
        record_many(engine, None, POLICY, [r])
        with session(engine) as s:
            old = now - dt.timedelta(days=age_days)
            s.execute(sa.update(Sample).where(Sample.job_id == r.job.job_id).values(created_at=old))
            s.execute(sa.update(Rollup.__table__).where(Rollup.__table__.c.at > now - dt.timedelta(hours=2))
                      .values(at=old))
            s.add(Traffic(category="a", minute=old, model="claude-haiku-4-5", calls=10))
            s.add(RouteChange(category="a", from_model="x", to_model="y", rule="pin", reason="old",
                              created_at=old))
            s.add(Event(key=f"e{age_days}", kind="test", severity="info", summary="old", created_at=old))
            s.commit()
    (tmp_path / "policy.yaml").write_text(json.dumps({"retention": {"samples_days": 30,
                                                                    "rollups_days": 400}}))
    env = {**os.environ, "TIERGUARD_DATABASE_URL": url, "TIERGUARD_REDIS_URL": redis_url,
           "TIERGUARD_POLICY": str(tmp_path / "policy.yaml")}
    dry = last_json(tg("maintain", "--dry-run", "--json", env=env, cwd=tmp_path).stdout)
    assert dry["would_delete"] == {"sample": 2, "rollup": 3, "rollup_error": 0, "traffic": 1,
                                   "headroom": 0}
    with session(engine) as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Sample)).scalar() == 3  # dry: nothing
    done = last_json(tg("maintain", "--json", env=env, cwd=tmp_path).stdout)
    assert done["deleted"] == dry["would_delete"]
    with session(engine) as s:
        assert [x.job_id for x in s.exec(select(Sample))] == ["job-1"]
        assert s.execute(sa.select(sa.func.count()).select_from(Rollup)).scalar() == 6  # 2 ages × 3 grains
        assert s.execute(sa.select(sa.func.count()).select_from(RouteChange)).scalar() == 3
        assert s.execute(sa.select(sa.func.count()).select_from(Event)).scalar() == 3
    again = last_json(tg("maintain", "--json", env=env, cwd=tmp_path).stdout)
    assert again["deleted"] == {"sample": 0, "rollup": 0, "rollup_error": 0, "traffic": 0, "headroom": 0}
