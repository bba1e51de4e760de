"""A result as a ``sample`` row: its values (hashes, excerpts, prices) and the idempotent insert."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from tierguard.compare import Verdict
from tierguard.contract.fingerprint import prompt_fingerprint
from tierguard.contract.job import ShadowJob, digest, parse_time
from tierguard.contract.messages import content_text
from tierguard.pipeline.results import JudgeUsage
from tierguard.policy import CategoryPolicy, Policy
from tierguard.store.db import dialect_insert, execute_many, utcnow
from tierguard.store.tables import Sample

if TYPE_CHECKING:
    from tierguard.pipeline.calls import Answer


def _excerpt(policy: Policy, text: str | None) -> str | None:
    if text is None or policy.payloads.store != "excerpt":
        return None
    return text[: policy.payloads.excerpt_chars]


def _comparator_name(cat: CategoryPolicy) -> str:
    spec = cat.comparator
    return spec if isinstance(spec, str) else str(spec.get("type"))


def _request_text(request: dict) -> str:
    messages = request.get("messages") or []
    return content_text(messages[-1].get("content", "")) if messages else ""


def sample_values(policy: Policy, job: ShadowJob, answer: Answer | None, verdict: Verdict | None,
                  error: tuple[str, str] | None, attempt: int, kind: str = "shadow",
                  judge: JudgeUsage | None = None) -> dict:
    cat = policy.category(job.category)
    values = dict(
        job_id=job.job_id, category=job.category, kind=kind, served_model=job.served_model,
        shadow_model=job.shadow_model, comparator=_comparator_name(cat), attempts=attempt,
        rung=rung_of(cat, job) if kind in ("shadow", "probe") else None,
        agree=verdict.agree if verdict else None, score=verdict.score if verdict else None,
        reason=verdict.reason if verdict else (error[1] if error else ""),
        detail=verdict.detail if verdict else {},
        error=error[0] if error else None,
        primary_latency_ms=job.primary_latency_ms,
        primary_input_tokens=job.primary_input_tokens,
        primary_output_tokens=job.primary_output_tokens,
        primary_cost_usd=policy.cost_usd(job.served_model, job.primary_input_tokens,
                                         job.primary_output_tokens, job.primary_cache_write_tokens,
                                         job.primary_cache_read_tokens),
        request_hash=digest(job.request), primary_hash=digest(job.primary_text),
        request_excerpt=_excerpt(policy, _request_text(job.request)),
        primary_excerpt=_excerpt(policy, job.primary_text),
        prompt_fingerprint=fingerprint_of(job), served_snapshot=job.served_snapshot,
        requested_at=parse_time(job.requested_at), created_at=utcnow(),
    )
    if answer is not None:
        values.update(
            shadow_latency_ms=answer.latency_ms, shadow_input_tokens=answer.input_tokens,
            shadow_output_tokens=answer.output_tokens,
            shadow_cost_usd=policy.cost_usd(job.shadow_model, answer.input_tokens,
                                            answer.output_tokens, answer.cache_write_tokens,
                                            answer.cache_read_tokens, answer.batch, answer.platform),
            shadow_via="batch" if answer.batch else None, shadow_snapshot=answer.snapshot,
            shadow_hash=digest(answer.text), shadow_excerpt=_excerpt(policy, answer.text))
    if judge is not None:
        values.update(judge_model=judge.model, judge_input_tokens=judge.input_tokens,
                      judge_output_tokens=judge.output_tokens,
                      judge_cost_usd=policy.cost_usd(judge.model, judge.input_tokens,
                                                     judge.output_tokens, judge.cache_write_tokens,
                                                     judge.cache_read_tokens, platform=judge.platform))
    return values


def fingerprint_of(job: ShadowJob) -> str | None:
    """The job's prompt fingerprint; None when its request is not there (a payload expired or
    never opened: no ``messages``), rather than the fingerprint of an empty body."""
    return prompt_fingerprint(job.request) if job.request.get("messages") else None


def rung_of(cat: CategoryPolicy, job: ShadowJob) -> str | None:
    """The rung a sample compares with the reference (None: not a rung-vs-reference sample)."""
    below = cat.rungs[:-1]
    if job.served_model == cat.reference and job.shadow_model in below:
        return job.shadow_model
    if job.shadow_model == cat.reference and job.served_model in below:
        return job.served_model
    return None


def recorded_ids(engine: Engine, job_ids: list[str]) -> set[str]:
    """The ids among ``job_ids`` that already have a sample (one query on a plain connection: a
    publisher's every message asks it)."""
    with engine.connect() as c:
        if engine.dialect.name == "postgresql":  # one bound array: no IN list expanded per call
            return set(c.exec_driver_sql(_RECORDED_PG, (job_ids,)).scalars())
        return set(c.execute(sa.select(Sample.job_id).where(Sample.job_id.in_(job_ids))).scalars())


_RECORDED_PG = f"SELECT job_id FROM {Sample.__tablename__} WHERE job_id = ANY(%s)"


def insert_samples(s: Session, rows: list[dict]) -> set[str]:
    """Insert sample rows, skipping job ids already recorded; returns the ids inserted."""
    if not rows:
        return set()
    table = Sample.__table__
    unstamped = [row for row in rows if row.get("requested_at") is None]
    if unstamped:
        # requested_at is part of the key on PostgreSQL: a job without one gets its
        # created_at, which differs per delivery, so look for an earlier delivery first.
        ids = [row["job_id"] for row in unstamped]
        seen = set(s.execute(sa.select(table.c.job_id).where(table.c.job_id.in_(ids))).scalars())
        rows = [row for row in rows if row["job_id"] not in seen]
        stamp: dict[str, Any] = {}
        for row in unstamped:  # every copy of a job in this batch: one stamp, one key
            row["requested_at"] = stamp.setdefault(row["job_id"], row["created_at"])
        if not rows:
            return set()
    keys = sorted(set().union(*rows))
    rows = [{k: row.get(k) for k in keys} for row in rows]
    return set(execute_many(s, "insert_samples", _insert(s.get_bind().dialect.name), rows, returning=True))


@functools.cache
def _insert(dialect: str) -> Any:
    """The sample insert (new job ids only, returning them) for ``dialect``, built once."""
    table = Sample.__table__
    return dialect_insert(dialect)(table).on_conflict_do_nothing().returning(table.c.job_id)
