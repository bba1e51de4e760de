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
import functools
import hmac
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tierguard import metrics
from tierguard.compare import Verdict
from tierguard.contract import keys
from tierguard.contract.job import ShadowJob
from tierguard.errors import PayloadInvalid
from tierguard.pipeline.calls import Answer
from tierguard.pipeline.locks import BEATS
from tierguard.pipeline.results import JudgeUsage, Result

log = logging.getLogger(__name__)


def _shallow(value: Any, skip: str = "") -> dict[str, Any]:
    """A dataclass's fields as a dict (nested values as they are: they are only ever JSON-encoded,
    and :func:`_json` turns a nested dataclass into a dict); ``dataclasses.asdict`` deep-copies
    every request, which cost a third of the worker's own CPU per job."""
    return {name: getattr(value, name) for name in _names(type(value), skip)}


@functools.cache
def _names(cls: type, skip: str) -> tuple[str, ...]:
    """A dataclass's field names but ``skip`` (``dataclasses.fields`` builds a tuple per call)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.name != skip)


def _json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode(result: Result) -> dict[str, Any]:
    """A result as JSON values; the request is left out (it is the job's own)."""
    return {"job": _shallow(result.job, "request"),
            "answer": _shallow(result.answer, "headers") if result.answer is not None else None,
            "verdict": _shallow(result.verdict) if result.verdict else None,
            "error": list(result.error) if result.error else None, "attempt": result.attempt,
            "kind": result.kind, "judge": _shallow(result.judge) if result.judge else None}


def decode(data: dict[str, Any], request: dict[str, Any]) -> Result:
    """The result :func:`encode` wrote, its job given ``request`` back."""
    job = ShadowJob.from_dict({**data["job"], "request": request})
    error = data.get("error")
    return Result(job, _answer(data["answer"]) if data.get("answer") else None,
                  Verdict(**data["verdict"]) if data.get("verdict") else None,
                  (error[0], error[1]) if error else None, int(data["attempt"]),
                  kind=data.get("kind", "shadow"),
                  judge=JudgeUsage(**data["judge"]) if data.get("judge") else None)


def _answer(data: dict[str, Any]) -> Answer:
    """An answer as :func:`encode` wrote it; fields a newer release added are left out."""
    known = {f.name for f in dataclasses.fields(Answer)}
    return Answer(**{k: v for k, v in data.items() if k in known})


def _owner(result: Result) -> str:
    """The message's job a result belongs to (a probe or noise twin: its parent)."""
    return result.job.job_id.split(":", 1)[0]


_KEEP = """
for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1]) end
"""


def keep(redis: Any, sealer: Any, results: list[Result], ttl_s: float) -> None:
    """Write each job's results before they are recorded (best effort)."""
    by_job: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        if result.answer is not None or result.judge is not None:  # something was paid for
            by_job.setdefault(_owner(result), []).append(encode(result))
    if not by_job or redis is None:
        return
    try:  # one command for the message: SET … EX each
        redis.eval(_KEEP, len(by_job), *[keys.ANSWERS.format(job_id=j) for j in by_job], max(1, int(ttl_s)),
                   *[_wrapped(sealer, encoded) for encoded in by_job.values()])
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
            results = [decode(d, job.request) for d in _unwrapped(sealer, value)]
            if any(_owner(r) != job.job_id for r in results):
                raise PayloadInvalid("kept under another job's id")
            out[job.job_id] = results
        except (PayloadInvalid, ValueError, TypeError, KeyError) as err:
            log.warning("job %s: kept answers unusable (%s); called again", job.job_id, err)
    return out


def _wrapped(sealer: Any, encoded: list[dict[str, Any]]) -> str:
    """Sealed with payload keys; with a signing key only, in clear with a MAC; else in clear
    (the results serialised once in every case)."""
    text = json.dumps(encoded, default=_json)
    if sealer is None:
        return text
    if sealer.seals:
        return sealer.seal_text(f'{{"results": {text}}}')
    return f'{{"results": {text}, "mac": {json.dumps(sealer.mac(text.encode()))}}}'


def _unwrapped(sealer: Any, value: bytes) -> list[dict[str, Any]]:
    if sealer is None:
        return json.loads(value)
    if sealer.seals:
        return sealer.open(value.decode())["results"]
    data = json.loads(value)
    expected = sealer.mac(json.dumps(data["results"]).encode()) or ""
    if not isinstance(data.get("mac"), str) or not hmac.compare_digest(data["mac"], expected):
        raise PayloadInvalid("their MAC does not match (altered in Redis)")
    return data["results"]


_TAKEN = -3  # what _CLAIM answers for a key it set (PTTL never answers less than -2)
_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, '1', 'NX', 'PX', ARGV[1]) then out[i] = -3
  else out[i] = redis.call('PTTL', key) end
