"""Challengers on the worker: which sampled jobs also ask one, and its evidence recorded.

A sampled job asks each of its category's challengers (:mod:`tierguard.routing.challengers`)
with that challenger's share, chosen by the job id (the same on every delivery), never one whose
limits the request exceeds. Its answer makes two twins (:func:`~tierguard.pipeline.shadow.
challenge_jobs`: against the reference, and against the rung in service when a cheaper one
serves), recorded as ``kind: challenger`` samples (never in a rung's agreement). In the same
transaction :func:`record` feeds each challenged job to the challenger's evidence in
``challenger_state`` (:mod:`tierguard.engine.challengers`), only for samples actually inserted,
so a redelivered message never counts twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from sqlmodel import Session, select

from tierguard.contract.job import ShadowJob, digest
from tierguard.engine import challengers as evidence
from tierguard.engine.rollouts import DEFAULT_STEPS
from tierguard.pipeline.results import Result
from tierguard.pipeline.rollouts import RolloutRefused, begin
from tierguard.pipeline.shadow import AGAINST_SERVING, CHALLENGE
from tierguard.policy import Policy
from tierguard.policy.model_limits import too_big
from tierguard.store.db import upsert_insert
from tierguard.store.tables import Category, ChallengerState

log = logging.getLogger(__name__)
Challengers = Callable[[str], list[tuple[str, float]]]  # category -> (model, share) of its challengers


def picked(policy: Policy, challengers: Challengers, job: ShadowJob) -> list[str]:
    """The challengers ``job`` also asks."""
    out = []
    for model, rate in challengers(job.category):
        h = digest(f"{job.job_id}:challenge:{model}")
        if model in (job.served_model, job.shadow_model) or int(h[:8], 16) / 2**32 >= rate:
            continue
        if too_big(policy.limits_for(model), job.request) is None:
            out.append(model)
    return out


def record(s: Session, policy: Policy, results: list[Result], inserted: set[str], now: dt.datetime) -> bool:
    """Feed every challenged job among ``results`` (samples in ``inserted``) to its evidence; rows
    locked in (category, model) order, so concurrent transactions never deadlock. Whether a
    rollout started (``auto_rollout``)."""
    by_id = {x.job.job_id: x for x in results}
    fed: dict[tuple[str, str], list[evidence.Outcome]] = {}
    routes: dict[str, str] = {}
    for x in results:
        job_id = x.job.job_id
        if x.kind != "challenger" or CHALLENGE not in job_id or job_id not in inserted:
            continue
        parent, _, model = job_id.partition(CHALLENGE)
        name = x.job.category
        route = routes[name] if name in routes else routes.setdefault(name, _route(s, policy, name))
        twin = by_id.get(f"{parent}{AGAINST_SERVING}{model}")
        outcome = _outcome(policy, x, by_id.get(parent), twin, route)
        fed.setdefault((x.job.category, model), []).append(outcome)
    started = False
    for (name, model), outcomes in sorted(fed.items()):
        started |= _feed(s, policy, name, model, outcomes, now)
    return started


def _feed(s: Session, policy: Policy, name: str, model: str, outcomes: list[evidence.Outcome],
          now: dt.datetime) -> bool:
    cat = policy.category(name)
    s.execute(upsert_insert(s)(ChallengerState.__table__).values(
        category=name, model=model, state={}, updated_at=now).on_conflict_do_nothing())
    row = s.exec(select(ChallengerState).where(ChallengerState.category == name,
                                               ChallengerState.model == model).with_for_update()).one()
    state, started = row.state, False
    checks = cat.escalation_watch if cat.escalate_on else None
    for outcome in outcomes:
        state, decision = evidence.feed(state, cat.challenge_engine, outcome, now.timestamp(), checks)
        if decision is not None:
            log.warning("category %s: challenger %s is eligible: %s", name, model, decision.reason)
            started |= cat.auto_rollout and _rolled_out(s, policy, name, model, state, outcomes[-1], now)
    row.state, row.updated_at = state, now
    s.add(row)
    return started


def _rolled_out(s: Session, policy: Policy, name: str, model: str, state: dict,
                last: evidence.Outcome, now: dt.datetime) -> bool:
    """``auto_rollout``: an eligible challenger not ``worse`` and cheaper than the model in service
    rolled out in the default steps; whether it started (not while a rollout is live, or pinned)."""
    cat = policy.category(name)
    if evidence.verdict(state, cat.reference, cat.threshold, cat.min_samples).name == "worse":
        return False
    price, serving = policy.pricing.get(model), policy.pricing.get(last.serving)
    if price is None or serving is None or price.input + price.output >= serving.input + serving.output:
        return False
    try:
        with s.begin_nested():
            begin(s, policy, name, model, DEFAULT_STEPS, 60.0, 100, "auto_rollout", now)
    except RolloutRefused as err:
        log.info("category %s: challenger %s eligible, not rolled out: %s", name, model, err)
        return False
    return True


def _route(s: Session, policy: Policy, name: str) -> str:
    """The category's route now (the row is locked in this transaction or soon will be)."""
    row = s.get(Category, name)
    return row.routed_model if row is not None else policy.category(name).initial_route


def _outcome(policy: Policy, x: Result, parent: Result | None, serving: Result | None,
             route: str) -> evidence.Outcome:
    """One challenged job: the challenger against the reference and the rung in service (``route``),
    and the rung in service against the reference (from the job's own shadow, when it compared
    those); a job served by another model (escalated, guarded, a rollout's share) counts against
    the reference only."""
    cat = policy.category(x.job.category)
    served = parent.job.served_model if parent is not None else cat.reference
    with_reference = x.verdict.agree if x.verdict is not None else None
    failed = (cat.checks.check_text(x.answer.text, x.answer.stop_reason) is not None
              if cat.escalate_on and x.answer is not None else None)
    if served != route:
        return evidence.Outcome(route, with_reference, None, None, failed)
    if served == cat.reference:
        return evidence.Outcome(served, with_reference, with_reference, True, failed)
    with_serving = serving.verdict.agree if serving is not None and serving.verdict is not None else None
    agreed = (parent.verdict.agree if parent is not None and parent.verdict is not None
              and parent.job.shadow_model == cat.reference else None)
    return evidence.Outcome(served, with_reference, with_serving, agreed, failed)
