"""A category's route, worked out once per route refresh and policy: the hot path's one lookup.

Routing a call (:meth:`~tierguard.app.core.Core.route`) reads the policy, the route table,
any staged rollout and the routed model's limits. These change only when the routes are
refreshed (every ``TIERGUARD_ROUTE_TTL``, :attr:`RouteTable.generation
<tierguard.routing.routes.RouteTable.generation>`) or the policy reloads, so a category's
outcome is kept as a :class:`Plan` and a call reads one dict entry (emptied at each refresh);
the wrapper's calls then take the plan's own function (:attr:`Plan.take`), the whole hot
path of an ordinary call in one step.
A category whose calls each need more — a staged rollout's draw, a route to a model the
policy does not list (counted per call), an unlisted category still following the caller's
model — gets a plan without a model and takes the full path every time. The guard's verdict
depends on the call's own size, so it is never kept: a plan carries the limits to check it
against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from tierguard.app import escalation, forks
from tierguard.policy import CategoryPolicy, Policy
from tierguard.policy.model_limits import fits


class Marked(NamedTuple):
    """A call the wrapper's resources routed, as the tap gets it: set in ``app/tap.MARKED`` while
    the SDK sends it, so that no header carries it."""

    core: Any
    cat: CategoryPolicy
    model: str
    rate: float | None = None  # the share shadowed, known for a model on the ladder
    strip: bool = False  # the client's default headers name a category anyway: not sent upstream
    count: bool = False  # ``count_tokens``: not an answer to count or shadow
    quick: bool = False  # rate known, nothing to strip, an answer: the tap's quick path
    to: str | None = None  # where an answer failing the category's checks goes (None: not checked)


class Plan(NamedTuple):
    """How calls of one category are routed until the next refresh or policy change."""

    cat: CategoryPolicy
    model: str | None  # the routed model; None: every call takes the full path
    limits: tuple[int, int] | None  # the routed model's limits when the guard applies, else None
    unlisted: bool  # a category the policy does not list (its last use is noted per call)
    policy: Policy
    generation: int
    rate: float | None = None  # the share of its calls shadowed
    mark: Marked | None = None  # what the tap gets of a call that needs nothing but the plan
    take: Callable[[dict[str, Any]], Marked | None] | None = None  # the wrapper's hot path (see taker)


def sample_rate(cat: CategoryPolicy, rates: dict[str, float]) -> float:
    """The share of ``cat``'s calls shadowed: the policy's, or with adaptive sampling the rate the
    rates beat chose (``rates``, read with the routes)."""
    if cat.sampling == "adaptive":
        return rates.get(cat.name, cat.sample_rate_max)
    return cat.sample_rate


def make(core: Any, cat: CategoryPolicy, name: str, policy: Policy, routes: Any, generation: int) -> Plan:
    """``cat``'s plan from the route table ``routes`` as of ``generation`` (read before the
    routes: a plan is never newer than its stamp says), for ``core``."""
    unlisted = cat.name not in policy.categories
    model = routes.get(name, cat.initial_route)
    split = routes.splits.get(name)
    if ((cat.follows_caller and name not in routes.moved) or model not in cat.rungs
            or (split is not None and model == split.base)):
        return Plan(cat, None, None, unlisted, policy, generation)
    limits = None if model == cat.reference else policy.limits_for(model)
    rate = sample_rate(cat, routes.rates)
    to = escalation.target(cat, model, None if split is None else split.model)
    mark = Marked(core, cat, model, rate, quick=True, to=to)
    take = None if unlisted else taker(core, model, limits, mark)
    return Plan(cat, model, limits, unlisted, policy, generation, rate, mark, take)


def taker(core: Any, model: str, limits: tuple[int, int] | None, mark: Marked
          ) -> Callable[[dict[str, Any]], Marked | None]:
    """A plan's hot path for the wrapper: ``take(kwargs)`` sets ``kwargs["model"]`` and gives the
    call's mark when the plan alone routes it — ``core`` running in this process, lists given as
    lists (nothing to read into one), the guard's fit — else None, and the call takes the full path
    (``metadata`` and ``extra_headers`` are the resource's to look at first)."""

    def take(kwargs: dict[str, Any]) -> Marked | None:
        system = kwargs.get("system")
        if (core._generation != forks.generation or type(kwargs.get("messages")) is not list
                or (system is not None and type(system) is not str and type(system) is not list)
                or (("tools" in kwargs or "stop_sequences" in kwargs) and not _lists(kwargs))):
            return None
        try:
            if limits is not None and not fits(limits, kwargs):
                return None
        except Exception:  # an odd request: the full path routes it (and counts what fails)
            return None
        kwargs["model"] = model
        return mark

    return take


def _lists(kwargs: dict[str, Any]) -> bool:
    """Whether ``tools`` and ``stop_sequences`` are lists (or absent)."""
    return all(type(kwargs.get(key)) in (list, type(None)) for key in ("tools", "stop_sequences"))