end
return out
"""


def claim(redis: Any, job_ids: list[str], ttl_s: float) -> dict[str, float]:
    """Claim the jobs this run is about to call; job id -> seconds left on another live run's
    claim, for those it holds (a redelivered message while the first run still calls). Fails
    open: no Redis, no claims (a 429 or the recording's idempotence still bound the cost)."""
    if not job_ids or redis is None:
        return {}
    try:  # one round trip: SET NX PX each, and the time left on those another run holds
        left = redis.eval(_CLAIM, len(job_ids), *[keys.CLAIM.format(job_id=j) for j in job_ids],
                          max(1, int(ttl_s * 1000)))
        return {j: max(1.0, ms / 1000) for j, ms in zip(job_ids, left, strict=True) if ms != _TAKEN}
    except Exception as err:
        log.warning("jobs not claimed (%s); called without a claim", type(err).__name__)
        return {}


class Claims(dict[str, float]):
    """What :func:`claimed` yields: job id -> seconds left on another live run's claim (the busy
    jobs), and ``mine``: the jobs this run claimed and has not released yet."""

    def __init__(self, busy: dict[str, float], mine: list[str]):
        super().__init__(busy)
        self.mine = mine


@contextmanager
def claimed(redis: Any, job_ids: list[str], ttl_s: float) -> Iterator[Claims]:
    """:func:`claim` the jobs for the block (the busy ones are yielded), kept alive by a heartbeat
    while it runs (a killed worker's claims lapse a TTL later), released after it (unless
    :func:`forget` released them with the answers already)."""
    busy = claim(redis, job_ids, ttl_s)
    claims = Claims(busy, [j for j in job_ids if j not in busy])

    def extend() -> None:  # lapsed claims: another run may call them (a rare double cost)
        pipe = redis.pipeline(transaction=False)
        for job_id in claims.mine:  # (none once forget released them)
            pipe.pexpire(keys.CLAIM.format(job_id=job_id), max(1, int(ttl_s * 1000)))
        pipe.execute()

    try:
        if claims.mine and redis is not None:
            with BEATS.beating(extend, ttl_s / 3, "claims"):
                yield claims
        else:
            yield claims
    finally:
        release(redis, claims.mine)


def release(redis: Any, job_ids: list[str]) -> None:
    """Drop this run's claims (its jobs are recorded, or sent again); never raises."""
    if not job_ids or redis is None:
        return
    try:
        redis.delete(*_claim_keys(job_ids))
    except Exception as err:
        log.info("claims not released (they expire): %s", type(err).__name__)


def _claim_keys(job_ids: list[str]) -> list[str]:
    return [keys.CLAIM.format(job_id=j) for j in sorted(set(job_ids))]


def forget(redis: Any, job_ids: list[str], *, payloads: Sequence[str] = (),
           claims: Claims | None = None) -> None:
    """Delete the kept answers of recorded jobs, with the stored ``payloads`` (their keys) and this
    run's ``claims``, in one command; never raises (they expire anyway)."""
    mine = claims.mine if claims is not None else []
    names = [keys.ANSWERS.format(job_id=j) for j in sorted(set(job_ids))] + sorted(set(payloads))
    if not names + mine or redis is None:
        return
    try:
        redis.delete(*names, *_claim_keys(mine))
    except Exception as err:
        log.log(logging.WARNING if payloads else logging.INFO,
                "kept answers, stored payloads or claims not deleted (they expire): %s", type(err).__name__)
        return
    if claims is not None:
        claims.mine = []
