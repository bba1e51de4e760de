"""Record shadow results and act on them, in a single database transaction.

Insert the samples (idempotent on the job id). For each conclusive
rung-vs-reference comparison, lock its category row (in name order, so
concurrent transactions never deadlock), expire a pin whose time is up, feed
the fingerprint tracker (:mod:`tierguard.engine.fingerprints`: a new prompt or
snapshot restarts the promotion evidence, with an ``evidence_reset`` event), check a
cheap rung's shadow answer against the category's ``escalate_on`` (its escalation stream
while it does not serve: a rung failing too many is held from promotion,
:mod:`tierguard.engine.escalations`), feed the detector, and apply its decision (flip, pin,
or an observe-mode "would flip" row), then feed challenged jobs to their challengers'
evidence (:mod:`tierguard.pipeline.challengers`) and a staged rollout's new model's comparisons
to its gate (:mod:`tierguard.pipeline.rollouts`). Redis gets the new routes after commit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass, field

import redis as redis_lib
from sqlalchemy.engine import Engine
from sqlmodel import Session

from tierguard import metrics
from tierguard.alerts.events import for_eligible, for_evidence_reset, for_route_change
from tierguard.compare import Verdict
from tierguard.contract.job import ShadowJob
from tierguard.engine.detector import Decision, Situation, restart_promotion
from tierguard.engine.escalations import shadow_checked
from tierguard.engine.fingerprints import KEY as TRACKED
from tierguard.engine.fingerprints import Tracker, kept
from tierguard.engine.retirements import retired_on
from tierguard.errors import RouteConflict
from tierguard.otlp import exporter as otlp
from tierguard.pipeline import challengers, rollouts
from tierguard.pipeline.calls import Answer
from tierguard.pipeline.results import Outcome, Result
from tierguard.pipeline.samples import insert_samples, rung_of, sample_values
from tierguard.policy import CategoryPolicy, Policy
from tierguard.routing.routes import change_route, expire_pin, lock_categories, publish_quietly
from tierguard.store import rollups
from tierguard.store.db import session, utcnow
from tierguard.store.tables import Category, RouteChange

log = logging.getLogger(__name__)
TRACKER = Tracker()


def situation(row: Category, now: float) -> Situation:
    serving = ("candidate" if row.routed_model == row.candidate
               else "reference" if row.routed_model == row.reference else "other")
    return Situation(serving=serving, pinned=row.pinned, now=now)  # type: ignore[arg-type]


def apply_decision(s: Session, row: Category, decision: Decision, trigger_job_id: str | None,
                   target: str | None = None, at: dt.datetime | None = None,
                   unpin: bool = False) -> RouteChange | None:
    """Turn a route-changing decision into a route change (or an observe-mode record); ``target``
    is the rung a ladder's decision moves to (two models: the candidate or the reference);
    ``unpin``: the change lifts the category's pin."""
    if not decision.changes_route:
        return None
    target = target or (row.candidate if decision.action == "promote" else row.reference)
    fields = dict(rule=decision.rule, reason=decision.reason, agreement=decision.agreement,
                  samples=decision.samples, numbers=decision.numbers, trigger_job_id=trigger_job_id)
    if not decision.applied:
        change = RouteChange(category=row.name, from_model=row.routed_model, to_model=target,
                             applied=False, created_at=at or utcnow(), **fields)
        s.add(change)
        return change
    try:
        return change_route(s, row, target, pin=True if decision.pin else False if unpin else None,
                            at=at, **fields)
    except RouteConflict:
        log.info("change of %s lost a race; another writer changed it first", row.name)
        return None


def record(engine: Engine, r: redis_lib.Redis | None, policy: Policy, job: ShadowJob,
           answer: Answer | None, verdict: Verdict | None, error: tuple[str, str] | None,
           attempt: int, kind: str = "shadow") -> Outcome:
    return record_many(engine, r, policy, [Result(job, answer, verdict, error, attempt, kind)])[0]


@dataclass
class _Done:
    """What one transaction did, gathered while its categories are fed."""

    outcomes: list[Outcome | None]
    changes: list[RouteChange] = field(default_factory=list)
    changed: dict[str, Category] = field(default_factory=dict)
    touched: dict[str, tuple[str, tuple[str, str], float]] = field(default_factory=dict)
    rows: dict[str, dict] = field(default_factory=dict)  # job id -> its sample row, if inserted

    @property
    def recorded(self) -> list[dict]:
        """The sample rows inserted."""
        return list(self.rows.values())


