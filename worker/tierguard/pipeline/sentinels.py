"""Sentinels: a category's known answers, run against every rung on a schedule.

A sentinel file is JSON lines in the ``evaluate`` format (a Messages API body without ``model``)
plus ``expected``, the right answer's text. :func:`run_category` sends every case to every rung of
the category (ladder rungs, the reference included; two-model policies: candidate and reference)
with the worker's retries, compares each answer with ``expected`` through the category's
comparator (the judge too, reading ``expected`` as the reference answer), records each as a
``sample`` of kind ``sentinel`` (``served_model`` = ``shadow_model`` = the rung; its cost in
``shadow_cost_usd``; never fed to the engine) and settles each rung's accuracy against its
baseline (:mod:`tierguard.pipeline.baselines`). :func:`run_due` is beat's pass: every listed
category whose last run is ``every_hours`` old, each under its own Redis lock.

Sentinel calls yield to production as shadows do (:mod:`tierguard.headroom.deferral`): a call
waits while its model is paused after a 429, short of rate-limit headroom or at its
``shadow_limits`` cap, and is recorded as ``skipped`` after
``shadow_headroom.max_defer_minutes``; a 429 pauses the model's shadows; answers' rate-limit
headers are kept and their output tokens counted against the caps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tierguard.config import Settings
from tierguard.contract import keys
from tierguard.contract.job import ShadowJob, digest
from tierguard.errors import PermanentCallError, RetryableCallError, SentinelError
from tierguard.headroom import ratelimits
from tierguard.headroom.caps import ShadowCaps
from tierguard.headroom.deferral import Room
from tierguard.pipeline.baselines import Score, settle
from tierguard.pipeline.calls import Answer, call_model_async
from tierguard.pipeline.fanout import async_client
from tierguard.pipeline.judging import JudgeCall, needs_judge
from tierguard.pipeline.locks import held
from tierguard.pipeline.recorder import record_many
from tierguard.pipeline.results import Result
from tierguard.pipeline.shadow import SKIPPED, result_of
from tierguard.policy import CategoryPolicy, Policy
from tierguard.policy.model_limits import estimate_input_tokens
from tierguard.store.db import session, utcnow
from tierguard.store.tables import SentinelRun

log = logging.getLogger(__name__)
KIND = "sentinel"
LOCK_TTL_S = 30.0  # a category's run lock lapses this long after its holder dies
ClientFactory = Callable[[], anthropic.AsyncAnthropic]


def shadow_clients(settings: Settings, policy: Callable[[], Policy]) -> ClientFactory:
    """Clients as the workers call models: ``TIERGUARD_SHADOW_API_KEY`` and the platform when set."""
    key = settings.shadow_api_key.get_secret_value() if settings.shadow_api_key else None
    return lambda: async_client(settings.shadow_timeout, api_key=key, platform=settings.shadow_platform,
                                policy=policy)


def shadow_room(settings: Settings, policy: Policy, r: redis_lib.Redis) -> Room:
    """The room shadows have, as a worker sees it (its key's scope, the policy's limits)."""
    key = settings.shadow_api_key.get_secret_value() if settings.shadow_api_key else None
    return Room(r, ratelimits.fingerprint(key) if key else "", policy.shadow_headroom,
                policy.shadow_limits, ShadowCaps(settings.redis_url))


def read_sentinels(path: Path) -> list[tuple[dict[str, Any], str]]:
    """(request, expected) per case; :class:`SentinelError` naming the file and line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise SentinelError(f"{path}: cannot read ({err.strerror})") from None
    cases = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except ValueError as err:
            raise SentinelError(f"{path}: line {i}: not JSON ({err})") from None
        if not isinstance(case, dict) or not isinstance(case.get("messages"), list):
            raise SentinelError(f"{path}: line {i}: needs a Messages API body with 'messages'")
        expected = case.pop("expected", None)
        if not isinstance(expected, str):
            raise SentinelError(f"{path}: line {i}: needs 'expected', the right answer's text")
        for key in ("model", "stream"):
            case.pop(key, None)
        case.setdefault("max_tokens", 1024)
        cases.append((case, expected))
    if not cases:
        raise SentinelError(f"{path}: no cases")
    return cases


