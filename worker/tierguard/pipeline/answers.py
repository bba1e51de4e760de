"""Answers paid for, kept until recorded: no model call is bought twice.

After a message's calls, each job's results (the shadow answer compared or judged, its probe,
its noise twin, or its final error) are written to Redis under the job
(:data:`tierguard.contract.keys.ANSWERS`, sealed with ``TIERGUARD_PAYLOAD_KEYS`` when set)
before the recording transaction. A message run again (the database was down, the worker was
killed) finds them and records them without calling a model. They are deleted once recorded
and expire after ``TIERGUARD_JOB_PAYLOAD_TTL_S``. Redis failing here costs a paid call at worst
(the results are still recorded now): it is logged, never raised.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from tierguard import metrics
from tierguard.compare import Verdict
from tierguard.contract import keys
from tierguard.contract.job import ShadowJob
from tierguard.errors import PayloadInvalid
from tierguard.pipeline.calls import Answer
from tierguard.pipeline.results import JudgeUsage, Result

log = logging.getLogger(__name__)


def encode(result: Result) -> dict[str, Any]:
    """A result as JSON values; the request is left out (it is the job's own)."""
    job = {k: v for k, v in result.job.to_dict().items() if k != "request"}
    answer = None
    if result.answer is not None:
        answer = {k: v for k, v in dataclasses.asdict(result.answer).items() if k != "headers"}
    return {"job": job, "answer": answer,
            "verdict": dataclasses.asdict(result.verdict) if result.verdict else None,
            "error": list(result.error) if result.error else None, "attempt": result.attempt,
            "kind": result.kind, "judge": dataclasses.asdict(result.judge) if result.judge else None}


def decode(data: dict[str, Any], request: dict[str, Any]) -> Result:
    """The result :func:`encode` wrote, its job given ``request`` back."""
    job = ShadowJob.from_dict({**data["job"], "request": request})
    error = data.get("error")
    return Result(job, Answer(**data["answer"]) if data.get("answer") else None,
                  Verdict(**data["verdict"]) if data.get("verdict") else None,
                  (error[0], error[1]) if error else None, int(data["attempt"]),
                  kind=data.get("kind", "shadow"),
                  judge=JudgeUsage(**data["judge"]) if data.get("judge") else None)


def _owner(result: Result) -> str:
    """The message's job a result belongs to (a probe or noise twin: its parent)."""
    return result.job.job_id.split(":", 1)[0]


def keep(redis: Any, sealer: Any, results: list[Result], ttl_s: float) -> None:
    """Write each job's results before they are recorded (best effort)."""
    by_job: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        if result.answer is not None or result.judge is not None:  # something was paid for
            by_job.setdefault(_owner(result), []).append(encode(result))
    if not by_job or redis is None:
        return
    try:
        pipe = redis.pipeline(transaction=False)
        for job_id, encoded in by_job.items():
            text = json.dumps(encoded)
            pipe.set(keys.ANSWERS.format(job_id=job_id),
                     sealer.seal({"results": encoded}) if sealer is not None else text,
                     ex=max(1, int(ttl_s)))
        pipe.execute()
    except Exception as err:  # the results are recorded now anyway; only a rerun would pay again
        metrics.ANSWERS_NOT_KEPT.inc(len(by_job))
        log.warning("answers of %d job(s) not kept before recording (%s)", len(by_job), type(err).__name__)


def kept(redis: Any, sealer: Any, jobs: list[ShadowJob]) -> dict[str, list[Result]]:
    """job id -> the results kept for it by an earlier run of its message."""
    if not jobs or redis is None:
        return {}
    try:
        raw = redis.mget([keys.ANSWERS.format(job_id=j.job_id) for j in jobs])
    except Exception as err:
        log.warning("kept answers unreadable (%s); jobs are called again", type(err).__name__)
        return {}
    out = {}
    for job, value in zip(jobs, raw, strict=True):
        if value is None:
            continue
        try:
            encoded = sealer.open(value.decode())["results"] if sealer is not None else json.loads(value)
            out[job.job_id] = [decode(d, job.request) for d in encoded]
        except (PayloadInvalid, ValueError, TypeError, KeyError) as err:
            log.warning("job %s: kept answers unusable (%s); called again", job.job_id, err)
    return out


def forget(redis: Any, job_ids: list[str]) -> None:
    """Delete the kept answers of recorded jobs; never raises (they expire anyway)."""
    if not job_ids or redis is None:
        return
    try:
        redis.delete(*[keys.ANSWERS.format(job_id=j) for j in sorted(set(job_ids))])
    except Exception as err:
        log.info("kept answers not deleted (they expire): %s", type(err).__name__)