def record_many(engine: Engine, r: redis_lib.Redis | None, policy: Policy,
                results: list[Result]) -> list[Outcome]:
    """Insert every sample and feed the detectors, all in one transaction.

    Within a category, samples are fed in the order given.
    """
    done = _Done([None] * len(results))
    with session(engine) as s:
        by_category = _insert(s, policy, results, done)
        now = utcnow()
        locked = lock_categories(s, [policy.category(name) for name in by_category])
        for name in sorted(by_category):
            _feed_category(s, policy, policy.category(name), locked[name],
                           [(i, results[i]) for i in by_category[name]], now, done)
        inserted = set(done.rows)
        started = challengers.record(s, policy, results, inserted, now)
        rolled_back = rollouts.record(s, policy, results, inserted, now,
                                      {name: t[0] for name, t in done.touched.items()})
        done.changes += rolled_back
        s.commit()
    rollouts.publish_after(r, engine, bool(rolled_back) or started)
    _observe(results, done)
    otlp.recorded(done.recorded, done.changes)  # queued for export off this thread, if on
    for change in done.changes:
        log.warning("category %s: %s %s -> %s: %s", change.category,
                    "changed" if change.applied else "would change", change.from_model,
                    change.to_model, change.reason)
    if done.changed:
        publish_quietly(r, list(done.changed.values()))
    return done.outcomes  # type: ignore[return-value]


def _insert(s: Session, policy: Policy, results: list[Result], done: _Done) -> dict[str, list[int]]:
    """Insert the samples and their rollups; the outcome of each result that feeds no detector
    (a duplicate, an error, a noise or judge sample), and the others' indices by category."""
    outcomes = done.outcomes
    rows = [sample_values(policy, x.job, x.answer, x.verdict, x.error, x.attempt, x.kind, x.judge)
            for x in results]
    inserted = insert_samples(s, rows)
    for row in rows:  # each inserted job once (a batch may hold a job twice)
        if row["job_id"] in inserted:
            done.rows.setdefault(row["job_id"], row)
    rollups.add(s, done.recorded)
    by_category: dict[str, list[int]] = {}
    for i, x in enumerate(results):
        if x.job.job_id not in inserted:
            outcomes[i] = Outcome("duplicate")
        elif x.verdict is None:
            outcomes[i] = Outcome("error")
        elif x.kind not in ("shadow", "probe"):
            outcomes[i] = Outcome("recorded")
        else:
            by_category.setdefault(x.job.category, []).append(i)
        inserted.discard(x.job.job_id)  # a second copy of the job is a duplicate
    return by_category


def _feed_category(s: Session, policy: Policy, cat: CategoryPolicy, row: Category,
                   items: list[tuple[int, Result]], now: dt.datetime, done: _Done) -> None:
    """Feed one category's comparisons to its detector (``row``: its row, locked), in order,
    acting on each decision."""
    carried = _expire_pin(s, policy, row, now, done)
    tracked = {TRACKED: (row.detector_state or {}).get(TRACKED)}
    state = _evidence(cat, row)
    sit = situation(row, now.timestamp())
    checks = dict(row.escalation_state or {}) if cat.escalate_on else None
    for n, (i, x) in enumerate(items):
        change, events = carried if n == 0 else (None, 0)  # the first sample carries a pin expiry
        state, reset = _track(s, policy, cat, row, tracked, state, x, now,
                              done.rows[x.job.job_id]["prompt_fingerprint"])
        events += reset
        rung = rung_of(cat, x.job)
        held = None if checks is None else _shadow_checks(cat, checks, x, rung)
        held = held or retired_on(policy.retirements, rung, now.date())  # never promoted
        state, decision, target = _fed(cat, row, state, x, sit, now, held, rung)
        if decision is not None and decision.changes_route:
            state, change, moved = _move(s, policy, cat, row, state, decision, target, x.job, done,
                                         tracked)
            events += moved
            if change is not None and change.applied:
                sit = situation(row, now.timestamp())
        elif decision is not None and decision.action == "eligible":
            events += for_eligible(s, policy, cat.name, decision.reason, x.job.job_id,
                                   decision.numbers) is not None
        done.outcomes[i] = Outcome("recorded", decision, change, events)
    row.detector_state = kept(tracked, cat.ladder_engine.mirror(state, row.routed_model)
                              if cat.laddered else state)
    if checks is not None:
        row.escalation_state = checks
    s.add(row)
    done.touched[cat.name] = (row.routed_model, (row.candidate, row.reference),
                              cat.engine.statistic(row.detector_state))


def _expire_pin(s: Session, policy: Policy, row: Category, now: dt.datetime, done: _Done
                ) -> tuple[RouteChange | None, int]:
    """A pin whose time is up, lifted: its change and whether it made an event."""
    expired = expire_pin(s, row, now)
    if expired is None:
        return None, 0
    done.changes.append(expired)
    done.changed[row.name] = row
    return expired, int(for_route_change(s, policy, expired, "pin_expired") is not None)


def _evidence(cat: CategoryPolicy, row: Category) -> dict:
    """The detector state the category's samples feed."""
    state = dict(row.detector_state or {})
    if not cat.laddered and "rungs" in state:  # a ladder before: its candidate's own evidence
        state = dict(state["rungs"].get(cat.candidate) or {})
    if cat.engine.stale(state):
        log.warning("category %s: detector settings changed (policy); its evidence restarts", cat.name)
    return state