def missing_files(policy: Policy) -> list[str]:
    """Listed categories' sentinel files that are not there, named by the field that names them."""
    out = []
    for name, overrides in policy.categories.items():
        path = policy.sentinel_file(name)
        if path is not None and not path.is_file():
            where = f"categories.{name}" if overrides.sentinels is not None else "defaults"
            out.append(f"{where}.sentinels.file: {path}: no such file")
    return list(dict.fromkeys(out))


def _job(cat: CategoryPolicy, run: str, i: int, model: str, request: dict[str, Any], expected: str,
         at: str) -> ShadowJob:
    return ShadowJob(job_id=f"sentinel-{run}-{i}-{model}", category=cat.name, served_model=model,
                     shadow_model=model, request=request, primary_text=expected, requested_at=at)


class _NoRoom(Exception):
    """The model had no room for longer than ``shadow_headroom.max_defer_minutes``."""


async def _room_for(room: Room | None, model: str, request: dict[str, Any], deadline: float) -> None:
    """Wait while ``model`` is paused, short of headroom or capped; :class:`_NoRoom` past
    ``deadline``. Redis away: the call goes (a 429 will pause it)."""
    while room is not None:
        try:
            until = room.until(model, room.shut([model]))
        except redis_lib.RedisError:
            return
        now = time.time()
        if until <= now:
            until = room.capped(model, estimate_input_tokens(request)) or 0.0
        if until <= now:
            return
        if until > deadline:
            raise _NoRoom(f"rate_headroom: {model} paused or capped past "
                          "shadow_headroom.max_defer_minutes")
        await asyncio.sleep(until - now)


async def _answer(room: Room | None, job: ShadowJob, client: anthropic.AsyncAnthropic, attempts: int,
                  limit_s: float) -> Answer:
    """One case's answer with the worker's retries, yielding to production's rate limits."""
    model, deadline = job.shadow_model, time.time() + limit_s  # one wait limit per case
    for attempt in range(1, attempts + 1):
        await _room_for(room, model, job.request, deadline)
        try:
            answer = await call_model_async(client, model, job.request)
        except RetryableCallError as err:
            paused = room is not None and err.kind == "rate_limited"
            if paused:  # the model's shadows pause; the pause is this call's wait too
                room.pause(model, err.retry_after if err.retry_after is not None else 60.0)  # type: ignore[union-attr]
            if attempt == attempts:
                raise
            if not paused:
                await asyncio.sleep(min(err.retry_after or 0.5 * 2 ** (attempt - 1), 30.0))
            continue
        if room is not None:
            room.remember({model: answer.headers} if answer.headers is not None else {})
            room.spent({model: answer.output_tokens or 0})
        return answer
    raise AssertionError("unreachable")


async def _one(policy: Policy, job: ShadowJob, client: anthropic.AsyncAnthropic, attempts: int,
               judge: JudgeCall | None, room: Room | None = None) -> Result:
    """One case on one rung: its answer compared with ``expected`` (an error is never wrong)."""
    limit_s = policy.shadow_headroom.max_defer_minutes * 60
    try:
        answer = await _answer(room, job, client, attempts, limit_s)
    except _NoRoom as why:
        return Result(job, None, None, (SKIPPED, str(why)), attempts, kind=KIND)
    except (RetryableCallError, PermanentCallError) as err:
        return dataclasses.replace(result_of(policy, job, None, err, attempts), kind=KIND)
    if judge is None:
        return dataclasses.replace(result_of(policy, job, answer, None, attempts), kind=KIND)
    cat = policy.category(job.category)
    verdict, why, usage = await judge.ask(cat.compare, cat.judge_model or cat.reference,  # type: ignore[arg-type]
                                          job.request, job.primary_text, answer.text, job.job_id)
    error = None if verdict is not None else ("judge_error", why or "judge failed")
    return Result(job, answer, verdict, error, attempts, kind=KIND, judge=usage)


async def _calls(policy: Policy, cat: CategoryPolicy, jobs: list[ShadowJob], client: ClientFactory,
                 attempts: int, concurrency: int, room: Room | None) -> list[Result]:
    sdk = client()
    gate = asyncio.Semaphore(concurrency)
    judge = JudgeCall(lambda: sdk, attempts=attempts) if needs_judge(cat) else None

    async def gated(job: ShadowJob) -> Result:
        async with gate:
            return await _one(policy, job, sdk, attempts, judge, room)

    try:
        return list(await asyncio.gather(*(gated(j) for j in jobs)))
    finally:
        await sdk.close()


