"""Batch shadows at rest: the jobs waiting for a Message Batch and the batches sent.

A job in ``batch_job`` is waiting while its ``batch_id`` is null, then belongs to
one ``shadow_batch`` until its result is recorded, when its row is deleted (the
sample is the record). A batch is ``submitting`` from the moment it holds jobs,
``creating`` from just before its create is sent (``submitted_at``) until the API's id
is stored (a create whose answer was lost — since ``ended_at`` — stays ``creating``
until it is found among the API's batches or known not to have landed), then
``in_progress`` until its results are recorded (``recorded``), or ``refused`` /
``lost`` when the API would not take it or no longer knows it (its jobs go back to
waiting or are recorded as errors).
Every step is one transaction, so any process can die between two of them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tierguard.store.db import session, upsert_insert, utcnow
from tierguard.store.tables import BatchJob, Sample, ShadowBatch

OPEN = ("submitting", "creating", "in_progress")


def enqueue(engine: Engine, payloads: list[dict[str, Any]], attempt: int = 1) -> int:
    """Queue jobs (``ShadowJob.to_dict()`` forms) for a batch; jobs already queued or recorded are
    left alone (a redelivered message sends nothing twice). Returns how many were new."""
    if not payloads:
        return 0
    ids = [p["job_id"] for p in payloads]
    now = utcnow()
    with session(engine) as s:
        recorded = _recorded(s, ids)
        rows = [{"job_id": p["job_id"], "category": p["category"], "payload": p, "attempt": attempt,
                 "queued_at": now} for p in payloads if p["job_id"] not in recorded]
        if not rows:
            return 0
        table = BatchJob.__table__
        stmt = upsert_insert(s)(table).on_conflict_do_nothing().returning(table.c.job_id)
        new = [job_id for (job_id,) in s.execute(stmt, rows).all()]
        # Looked at again once inserted: a job whose sample was recorded, and its row deleted, after
        # the first look (a collection finishing meanwhile) would otherwise wait for a second batch.
        late = _recorded(s, new)
        for chunk in _chunks(sorted(late)):
            s.execute(sa.delete(BatchJob).where(BatchJob.job_id.in_(chunk)))
        s.commit()
    return len(new) - len(late)


def _recorded(s: Any, ids: list[str]) -> set[str]:
    return {j for chunk in _chunks(ids)
            for j in s.execute(sa.select(Sample.job_id).where(Sample.job_id.in_(chunk))).scalars()}


def waiting(engine: Engine) -> dict[str, tuple[int, dt.datetime]]:
    """Per category: (jobs waiting, when the oldest was queued)."""
    with session(engine) as s:
        q = (sa.select(BatchJob.category, sa.func.count(), sa.func.min(BatchJob.queued_at))
             .where(BatchJob.batch_id.is_(None)).group_by(BatchJob.category))
        return {name: (int(n), aware(oldest)) for name, n, oldest in s.execute(q).all()}


def claim(engine: Engine, category: str, limit: int) -> str | None:
    """Put up to ``limit`` of ``category``'s oldest waiting jobs in a new ``submitting`` batch."""
    batch_id = "tgb_" + uuid.uuid4().hex
    with session(engine) as s:
        picked = (sa.select(BatchJob.job_id)
                  .where(BatchJob.category == category, BatchJob.batch_id.is_(None))
                  .order_by(BatchJob.queued_at, BatchJob.job_id).limit(limit)
                  .with_for_update(skip_locked=True))
        ids = list(s.execute(picked).scalars())
        if not ids:
            return None
        for chunk in _chunks(ids):
            s.execute(sa.update(BatchJob).where(BatchJob.job_id.in_(chunk), BatchJob.batch_id.is_(None))
                      .values(batch_id=batch_id))
        s.add(ShadowBatch(id=batch_id, category=category, status="submitting", jobs=len(ids),
                          created_at=utcnow()))
        s.commit()
    return batch_id


def _all(engine: Engine, q: Any) -> list[Any]:
    with session(engine) as s:
        rows = s.execute(q).scalars().all()
        s.expunge_all()
        return list(rows)


def batches(engine: Engine, status: str) -> list[ShadowBatch]:
    return _all(engine, sa.select(ShadowBatch).where(ShadowBatch.status == status)
                .order_by(ShadowBatch.created_at))


def jobs_of(engine: Engine, batch_id: str) -> list[BatchJob]:
    return _all(engine, sa.select(BatchJob).where(BatchJob.batch_id == batch_id)
                .order_by(BatchJob.job_id))


def creating(engine: Engine, batch_id: str, sent: int) -> bool:
    """A ``submitting`` batch whose create (``sent`` requests) is about to go: ``creating`` from now
    (``submitted_at``), committed first; False if it was not ``submitting`` (taken meanwhile)."""
    return _moved(engine, batch_id, "submitting", status="creating", jobs=sent, submitted_at=utcnow(),
                  ended_at=None, error=None)


def unanswered(engine: Engine, batch_id: str, why: str, at: dt.datetime | None = None) -> bool:
    """A ``creating`` batch whose create's answer is known lost (``why``) since ``at`` (now): kept in
    ``ended_at`` while it is ``creating`` (``submitted_at`` stays when the create was sent)."""
    return _moved(engine, batch_id, "creating", error=why[:2000], ended_at=at or utcnow())


