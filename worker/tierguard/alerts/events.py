"""Events on-call hears about, written to the outbox in the caller's transaction.

An event has a ``key`` that makes it happen once (a route change id, a blind
episode, …); :func:`emit` inserts it and one ``alert`` row per channel that
wants it. Every event says what happened, the numbers behind it, what tierguard
already did and what the on-call engineer can do.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from tierguard.policy import Policy
from tierguard.store.db import insert_new, utcnow
from tierguard.store.tables import Alert, Event, RouteChange


def dashboard_link(policy: Policy, category: str | None) -> str | None:
    url = policy.alerts.dashboard_url
    if not url:
        return None
    return f"{url}{'&' if '?' in url else '?'}var-category={category}" if category else url


def emit(s: Session, policy: Policy, *, key: str, kind: str, category: str | None, summary: str,
         numbers: dict[str, Any] | None = None, did: str = "", actions: list[str] | None = None,
         route_change_id: int | None = None) -> int | None:
    """Insert the event and its outbox rows; None if an event with ``key`` already exists."""
    severity = policy.alerts.severity(kind)
    details = {"numbers": numbers or {}, "did": did, "actions": actions or [],
               "dashboard": dashboard_link(policy, category)}
    event_id = insert_new(s, Event.__table__, {
        "key": key, "kind": kind, "category": category, "severity": severity, "summary": summary,
        "details": details, "route_change_id": route_change_id, "created_at": utcnow()})
    if event_id is None:
        return None
    for channel in policy.alerts.channels:
        if channel.wants(kind, severity):
            s.add(Alert(event_id=event_id, channel=channel.name))
    return event_id


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def for_route_change(s: Session, policy: Policy, change: RouteChange, kind: str) -> int | None:
    """The event for an applied route change: demoted, promoted, flap_guard, pin_expired or
    model_retired."""
    s.flush()  # the change needs its id
    name = change.category
    numbers = {"agreement": change.agreement, "samples": change.samples, "from": change.from_model,
               "to": change.to_model, **(change.numbers or {})}
    if kind == "pin_expired":
        summary = f"{name}: pin expired; the engine decides again"
        did = f"{name} stays on {change.to_model} until the engine decides otherwise."
        actions = [f"tierguard pin {name} {change.to_model} --until … --reason …  (to pin again)"]
    elif kind == "flap_guard":
        summary = f"{name}: flapping, pinned to {change.to_model}"
        did = (f"Pinned {name} to {change.to_model}: too many automatic route changes in a short "
               "time. The engine will not move it until an operator unpins it.")
        actions = [f"tierguard history {name}", f"tierguard unpin {name}  (when the cause is fixed)"]
    elif kind == "model_retired":
        summary = f"{name}: {change.from_model} retired, {change.to_model} serves"
        did = f"Production traffic for {name} now goes to {change.to_model}: {change.reason}."
        actions = [f"tierguard history {name}", "tierguard status  (what else is retiring)",
                   f"take {change.from_model} out of {name}'s models in the policy"]
    elif kind == "demoted":
        summary = (f"{name} demoted: {change.from_model} → {change.to_model} "
                   f"(agreement {_pct(change.agreement)} over the last {change.samples} samples)")
        did = (f"Production traffic for {name} now goes to {change.to_model}. The candidate "
               f"{change.from_model} stays shadowed, so recovery is measured.")
        actions = [f"tierguard status  (agreement and engine state of {name})",
                   f"tierguard history {name}",
                   f"tierguard pin {name} {change.to_model} --reason '…'  "
                   "(keep it there while you investigate)",
                   f"tierguard promote {name}  (once status says eligible)"]
    else:
        summary = f"{name} promoted: {change.from_model} → {change.to_model}"
        did = f"Production traffic for {name} goes to {change.to_model} again ({change.actor})."
        actions = [f"tierguard pin {name} {change.from_model} --reason '…'  (to undo)"]
    return emit(s, policy, key=f"route_change:{change.id}", kind=kind, category=name,
                summary=summary, numbers=numbers, did=did, actions=actions,
                route_change_id=change.id)


def for_invalid_policy(s: Session, policy: Policy, path: str, problems: list[str],
                       digest: str) -> int | None:
    """A policy file that failed validation (once per distinct content, across every process)."""
    shown = "; ".join(problems[:3]) + (f"; … ({len(problems)} problems)" if len(problems) > 3 else "")
    return emit(s, policy, key=f"policy_invalid:{digest}", kind="policy_invalid", category=None,
                summary=f"policy {path} is invalid and was not applied: {shown}",
                numbers={"problems": len(problems)},
                did="Kept running on the previous policy; nothing changed.",
                actions=[f"tierguard policy check {path}", "fix the file; it is applied within "
                         "TIERGUARD_POLICY_RELOAD_S once valid"])


def for_eligible(s: Session, policy: Policy, category: str, reason: str, episode: str,
                 numbers: dict[str, Any]) -> int | None:
    return emit(s, policy, key=f"eligible:{category}:{episode}", kind="eligible", category=category,
                summary=f"{category} is eligible for promotion back to its candidate",
                numbers=numbers, did=f"Nothing yet: {reason}.",
                actions=[f"tierguard promote {category}", "tierguard status"])


def for_evidence_reset(s: Session, policy: Policy, category: str, what: str, since: str,
                       episode: str, numbers: dict[str, Any]) -> int | None:
    """A category's prompt or a model's snapshot changed under its evidence (``what``: old -> new
    per change); once per triggering sample (``episode``)."""
    return emit(s, policy, key=f"evidence_reset:{category}:{episode}", kind="evidence_reset",
                category=category, summary=f"{category}: evidence restarts: {what}",
                numbers={**numbers, "since": since},
                did=(f"Restarted {category}'s promotion evidence, which was gathered on what no "
                     "longer runs; the demotion watch keeps running, and adaptive sampling goes to "
                     "its maximum for the cooldown."),
                actions=["tierguard status --json  (its fingerprint)", f"tierguard history {category}"])


def for_rollout(s: Session, policy: Policy, rollout: Any, at: Any) -> int | None:
    """A staged rollout's transition (started, a step, paused, resumed, aborted, done; a roll-back
    is a route change): once per transition."""
    weight = rollout.steps[rollout.step] if rollout.status == "running" else 0
    return emit(s, policy, key=f"rollout:{rollout.category}:{rollout.created_at.isoformat()}:"
                               f"{rollout.status}:{rollout.step}:{at.isoformat()}",
                kind="rollout", category=rollout.category,
                summary=f"{rollout.category}: rollout of {rollout.model} {rollout.status}: {rollout.reason}",
                numbers={"model": rollout.model, "base": rollout.base, "status": rollout.status,
                         "step": rollout.step + 1, "steps": list(rollout.steps), "weight_percent": weight},
                did=f"{weight} % of {rollout.category}'s calls routed to {rollout.base} now go to "
                    f"{rollout.model}.",
                actions=[f"tierguard rollout status {rollout.category}",
                         f"tierguard rollout pause|resume|abort {rollout.category}"])


def for_shadows_paused(s: Session, policy: Policy, model: str, skipped: int, minutes: float,
                       hour: str) -> int | None:
    """Shadows to ``model`` held past max_defer_minutes by rate limits (once per model and hour)."""
    return emit(s, policy, key=f"shadows_paused:{model}:{hour}", kind="shadows_paused", category=None,
                summary=f"shadows to {model} paused for over {minutes:g} min by rate limits: "
                        f"tierguard is partly blind",
                numbers={"model": model, "skipped": skipped, "max_defer_minutes": minutes},
                did=f"Recorded {skipped} shadow job(s) as skipped (rate_headroom); production was "
                    "not touched.",
                actions=["tierguard status --json  (headroom)",
                         "raise the model's rate limits, or lower sample rates"])


def for_sentinel_failed(s: Session, policy: Policy, category: str, model: str, reason: str,
                        numbers: dict[str, Any], run: str) -> int | None:
    """A rung's accuracy on its category's sentinels fell more than ``tolerance`` below its
    baseline (once per transition into failing: the caller decides; ``run`` keys it)."""
    reference = model == policy.category(category).reference
    did = ("Nothing: routes never move on sentinels. Every category's agreement is measured "
           "against this model, so the yardstick itself moved." if reference else
           "Nothing: routes never move on sentinels; the live agreement still decides.")
    return emit(s, policy, key=f"sentinel_failed:{category}:{model}:{run}", kind="sentinel_failed",
                category=category, summary=f"{category}: sentinels failed on {model}"
                f"{' (the reference)' if reference else ''}: {reason}",
                numbers={"model": model, "reference": reference, **numbers},
                did=did, actions=[f"tierguard sentinels run {category}  (run them again now)",
                                  f"tierguard pin {category} MODEL --reason '…'  (if the answers "
                                  "are wrong for production too)", "tierguard status"])


def for_model_retiring(s: Session, policy: Policy, model: str, reason: str, week: str,
                       numbers: dict[str, Any]) -> int | None:
    """A model in use is retiring, retired or no longer listed by the API (``reason`` names the
    categories using it and each one's replacement); once per model and ISO ``week``."""
    uses = numbers.get("categories") or {}
    return emit(s, policy, key=f"model_retiring:{model}:{week}", kind="model_retiring", category=None,
                summary=reason, numbers={"model": model, **numbers},
                did=("Nothing yet: a category whose route is on a retired model moves to its "
                     "replacement on the date (rule retirement, audited); a rung or an unlisted model "
                     "never moves a route alone."),
                actions=["tierguard status --json  (retiring, per category)",
                         *(f"tierguard pin {name} {u['replacement']} --reason '{model} retiring'  "
                           "(move it now)"
                           for name, u in sorted(uses.items())
                           if u.get("replacement") and {"route", "pin"} & set(u.get("roles", ()))),
                         "take the model out of the policy's ladders"])
