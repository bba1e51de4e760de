"""A challenger's evidence in one category and its verdict against the rung in service. Pure.

On the share of sampled jobs it challenges, a challenger answers the same request; the worker
compares its answer with the job's reference answer (``a`` of ``n`` agree) and with the answer of
the rung in service (``sa`` of ``sn``), and notes whether the rung in service agreed with the
reference on the same job: ``b`` jobs where it did and the challenger did not, ``c`` the reverse,
of ``pn`` paired jobs. ``serving`` is the category's route when the job was recorded; a job
served by another model (escalated, guarded, a rollout's share) counts against the reference only.
Paired counts restart when another model serves. Where the category has answer checks, the
challenger's answers are checked too (``failed``): its failures over its last 200–400 checked
answers above ``max_escalation_rate`` hold it from eligibility, as for a rung (promotion needs
both streams healthy, :mod:`tierguard.engine.escalations`).

Eligibility is the promotion rule's (:class:`~tierguard.engine.detector.Engine`: the betting
e-process on agreement with the reference above ``promote_threshold``, valid however often it is
looked at; the challenger's own state under ``"det"``). The verdict against the rung in service:

- while the reference serves: ``equivalent`` once eligible, ``worse`` when the Wilson upper bound
  of its agreement is below the category's ``threshold``, else ``inconclusive``;
- while a cheaper rung serves, from the paired difference ``d = (c − b) / pn`` in agreement with
  the reference and its 95 % interval: ``better`` above 0, ``worse`` below ``−MARGIN`` (or under
  the threshold as above), ``equivalent`` within ``±MARGIN``, else ``inconclusive``.

Nothing but ``inconclusive`` before ``min_samples`` comparisons. Every verdict carries its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tierguard.engine.betting import wilson
from tierguard.engine.detector import Decision, Engine, Situation
from tierguard.engine.escalations import Watch as EscalationWatch
from tierguard.engine.escalations import counted

MARGIN = 0.02  # agreement within ±2 points of the rung in service is equivalent
Z = 1.96


def fresh(serving: str) -> dict:
    return {"n": 0, "a": 0, "sn": 0, "sa": 0, "pn": 0, "b": 0, "c": 0, "serving": serving, "det": {}}


@dataclass(frozen=True)
class Outcome:
    """One challenged job: the challenger against the reference and the rung in service, and the
    rung in service against the reference (None: not known for this job)."""

    serving: str
    with_reference: bool | None
    with_serving: bool | None
    serving_agreed: bool | None
    failed: bool | None = None  # its answer failed the category's checks (None: not checked)


def feed(state: dict | None, engine: Engine, x: Outcome, now: float,
         checks: EscalationWatch | None = None) -> tuple[dict, Decision | None]:
    """The state after one challenged job, and an ``eligible`` decision when it became eligible
    (``checks``: the category's escalation watch, when it has answer checks)."""
    st = {**fresh(x.serving), **(state or {})}
    if x.failed is not None:
        st["checks"] = counted(st.get("checks"), x.failed)
    if st["serving"] != x.serving:  # the rung it is judged against changed: paired counts restart
        st.update(sn=0, sa=0, pn=0, b=0, c=0, serving=x.serving)
    if x.with_serving is not None:
        st["sn"] += 1
        st["sa"] += int(x.with_serving)
    if x.with_reference is None:
        return st, None
    st["n"] += 1
    st["a"] += int(x.with_reference)
    if x.serving_agreed is not None:
        st["pn"] += 1
        st["b"] += int(x.serving_agreed and not x.with_reference)
        st["c"] += int(x.with_reference and not x.serving_agreed)
    held = None if checks is None else checks.held_by(st.get("checks"))
    st["det"], decision = engine.update(st["det"] or {}, x.with_reference,
                                        Situation("reference", False, now, held=held))
    return st, decision if decision.action == "eligible" else None


def eligible(state: dict | None) -> bool:
    return bool(((state or {}).get("det") or {}).get("eligible"))


@dataclass(frozen=True)
class Verdict:
    name: str  # better | equivalent | worse | inconclusive
    reason: str


def verdict(state: dict | None, reference: str, threshold: float, min_samples: int) -> Verdict:
    """The challenger against the rung in service (see the module's docstring)."""
    st = {**fresh(reference), **(state or {})}
    n, a = st["n"], st["a"]
    if n < min_samples:
        return Verdict("inconclusive", f"{n} of min_samples {min_samples} comparisons with the reference")
    upper = wilson(a, n)[1]
    if upper < threshold:
        return Verdict("worse", f"agreement with the reference {a}/{n} = {a / n:.3f}; its Wilson upper "
                                f"bound {upper:.3f} is below threshold {threshold:.2f}")
    if st["serving"] == reference:
        if eligible(st):
            return Verdict("equivalent", f"agreement with the reference {a}/{n} = {a / n:.3f}: eligible "
                                         "by the promotion rule, so it could serve")
        return Verdict("inconclusive", f"agreement with the reference {a}/{n} = {a / n:.3f}: not "
                                       "eligible by the promotion rule yet")
    return _paired(st)


def _paired(st: dict) -> Verdict:
    pn, b, c = st["pn"], st["b"], st["c"]
    if pn == 0:
        return Verdict("inconclusive", f"no job compared with both it and {st['serving']} yet")
    d = (c - b) / pn
    spread = Z * math.sqrt(max((b + c) / pn - d * d, 0.0) / pn)
    low, high = d - spread, d + spread
    about = (f"on {pn} jobs it agreed with the reference where {st['serving']} did not {c} times, "
             f"and the reverse {b} times: {d:+.3f} ({low:+.3f} to {high:+.3f}, 95 %)")
    if low > 0:
        return Verdict("better", about)
    if high < -MARGIN:
        return Verdict("worse", about)
    if low > -MARGIN and high < MARGIN:
        return Verdict("equivalent", f"{about}, within ±{MARGIN:.2f}")
    return Verdict("inconclusive", about)