def _track(s: Session, policy: Policy, cat: CategoryPolicy, row: Category, tracked: dict,
           state: dict, x: Result, now: dt.datetime, fingerprint: str | None) -> tuple[dict, int]:
    """Feed one sample's prompt fingerprint (its row's) and snapshots to the
    category's tracker (``tracked``, updated in place); on a reset, the state with its promotion
    evidence restarted (a demotion watch keeps running) and whether an ``evidence_reset`` event
    was written."""
    job = x.job
    snapshots = {job.served_model: job.served_snapshot,
                 job.shadow_model: x.answer.snapshot if x.answer else None}
    tracked[TRACKED], reset = TRACKER.feed(tracked[TRACKED], fingerprint, snapshots, now.timestamp())
    if reset is None:
        return state, 0
    log.warning("category %s: evidence restarts: %s", cat.name, reset.what)
    state = (cat.ladder_engine.restart_promotion(state, row.routed_model) if cat.laddered
             else restart_promotion(state))
    numbers = {"changes": [{"model": c.model, "old": c.old, "new": c.new} for c in reset.changes],
               "route": row.routed_model}
    return state, int(for_evidence_reset(s, policy, cat.name, reset.what, reset.since, job.job_id,
                                         numbers) is not None)


def _shadow_checks(cat: CategoryPolicy, checks: dict, x: Result, rung: str | None) -> str | None:
    """Check a cheap rung's shadow answer (its escalation stream while it does not serve; ``checks``
    updated in place); why the sample's rung (``rung_of``) may not be promoted, or None."""
    job, answer = x.job, x.answer
    if answer is not None and job.shadow_model in cat.rungs[:-1]:
        failed = cat.checks.check_text(answer.text, answer.stop_reason) is not None
        checks[job.shadow_model] = shadow_checked(checks.get(job.shadow_model), failed)
    return None if rung is None else cat.escalation_watch.held(checks.get(rung))


def _fed(cat: CategoryPolicy, row: Category, state: dict, x: Result, sit: Situation, now: dt.datetime,
         held: str | None = None, rung: str | None = "") -> tuple[dict, Decision | None, str | None]:
    """(new state, the decision, the rung it moves to) after one comparison; no decision when the
    sample compares no pair the detector watches. ``held``: why its rung may not be promoted;
    ``rung``: the sample's (``rung_of``; "": computed here)."""
    agree = x.verdict.agree  # type: ignore[union-attr]
    if cat.laddered:
        rung = rung_of(cat, x.job) if rung == "" else rung
        if rung is None:
            return state, None, None
        state, move = cat.ladder_engine.feed(state, row.routed_model, rung, agree, row.pinned,
                                             now.timestamp(), held)
        return state, move.decision, move.target
    if {x.job.served_model, x.job.shadow_model} == {row.candidate, row.reference}:
        state, decision = cat.engine.update(state, agree, dataclasses.replace(sit, held=held))
        return state, decision, None
    return state, None, None


def _move(s: Session, policy: Policy, cat: CategoryPolicy, row: Category, state: dict,
          decision: Decision, target: str | None, job: ShadowJob, done: _Done,
          tracked: dict | None = None) -> tuple[dict, RouteChange | None, int]:
    """Apply a route-changing decision: (state, the change, events made); ``tracked`` holds the
    fingerprint tracker's state, written with it."""
    if cat.laddered:
        state = cat.ladder_engine.mirror(state, target or row.routed_model)
    row.detector_state = kept(tracked, state)  # the change writes the state with the route
    change = apply_decision(s, row, decision, job.job_id, target)
    if change is None:
        return state, None, 0
    done.changes.append(change)
    if not change.applied:
        return state, change, 0
    done.changed[row.name] = row
    return state, change, int(for_route_change(s, policy, change, event_kind(decision)) is not None)


@metrics.safely
def _observe(results: list[Result], done: _Done) -> None:
    counted: Counter[tuple[str, str]] = Counter()  # one labelled increment per pair, not per sample
    for x, o in zip(results, done.outcomes, strict=True):
        if o is None or o.status == "duplicate" or x.kind != "shadow":
            continue
        outcome = ((x.error[0] if x.error[0] == "skipped" else "error") if x.error
                   else "agree" if x.verdict and x.verdict.agree else "disagree")
        counted[(x.job.category, outcome)] += 1
    for (category, outcome), n in counted.items():
        metrics.RESULTS.labels(category, outcome).inc(n)
    for change in done.changes:
        if change.applied and change.from_model != change.to_model:
            metrics.ROUTE_CHANGES.labels(change.category, change.rule, change.to_model).inc()
            if change.rule in ("cusum", "flap_guard"):
                metrics.DEMOTED_AT.labels(change.category, change.to_model).set(
                    change.created_at.timestamp())
    for name, (model, pair, statistic) in done.touched.items():
        metrics.route(name, model, pair)
        metrics.STATISTIC.labels(name).set(statistic)


def event_kind(decision: Decision) -> str:
    if decision.pin:
        return "flap_guard"
    return "promoted" if decision.action == "promote" else "demoted"
