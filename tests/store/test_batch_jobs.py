"""Batch shadows at rest (store/batch_jobs): a job is queued for a batch once, and never again once
recorded — also when its sample is recorded while it is being queued again."""

import datetime as dt

from sqlmodel import select

from tierguard.store import batch_jobs
from tierguard.store.db import make_engine, session, upgrade
from tierguard.store.tables import BatchJob, Sample


def _sample(job_id: str) -> Sample:
    now = dt.datetime.now(dt.UTC)
    return Sample(job_id=job_id, category="a", served_model="m", shadow_model="o", comparator="x",
                  reason="", request_hash="r", primary_hash="p", agree=True, requested_at=now,
                  created_at=now)


def test_a_job_queued_recorded_or_redelivered_is_kept_once(engine):
    jobs = [{"job_id": f"j{i}", "category": "a"} for i in range(3)]
    assert batch_jobs.enqueue(engine, jobs) == 3
    assert batch_jobs.enqueue(engine, jobs) == 0  # a redelivered message
    with session(engine) as s:
        s.add(_sample("j3"))
        s.commit()
    assert batch_jobs.enqueue(engine, [{"job_id": "j3", "category": "a"}]) == 0  # recorded already
    with session(engine) as s:
        assert sorted(r.job_id for r in s.exec(select(BatchJob))) == ["j0", "j1", "j2"]


def test_a_job_recorded_while_it_is_queued_again_waits_for_no_second_batch(postgres_url, monkeypatch):
    """A redelivered message queues a job again just as its batch's collection records it and deletes
    its row: between enqueue's first look for a sample and its insert. It is not kept (it would be
    sent, and paid for, in a second batch). PostgreSQL only: SQLite's sessions here take the write
    lock as they begin, so nothing commits in between."""
    engine = make_engine(postgres_url)
    upgrade(engine)
    insert = batch_jobs.upsert_insert

    def collected_meanwhile(s):
        with session(engine) as other:  # the collector's transactions, committed in between
            other.add(_sample("late"))
            other.commit()
        return insert(s)

    monkeypatch.setattr(batch_jobs, "upsert_insert", collected_meanwhile)
    assert batch_jobs.enqueue(engine, [{"job_id": "late", "category": "a"}]) == 0
    with session(engine) as s:
        assert s.exec(select(BatchJob)).all() == []
        assert [r.job_id for r in s.exec(select(Sample))] == ["late"]
