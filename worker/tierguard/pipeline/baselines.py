"""Sentinel baselines: a rung's accuracy on known answers, judged against what it scored before.

The rule (:func:`judge`, pure): a run is compared with the baseline of the snapshot it ran on;
a snapshot without one (new behind the same alias) is compared with the model's previous
snapshot's baseline, and gets its own only when it passes. The first run a model ever has is its
first baseline. A run fails when its accuracy is more than ``tolerance`` below the baseline. A
run that compared fewer than :data:`CONCLUSIVE` of its cases (calls failed or were skipped for
rate limits) is inconclusive: it neither fails nor sets a baseline. Baselines belong to one
version of the sentinel file (the hash of its cases): an edited file starts new baselines.
:func:`settle` applies it in the caller's transaction: the baseline and last-run rows, and a
``sentinel_failed`` event only on a run that goes from passing to failing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from tierguard.alerts.events import for_sentinel_failed
from tierguard.policy import Policy
from tierguard.store.tables import SentinelBaseline, SentinelRun

EPSILON = 1e-9  # accuracies are ratios of small counts: equal ones never fail on rounding
CONCLUSIVE = 0.9  # share of a run's cases that must be compared for it to count


@dataclass(frozen=True)
class Score:
    """One rung's run: its snapshot, accuracy (None: nothing compared), cases and compared."""

    model: str
    snapshot: str
    accuracy: float | None
    cases: int
    compared: int
    cases_hash: str = ""  # the sentinel file's cases (their baselines are this version's)

    @property
    def conclusive(self) -> bool:
        return self.accuracy is not None and self.compared >= math.ceil(CONCLUSIVE * self.cases - EPSILON)


@dataclass(frozen=True)
class Standing:
    """What a run means: the baseline it was held to, whether it failed, whether it is a new
    baseline, and why (the reason names both snapshots when they differ)."""

    baseline: float | None
    baseline_snapshot: str | None
    failed: bool
    new_baseline: bool
    reason: str


def _pct(v: float) -> str:
    return f"{v:.1%}"


def judge(score: Score, own: float | None, previous: tuple[str, float] | None,
          tolerance: float) -> Standing:
    """``own``: the baseline of the run's snapshot; ``previous``: (snapshot, baseline) of the
    model's latest other snapshot with one."""
    held = (score.snapshot, own) if own is not None else previous
    if score.accuracy is None or not score.conclusive:
        return Standing(held[1] if held else None, held[0] if held else None, False, False,
                        f"inconclusive: {score.compared} of {score.cases} cases compared (needs "
                        f"{CONCLUSIVE:.0%}; the others failed or waited for rate limits)")
    if held is None:
        return Standing(score.accuracy, score.snapshot, False, True,
                        f"first run: baseline {_pct(score.accuracy)} on {score.snapshot}")
    snapshot, baseline = held
    failed = score.accuracy < baseline - tolerance - EPSILON
    on = (f"on {score.snapshot}" if snapshot == score.snapshot
          else f"on the new snapshot {score.snapshot}")
    reason = (f"accuracy {_pct(score.accuracy)} {on} ({score.compared} cases) against the baseline "
              f"{_pct(baseline)} on {snapshot}: {'more than' if failed else 'within'} the tolerance "
              f"{_pct(tolerance)}")
    return Standing(baseline, snapshot, failed, not failed and own is None, reason)


def _previous(s: Session, category: str, score: Score) -> tuple[str, float] | None:
    t = SentinelBaseline
    row = s.execute(sa.select(t.snapshot, t.accuracy)
                    .where(t.category == category, t.model == score.model, t.snapshot != score.snapshot,
                           t.cases_hash == score.cases_hash)
                    .order_by(t.created_at.desc()).limit(1)).first()
    return (row[0], row[1]) if row else None


def settle(s: Session, policy: Policy, category: str, score: Score, run: str,
           now: dt.datetime) -> tuple[Standing, int | None]:
    """Judge ``score`` against the stored baselines and store the outcome (not committed):
    (standing, the ``sentinel_failed`` event's id when this run began a failure)."""
    tolerance = policy.category(category).sentinels.tolerance  # type: ignore[union-attr]
    own = s.get(SentinelBaseline, (category, score.model, score.snapshot, score.cases_hash))
    standing = judge(score, own.accuracy if own else None,
                     None if own else _previous(s, category, score), tolerance)
    if standing.new_baseline and score.accuracy is not None:
        s.add(SentinelBaseline(category=category, model=score.model, snapshot=score.snapshot,
                               cases_hash=score.cases_hash, accuracy=score.accuracy,
                               cases=score.compared, created_at=now))
    last = s.get(SentinelRun, (category, score.model))
    was_failing = bool(last and last.failed)
    failed = standing.failed or (was_failing and not score.conclusive)  # nothing new: still failing
    fields: dict[str, Any] = dict(run=run, snapshot=score.snapshot, accuracy=score.accuracy,
                                  baseline=standing.baseline, baseline_snapshot=standing.baseline_snapshot,
                                  cases=score.cases, compared=score.compared, failed=failed, at=now)
    if last is None:
        s.add(SentinelRun(category=category, model=score.model, **fields))
    else:
        for k, v in fields.items():
            setattr(last, k, v)
        s.add(last)
    began = standing.failed and not was_failing
    standing = dataclasses.replace(standing, failed=failed)
    if not began:
        return standing, None
    numbers = {"accuracy": score.accuracy, "baseline": standing.baseline, "snapshot": score.snapshot,
               "baseline_snapshot": standing.baseline_snapshot, "tolerance": tolerance,
               "cases": score.cases, "compared": score.compared, "run": run}
    return standing, for_sentinel_failed(s, policy, category, score.model, standing.reason, numbers, run)