def reopen(engine: Engine, batch_id: str) -> bool:
    """A ``creating`` batch the API did not take: ``submitting`` again (sent on the next try)."""
    return _moved(engine, batch_id, "creating", status="submitting", submitted_at=None, ended_at=None,
                  error=None)


def submitted(engine: Engine, batch_id: str, api_id: str) -> bool:
    """A ``creating`` batch the API took as ``api_id``: ``in_progress``; False if it was no longer
    ``creating`` (another worker, once this one's lock lapsed, had sent or found it)."""
    return _moved(engine, batch_id, "creating", api_id=api_id, status="in_progress",
                  submitted_at=utcnow(), ended_at=None, error=None)


def api_id_of(engine: Engine, batch_id: str) -> str | None:
    with session(engine) as s:
        return s.execute(sa.select(ShadowBatch.api_id).where(ShadowBatch.id == batch_id)).scalar()


def _moved(engine: Engine, batch_id: str, was: str, **values: Any) -> bool:
    with session(engine) as s:
        moved = s.execute(sa.update(ShadowBatch).where(ShadowBatch.id == batch_id,
                                                       ShadowBatch.status == was)
                          .values(**values)).rowcount
        s.commit()
    return moved == 1


def creating_sizes(engine: Engine) -> set[int]:
    """The request counts of the batches ``creating`` now."""
    with session(engine) as s:
        return {int(n) for n in s.execute(sa.select(ShadowBatch.jobs)
                                          .where(ShadowBatch.status == "creating")).scalars()}


def known(engine: Engine, api_ids: list[str]) -> set[str]:
    """Those of ``api_ids`` some batch here holds already."""
    if not api_ids:
        return set()
    with session(engine) as s:
        return set(s.execute(sa.select(ShadowBatch.api_id).where(ShadowBatch.api_id.in_(api_ids)))
                   .scalars())


IN_CHUNK = 5_000  # ids per IN (...): PostgreSQL takes at most 65,535 parameters a statement


def _chunks(ids: list[str]) -> list[list[str]]:
    return [ids[i:i + IN_CHUNK] for i in range(0, len(ids), IN_CHUNK)]


def split(engine: Engine, batch_id: str) -> str | None:
    """Move half of a ``submitting`` batch's jobs into a new one (the API refused it whole)."""
    new_id = "tgb_" + uuid.uuid4().hex
    with session(engine) as s:
        ids = list(s.execute(sa.select(BatchJob.job_id).where(BatchJob.batch_id == batch_id)
                             .order_by(BatchJob.job_id)).scalars())
        if len(ids) < 2:
            return None
        old = s.get(ShadowBatch, batch_id)
        half = ids[len(ids) // 2:]
        for chunk in _chunks(half):
            s.execute(sa.update(BatchJob).where(BatchJob.job_id.in_(chunk)).values(batch_id=new_id))
        s.execute(sa.update(ShadowBatch).where(ShadowBatch.id == batch_id)
                  .values(jobs=len(ids) - len(half)))
        s.add(ShadowBatch(id=new_id, category=old.category if old else "", status="submitting",
                          jobs=len(half), created_at=utcnow()))
        s.commit()
    return new_id


def settle(engine: Engine, batch_id: str, done: list[str], retry: list[str],
           status: str | None = None, counts: dict[str, int] | None = None,
           error: str | None = None) -> None:
    """Recorded jobs leave; jobs to retry wait again (one attempt more); the batch is closed with
    ``status`` once it holds no job."""
    with session(engine) as s:
        for chunk in _chunks(done):
            s.execute(sa.delete(BatchJob).where(BatchJob.job_id.in_(chunk)))
        for chunk in _chunks(retry):
            s.execute(sa.update(BatchJob).where(BatchJob.job_id.in_(chunk))
                      .values(batch_id=None, attempt=BatchJob.attempt + 1))
        if status is not None:
            left = s.execute(sa.select(sa.func.count()).select_from(BatchJob)
                             .where(BatchJob.batch_id == batch_id)).scalar_one()
            if not left:
                values: dict[str, Any] = {"status": status, "ended_at": utcnow()}
                if counts is not None:
                    values["request_counts"] = counts
                if error is not None:
                    values["error"] = error[:2000]
                s.execute(sa.update(ShadowBatch).where(ShadowBatch.id == batch_id).values(**values))
        s.commit()


def summary(engine: Engine) -> dict[str, dict[str, int]]:
    """Per category: jobs waiting for a batch, jobs in open batches, batches open."""
    out: dict[str, dict[str, int]] = {}
    with session(engine) as s:
        for name, n in s.execute(sa.select(BatchJob.category, sa.func.count())
                                 .where(BatchJob.batch_id.is_(None)).group_by(BatchJob.category)):
            out.setdefault(name, {"waiting": 0, "in_batches": 0, "open": 0})["waiting"] = int(n)
        for name, n, jobs in s.execute(sa.select(ShadowBatch.category, sa.func.count(),
                                                 sa.func.sum(ShadowBatch.jobs))
                                       .where(ShadowBatch.status.in_(OPEN))
                                       .group_by(ShadowBatch.category)):
            entry = out.setdefault(name, {"waiting": 0, "in_batches": 0, "open": 0})
            entry["open"], entry["in_batches"] = int(n), int(jobs or 0)
    return out


def aware(value: dt.datetime) -> dt.datetime:
    """A time read back from the database, in UTC (SQLite's come naive)."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
