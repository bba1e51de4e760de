"""Retirements: which models in use are retiring, and where a category on a retired one goes. No I/O.

A category uses its route (``pin`` when pinned), every rung of its ladder and (later) its
challengers. A model in use is *retiring* within ``warning_days`` of its retirement date and
*retired* on and after that date; a model the API's last successful list does not name (an id
equal to it, or to it plus a ``-YYYYMMDD`` snapshot suffix) is *not listed*. Each such model
gets one :class:`Notice` (the ``model_retiring`` event) naming its categories and, per category,
the :func:`replacement`; a category whose route is on a retired model gets a :class:`Move` to that
replacement (unpinned if it was pinned). Not being listed alone never moves anything. Every
verdict carries its reason.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from tierguard.engine.ladder import rung_state

SNAPSHOT = re.compile(r"-\d{8}$")  # an id's date suffix: claude-haiku-4-5-20251001


@dataclass(frozen=True)
class Usage:
    """One category's models as the check sees them: ``rungs`` cheapest first, the reference last;
    ``states`` per rung below the reference (:func:`rung_states`)."""

    category: str
    rungs: tuple[str, ...]
    routed: str
    pinned: bool
    states: dict[str, str]
    challengers: tuple[str, ...] = ()  # the category's active challengers (models in use too)
    eligible_challengers: tuple[str, ...] = ()  # those eligible against the reference, not worse

    def roles(self) -> dict[str, list[str]]:
        """Each model in use and how: ``route`` or ``pin``, ``rung``, ``challenger``."""
        out: dict[str, list[str]] = {self.routed: ["pin" if self.pinned else "route"]}
        for model in self.rungs:
            out.setdefault(model, ["rung"])
        for model in self.challengers:
            out.setdefault(model, []).append("challenger")
        return out


@dataclass(frozen=True)
class Notice:
    """One model in use that is retiring, retired or not listed by the API."""

    model: str
    date: dt.date | None
    days_left: int | None
    unlisted: bool
    uses: dict[str, dict] = field(default_factory=dict)  # category -> roles, replacement, why
    reason: str = ""


@dataclass(frozen=True)
class Move:
    """A category served by a retired model, moved to its replacement."""

    category: str
    model: str
    target: str
    date: dt.date
    unpin: bool
    reason: str


def rung_states(rungs: tuple[str, ...], routed: str, detector_state: dict, laddered: bool
                ) -> dict[str, str]:
    """Per rung below the reference: ``serving``, ``eligible``, ``watching`` or ``demoted``
    (two models: the detector's one state is the candidate's)."""
    if laddered:
        states = detector_state.get("rungs") or {}
        return {rung: rung_state(states, routed, rung) for rung in rungs[:-1]}
    candidate = rungs[0]
    return {candidate: "serving" if routed == candidate
            else "eligible" if detector_state.get("eligible") else "watching"}


def listed(model: str, ids: Iterable[str]) -> bool:
    """Whether the API's ids name ``model``: itself, or one of its dated snapshots."""
    return any(i == model or (i.startswith(model) and SNAPSHOT.fullmatch(i[len(model):]))
               for i in ids)


def retired_on(retirements: dict[str, dt.date], model: str | None, today: dt.date) -> str | None:
    """Why ``model`` may not be promoted to: it retired (on or before ``today``), else None."""
    date = retirements.get(model) if model else None
    return None if date is None or date > today else f"{model} retired on {date.isoformat()}"


def replacement(rungs: tuple[str, ...], states: dict[str, str], unusable: set[str]
                ) -> tuple[str | None, str]:
    """Where a category goes instead of its ``unusable`` models (retiring, retired, not listed):
    the cheapest rung below the reference that serves or is eligible on its own promotion
    evidence, else the reference; None when the reference is unusable too. With the reason.

    A challenger eligible against the reference is named beside it in the notice
    (``Usage.eligible_challengers``), never moved to: a route is one of the category's rungs."""
    for rung in rungs[:-1]:
        if rung in unusable:
            continue
        if states.get(rung) == "serving":
            return rung, "the cheapest usable rung, serving already"
        if states.get(rung) == "eligible":
            return rung, "the cheapest usable rung eligible on its own evidence"
    if rungs[-1] in unusable:
        return None, (f"none: the reference {rungs[-1]} is retiring or unlisted too; change the "
                      "category's models in the policy")
    return rungs[-1], "the reference: no cheaper usable rung serves or is eligible"


