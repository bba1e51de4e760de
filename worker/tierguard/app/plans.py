"""A category's route, worked out once per route refresh and policy: the hot path's one lookup.

Routing a call (:meth:`~tierguard.app.core.Core.route`) reads the policy, the route table,
any staged rollout and the routed model's limits. These change only when the routes are
refreshed (every ``TIERGUARD_ROUTE_TTL``, :attr:`RouteTable.generation
<tierguard.routing.routes.RouteTable.generation>`) or the policy reloads, so a category's
outcome is kept as a :class:`Plan` and a call reads one dict entry. A category whose calls
each need more — a staged rollout's draw, a route to a model the policy does not list (counted
per call), an unlisted category still following the caller's model — gets a plan without a
model and takes the full path every time. The guard's verdict depends on the call's own size,
so it is never kept: a plan carries the limits to check it against.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from tierguard.policy import CategoryPolicy, Policy


class Plan(NamedTuple):
    """How calls of one category are routed until the next refresh or policy change."""

    cat: CategoryPolicy
    model: str | None  # the routed model; None: every call takes the full path
    limits: tuple[int, int] | None  # the routed model's limits when the guard applies, else None
    unlisted: bool  # a category the policy does not list (its last use is noted per call)
    policy: Policy
    generation: int
    rate: float | None = None  # the share of its calls shadowed; None: answers checked (see tap)


def sample_rate(cat: CategoryPolicy, rates: dict[str, float]) -> float:
    """The share of ``cat``'s calls shadowed: the policy's, or with adaptive sampling the rate the
    rates beat chose (``rates``, read with the routes)."""
    if cat.sampling == "adaptive":
        return rates.get(cat.name, cat.sample_rate_max)
    return cat.sample_rate


def make(cat: CategoryPolicy, name: str, policy: Policy, routes: Any, generation: int) -> Plan:
    """``cat``'s plan from the route table ``routes`` as of ``generation`` (read before the
    routes: a plan is never newer than its stamp says)."""
    unlisted = cat.name not in policy.categories
    model = routes.get(name, cat.initial_route)
    split = routes.splits.get(name)
    if ((cat.follows_caller and name not in routes.moved) or model not in cat.rungs
            or (split is not None and model == split.base)):
        return Plan(cat, None, None, unlisted, policy, generation)
    limits = None if model == cat.reference else policy.limits_for(model)
    rate = None if cat.escalate_on else sample_rate(cat, routes.rates)
    return Plan(cat, model, limits, unlisted, policy, generation, rate)
