"""Large shadow jobs: their payload kept in Redis beside the broker message, not in it.

A job whose request and answer exceed ``TIERGUARD_JOB_INLINE_MAX`` bytes travels as
a reference (``payload_ref``): the payload (request, primary text, and the seal
when payloads are sealed, so it is stored as sealed as it would have travelled)
is written once to Redis with a TTL by the publisher, loaded by the worker, and
deleted once the job is recorded. Retries and deferrals carry the reference
again, never the payload. A payload that expired first is the job's recorded
``payload_expired`` error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from tierguard.contract import keys
from tierguard.contract.job import ShadowJob

log = logging.getLogger(__name__)

EXPIRED = "payload_expired"


def size(job: ShadowJob) -> int:
    """Bytes the job's payload adds to a broker message (about)."""
    if job.sealed is not None:
        return len(job.sealed)
    return len(json.dumps({"r": job.request, "p": job.primary_text}))  # escaped, as kombu sends it


MESSAGE_BUDGET = 1024 * 1024  # bytes of job payloads one broker message carries (about)


def chunks(sized: list[tuple[ShadowJob, int]], budget: int) -> list[list[ShadowJob]]:
    """The jobs of (job, size) pairs in order, in groups whose sizes add up to at most ``budget``
    (one job at least)."""
    out: list[list[ShadowJob]] = []
    used = budget + 1
    for job, n in sized:
        if used + n > budget:
            out.append([])
            used = 0
        out[-1].append(job)
        used += n
    return out


def strip(job: ShadowJob) -> ShadowJob:
    """The job as it travels once its payload is stored: the reference alone."""
    if job.payload_ref is None:
        return job
    return dataclasses.replace(job, request={}, primary_text="", sealed=None)


def stash(redis: Any, jobs: list[ShadowJob], inline_max: int, ttl_s: float
          ) -> list[tuple[ShadowJob, int]]:
    """(job, bytes it adds to a message) for ``jobs``, every one larger than ``inline_max`` stored
    in Redis and sent by reference (one that cannot be stored travels whole: better a large
    message than a lost job)."""
    out, failed = [], False
    for job in jobs:
        n = 0 if job.payload_ref else size(job)
        if not failed and n > inline_max:
            stored = _stashed(redis, job, ttl_s)
            failed = stored is None  # Redis is failing: the rest are not tried (each would wait)
            job, n = (stored, 0) if stored else (job, n)
        out.append((job, n))
    return out


def _stashed(redis: Any, job: ShadowJob, ttl_s: float) -> ShadowJob | None:
    ref = keys.JOB_PAYLOAD.format(job_id=job.job_id)
    try:
        redis.set(ref, json.dumps({"request": job.request, "primary_text": job.primary_text,
                                   "sealed": job.sealed}, ensure_ascii=False), ex=max(1, int(ttl_s)))
    except Exception as err:
        log.warning("job %s: payload not stored (%s); it travels whole", job.job_id, type(err).__name__)
        return None
    return strip(dataclasses.replace(job, payload_ref=ref))


def load(redis: Any, jobs: list[ShadowJob]) -> tuple[list[ShadowJob], list[ShadowJob]]:
    """(jobs with their payload back, jobs whose payload expired); a payload that is not one is
    left empty: the job's seal or request then fails as that job's own error."""
    by_ref = [job for job in jobs if job.payload_ref is not None]
    if not by_ref:
        return jobs, []
    stored = dict(zip([j.job_id for j in by_ref], redis.mget([j.payload_ref for j in by_ref]),
                      strict=True))
    loaded, expired = [], []
    for job in jobs:
        if job.payload_ref is None:
            loaded.append(job)
        elif (raw := stored[job.job_id]) is None:
            expired.append(job)
        else:
            loaded.append(_restored(job, raw))
    return loaded, expired


def _restored(job: ShadowJob, raw: bytes) -> ShadowJob:
    try:
        payload = json.loads(raw)
        return dataclasses.replace(job, request=dict(payload["request"] or {}),
                                   primary_text=str(payload["primary_text"] or ""),
                                   sealed=payload["sealed"])
    except (ValueError, TypeError, KeyError):
        log.warning("job %s: its stored payload is not one; recorded as a bad request", job.job_id)
        return job