def when(model: str, date: dt.date, days_left: int) -> str:
    if days_left > 0:
        return f"{model} retires on {date.isoformat()} ({days_left} day{'s' * (days_left != 1)} left)"
    if days_left == 0:
        return f"{model} retires today ({date.isoformat()})"
    return f"{model} retired on {date.isoformat()} ({-days_left} day{'s' * (days_left != -1)} ago)"


@dataclass
class _Check:
    """One run of :func:`check`: the dates within the warning, what the API lists."""

    dates: dict[str, tuple[dt.date, int]]
    ids: frozenset[str] | None
    unlisted: dict[str, bool] = field(default_factory=dict)
    uses: dict[str, dict[str, dict]] = field(default_factory=dict)
    moves: list[Move] = field(default_factory=list)

    def gone(self, model: str) -> bool:
        if self.ids is None:
            return False
        if model not in self.unlisted:
            self.unlisted[model] = not listed(model, self.ids)
        return self.unlisted[model]

    def feed(self, usage: Usage) -> None:
        for model, roles in usage.roles().items():
            if model not in self.dates and not self.gone(model):
                continue
            unusable = {*self.dates, *(m for m in usage.rungs if self.gone(m)), model}
            target, why = replacement(usage.rungs, usage.states, unusable)
            challenger = next((c for c in usage.eligible_challengers if c not in unusable), None)
            self.uses.setdefault(model, {})[usage.category] = {
                "roles": roles, "replacement": target, "why": why,
                **({"challenger": challenger} if challenger else {})}
            date, days = self.dates.get(model, (None, None))
            if model == usage.routed and date is not None and days <= 0 and target is not None:
                self.moves.append(Move(usage.category, model, target, date, usage.pinned, (
                    f"{when(model, date, days)}: {target} serves instead, {why}"
                    + ("; the pin on it is lifted" if usage.pinned else ""))))


def check(usages: Iterable[Usage], retirements: dict[str, dt.date], warning_days: int, today: dt.date,
          ids: Iterable[str] | None = None, read_at: str | None = None) -> tuple[list[Notice], list[Move]]:
    """The notices (one per model) and the moves (one per category on a retired route) for
    ``today``; ``ids``: the API's last successful list (None: never read), read at ``read_at``."""
    run = _Check({m: (d, (d - today).days) for m, d in retirements.items()
                  if (d - today).days <= warning_days}, None if ids is None else frozenset(ids))
    for usage in usages:
        run.feed(usage)
    notices = [notice(model, run.dates.get(model), run.gone(model), found, read_at)
               for model, found in sorted(run.uses.items())]
    return notices, run.moves


def notice(model: str, dated: tuple[dt.date, int] | None, unlisted: bool, uses: dict[str, dict],
           read_at: str | None) -> Notice:
    parts = [when(model, *dated)] if dated else []
    if unlisted:
        parts.append(f"{model} is not listed by the API (its model list as read at {read_at})")
    per = [f"{name} ({', '.join(u['roles'])}; replacement: "
           f"{u['why'] if u['replacement'] is None else u['replacement'] + ', ' + u['why']}"
           + (f"; or the challenger {u['challenger']}, eligible against the reference (add it to the "
              "ladder and roll it out)" if u.get("challenger") else "") + ")"
           for name, u in sorted(uses.items())]
    return Notice(model, dated[0] if dated else None, dated[1] if dated else None, unlisted, uses,
                  f"{'; '.join(parts)}; used by {'; '.join(per)}")


def retiring(models: Iterable[str], retirements: dict[str, dt.date], warning_days: int, today: dt.date
             ) -> list[dict]:
    """``{"model", "date", "days_left"}`` for each of ``models`` within ``warning_days`` of its
    retirement date or past it (what ``tierguard status --json`` shows)."""
    out = []
    for model in dict.fromkeys(models):
        date = retirements.get(model)
        if date is not None and (date - today).days <= warning_days:
            out.append({"model": model, "date": date.isoformat(), "days_left": (date - today).days})
    return out


def iso_week(today: dt.date) -> str:
    """``2026-W47``: the week a model's notice is raised once in."""
    year, week, _ = today.isocalendar()
    return f"{year}-W{week:02d}"