def _score(model: str, results: list[Result], cases_hash: str) -> Score:
    compared = [r for r in results if r.verdict is not None and r.error is None]
    snapshots = Counter(r.answer.snapshot or model for r in results if r.answer is not None)
    snapshot = snapshots.most_common(1)[0][0] if snapshots else model
    right = sum(r.verdict.agree for r in compared)  # type: ignore[union-attr]
    accuracy = round(right / len(compared), 6) if compared else None
    return Score(model, snapshot, accuracy, len(results), len(compared), cases_hash)


def run_category(engine: Engine, policy: Policy, category: str, *, client: ClientFactory | None = None,
                 attempts: int = 6, concurrency: int = 8, room: Room | None = None
                 ) -> dict[str, dict[str, Any]]:
    """Run ``category``'s sentinels now: per rung ``{"accuracy", "baseline", "snapshot", "cases",
    "failed", "compared", "baseline_snapshot", "reason", "event"}``; ``room`` (the workers' rate
    limit room) makes the calls yield to production."""
    cat = policy.category(category)
    path = policy.sentinel_file(category)
    if category not in policy.categories or path is None:
        raise SentinelError(f"categories.{category}.sentinels: not set for this category")
    cases = read_sentinels(path)
    version = digest(cases)[:16]  # the file's cases: baselines belong to this version of them
    run, now = uuid.uuid4().hex[:10], utcnow()
    jobs = [_job(cat, run, i, m, req, expected, now.isoformat())
            for i, (req, expected) in enumerate(cases) for m in cat.rungs]
    factory = client or (lambda: anthropic.AsyncAnthropic(max_retries=0))
    results = asyncio.run(_calls(policy, cat, jobs, factory, attempts, concurrency, room))
    record_many(engine, None, policy, results)
    out: dict[str, dict[str, Any]] = {}
    with session(engine) as s:
        for model in cat.rungs:
            score = _score(model, [r for r in results if r.job.shadow_model == model], version)
            standing, event = settle(s, policy, category, score, run, now)
            out[model] = {"accuracy": score.accuracy, "baseline": standing.baseline,
                          "snapshot": score.snapshot, "cases": score.cases, "failed": standing.failed,
                          "compared": score.compared, "baseline_snapshot": standing.baseline_snapshot,
                          "reason": standing.reason, "event": event is not None}
        s.commit()
    for model, r in out.items():
        (log.warning if r["failed"] else log.info)("sentinels %s on %s: %s", category, model, r["reason"])
    return out


def run_locked(r: redis_lib.Redis, engine: Engine, policy: Policy, category: str,
               **kw: Any) -> dict[str, dict[str, Any]] | None:
    """:func:`run_category` under the category's lock; None when a run of it is under way."""
    with held(r, keys.SENTINEL_LOCK.format(category=category), LOCK_TTL_S) as ours:
        if not ours:
            return None
        return run_category(engine, policy, category, **kw)


def due(engine: Engine, policy: Policy, now: dt.datetime | None = None) -> list[str]:
    """Listed categories with sentinels whose last run is ``every_hours`` old (or never ran)."""
    now = now or utcnow()
    with session(engine) as s:
        last = dict(s.execute(sa.select(SentinelRun.category, sa.func.max(SentinelRun.at))
                              .group_by(SentinelRun.category)).all())
    out = []
    for name in sorted(policy.categories):
        spec = policy.category(name).sentinels
        at = last.get(name)
        if at is not None and at.tzinfo is None:  # SQLite hands back naive UTC
            at = at.replace(tzinfo=dt.UTC)
        if spec is not None and (at is None or now - at >= dt.timedelta(hours=spec.every_hours)):
            out.append(name)
    return out


def run_due(r: redis_lib.Redis, engine: Engine, policy: Policy, **kw: Any) -> dict[str, Any]:
    """Beat's pass: every due category, one after another; one that cannot run is logged and
    left for the next pass, never in the others' way."""
    ran: dict[str, Any] = {}
    for name in due(engine, policy):
        try:
            found = run_locked(r, engine, policy, name, **kw)
        except (SentinelError, redis_lib.RedisError, sa.exc.SQLAlchemyError) as err:
            log.warning("sentinels of %s not run: %s", name, err)
            ran[name] = {"error": str(err)}
            continue
        ran[name] = found if found is not None else {"busy": True}
    return ran
