"""The production side's one core: policy, routes, sampling, the publisher and the counters.

The SDK wrapper and the gateway both route, sample and hand off through a
:class:`Core`; nothing here raises into the caller or waits on I/O (routes are
an in-process dict refreshed in the background, publishing happens on the
publisher's thread).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import random
import threading
import time
from collections import Counter
from typing import Any

import redis as redis_lib

from tierguard import metrics
from tierguard.app import exits, forks, plans, snapshot, stream
from tierguard.app.publisher import Publisher
from tierguard.app.snapshot import Sampled
from tierguard.config import Settings, get_settings
from tierguard.headroom import ratelimits
from tierguard.policy import CategoryPolicy, Policy, valid_category
from tierguard.policy.live import LivePolicy
from tierguard.policy.model_limits import estimate, fits, too_big
from tierguard.routing.routes import RouteTable
from tierguard.store.db import make_engine

log = logging.getLogger(__name__)


class Core:
    """State shared by every entry point of one process: policy, routes, publisher, counters."""

    def __init__(self, settings: Settings | None = None, policy: Policy | None = None,
                 start_routes: bool = True):
        self.settings = settings or get_settings()
        self.live: LivePolicy | None = None
        if policy is None:
            self.live = LivePolicy(self.settings.policy, self.settings.policy_reload_s,
                                   on_change=self._policy_changed)
            policy = self.live.current
        self.policy = policy
        self.categories: dict[str, CategoryPolicy] = {}
        self._plans: dict[str, plans.Plan] = {}  # by category: how its calls are routed (see plans)
        url = self.settings.redis_url
        self.routes = RouteTable(
            lambda: redis_lib.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1),
            self.settings.route_ttl,
            lambda: make_engine(self.settings.database_url, pool_size=1),
        )
        self.routes.on_refresh = lambda: setattr(self, "_plans", {})  # (a new dict: see plan())
        self._start_routes = start_routes
        if start_routes:  # the routes before the first call, read here; the refresher starts later
            self.routes.refresh_quietly()
        self.publisher = Publisher(self.settings)
        self.counts: Counter[str] = Counter()
        self._refused_models: set[str] = set()
        self._unlisted_seen: dict[str, float] = {}  # unlisted category -> when last routed
        self._refusals_logged: set[str] = set()
        self._generation: int | None = None  # the background threads run in no process yet
        self._fork_lock = threading.Lock()

    def check_fork(self, start: bool = True) -> None:
        """Background threads running in this process: started on first use (a process that builds
        the client and then forks starts none), restarted in a forked child with connections and
        counters of its own (once, whichever thread comes first). ``start=False``: only the
        restart, for reads and closing."""
        if self._generation == forks.generation or (self._generation is None and not start):
            return
        with self._fork_lock:
            if self._generation == forks.generation:
                return
            if self._generation is None:
                self._start()
            else:  # a forked child: what the parent held is the parent's to publish and count
                self.counts = Counter()
                self.publisher.restart_after_fork()
                self.routes.restart_after_fork()
                if self.live is not None:
                    self.live.restart_after_fork()
            self._generation = forks.generation

    def _start(self) -> None:
        self.publisher.start()
        exits.watch(self.publisher)
        if self._start_routes:
            self.routes.start(wait=0)
            if self.live is not None:
                self.live.start()

    def _policy_changed(self, old: Policy, new: Policy) -> None:
        self.policy, self.categories, self._plans = new, {}, {}

    def category(self, name: str) -> CategoryPolicy:
        cat = self.categories.get(name)
        if cat is None:
            cat = self.categories[name] = self.policy.category(name)
        return cat

    def route(self, name: str, request: dict[str, Any]) -> tuple[CategoryPolicy | None, dict[str, Any]]:
        """The request with ``model`` set from the category's route (unchanged if that fails).

        A staged rollout (``routes.splits``) sends its share of the calls routed to the model in
        service to its new model. A request the routed model cannot take (limits) goes to the
        cheapest rung above it that can (the reference for two models) for this call only, counted
        as ``guarded``. Most calls read their category's :class:`~tierguard.app.plans.Plan` alone.
        """
        plan = self.planned(name, request)
        if plan is not None:
            return plan.cat, {**request, "model": plan.model}
        try:
            self.check_fork()
            return self._route(name, request)
        except Exception:
            self._failed("routing")
            return None, request

    def planned(self, name: str, request: dict[str, Any]) -> plans.Plan | None:
        """The plan of a call that needs nothing but it — a listed category, a routed model that
        takes the request — else None (then :meth:`route` it). Never raises."""
        try:
            if self._generation != forks.generation:
                self.check_fork()
            plan = self.plan(name)
            if plan is None or plan.model is None or plan.unlisted:
                return None
            limits = plan.limits
            return plan if limits is None or fits(limits, request) else None
        except Exception:
            return None  # route() counts what fails

    def plan(self, name: str) -> plans.Plan | None:
        """``name``'s routing as of the latest route refresh and policy (None for a category not
        seen yet: the full path makes its state). A refresh or a new policy empties the plans."""
        found = self._plans.get(name)
        if found is not None:
            return found
        cat = self.categories.get(name)
        if cat is None:
            return None
        kept, generation = self._plans, self.routes.generation
        found = plans.make(self, cat, name, self.policy, self.routes, generation)
        if self.routes.generation == generation:  # not made while the tables changed
            kept[name] = found
        return found

    def _route(self, name: str, request: dict[str, Any]) -> tuple[CategoryPolicy | None, dict[str, Any]]:
        """:meth:`route`'s full path: a category seen for the first time, or a call that needs more
        than its category's plan (a staged rollout's draw, a refused route, the caller's model, the
        guard's choice, an unlisted category's use noted)."""
        cat = self.categories.get(name)
        if cat is None:
            refused = self._refuse(name)
            if refused:  # served as the caller sent it, unrouted and unshadowed
                self.uncategorized(refused)
                return None, (request if request.get("model") else
                              {**request, "model": self.policy.models.rungs[-1]})
            cat = self.category(name)
        if cat.name not in self.policy.categories:
            self._unlisted_seen[name] = time.monotonic()
        if cat.follows_caller and name not in self.routes.moved:  # unlisted, not moved yet
            return cat, (request if request.get("model") else {**request, "model": cat.reference})
        model = self.routes.get(name, cat.initial_route)
        if model not in cat.rungs:
            model = self._refused_route(cat, model)
        split = self.routes.splits.get(name)
        if split is not None and model == split.base:  # a staged rollout's share
            model = self._split(cat, split, model)
        if model != cat.reference and too_big(self.policy.limits_for(model), request,
                                              est := estimate(request)):  # attachments read once
            model = self._guarded(cat, name, request, model, est)
        return cat, {**request, "model": model}

    def _guarded(self, cat: CategoryPolicy, name: str, request: dict[str, Any], model: str,
                 est: Any) -> str:
        """The cheapest rung above ``model`` that can take a request too big for it (the reference
        at last), counted ``guarded``."""
        model = next((m for m in cat.above(model)
                      if not too_big(self.policy.limits_for(m), request, est)), cat.reference)
        self.publisher.count(name, model, "guarded")
        return model

    def _split(self, cat: CategoryPolicy, split: Any, model: str) -> str:
        """A staged rollout's pick for a call routed to ``model``; a split to a model the policy does
        not know (a forged or stale Redis copy) is never followed (counted ``split_refused``)."""
        if split.model in cat.rungs or split.model in self.policy.known_models:
            return split.pick(model)
        self.refuse("split_refused", "a rollout split of %s names %r, which the policy does not know: "
                    "not followed", cat.name, split.model)
        return model

    def _refused_route(self, cat: CategoryPolicy, model: str) -> str:
        """A route to a model the policy does not list (a forged Redis copy, a stale row): never
        served; the category's reference instead (what a route off its ladder moves to), counted
        and logged once per model."""
        self.counts["route_refused"] += 1
        if model not in self._refused_models:
            self._refused_models.add(model)
            log.error("tierguard: the route of %s names %r, which the policy does not list; serving "
                      "%s instead", cat.name, model, cat.reference)
        return cat.reference

    def _refuse(self, name: str) -> str | None:
        """Why a category seen for the first time gets no state, or None to track it."""
        if not valid_category(name):
            return "invalid_name"
        policy = self.policy
        if name in policy.categories:
            return None
        if policy.unknown_categories.mode == "pass_through":
            return "unknown"
        cap, routes = policy.max_categories, self.routes.routes
        if len(self.categories) + len(routes) < cap:
            return None  # under the cap however they overlap: no set to build
        self._forget_idle()
        unlisted = (self.categories.keys() | routes.keys()) - policy.categories.keys()
        return "over_max_categories" if len(unlisted) >= cap else None

    def _forget_idle(self) -> None:
        """Unlisted categories not seen for ``unknown_category_ttl_days`` leave the cache (the
        database forgets them too: store/maintenance), so a burst of junk names cannot hold the
        cap for good."""
        cutoff = time.monotonic() - self.policy.unknown_category_ttl_days * 86_400
        for name in [n for n, at in list(self._unlisted_seen.items()) if at < cutoff]:
            self._unlisted_seen.pop(name, None)
            self.categories.pop(name, None)
            self._plans.pop(name, None)

    def tenant_refuses(self, name: str, api_key: str | None) -> bool:
        """With ``gateway_tenants``: whether the caller's key may not name ``name`` (its team's
        globs); such a call is served as sent, unrouted and unshadowed, counted ``tenant_mismatch``."""
        tenants = self.policy.gateway_tenants
        if not tenants:
            return False
        digest = hashlib.sha256((api_key or "").encode()).hexdigest()
        tenant = self.policy.tenant_of(digest)
        if tenant is not None and tenant.allows(name):
            return False
        self.uncategorized("tenant_mismatch")
        return True

    def rolling(self, name: str) -> str | None:
        """The model a staged rollout of ``name`` is sending a share of its calls to, or None."""
        split = self.routes.splits.get(name)
        return split.model if split is not None else None

    def sampled(self, cat: CategoryPolicy | None, request: dict[str, Any]) -> bool:
        """Count one production call of ``cat``; whether it is to be shadowed."""
        if cat is None:
            return False
        try:
            model, ladder = request.get("model", ""), cat.ladder
            self.publisher.count(cat.name, model)
            on = model in ladder if ladder else (model == cat.candidate or model == cat.reference)
            if not on and model != self.rolling(cat.name):  # a caller's own model
                # off the category's ladder: no evidence
                self.counts["unshadowed_off_ladder"] += 1
                return False
            return random.random() < plans.sample_rate(cat, self.routes.rates)
        except Exception:
            self._failed("sampling")
            return False

    def rate_limited(self, model: str | None, retry_after: Any, scope: str = "") -> None:
        """A production 429 on ``model``: its shadows pause for ``retry-after`` (never raises).
        ``scope``: the caller's key fingerprint at a gateway with tenants (its pause is its own)."""
        try:
            wait = float(retry_after) if retry_after not in (None, "") else None
        except (TypeError, ValueError):
            wait = None
        try:
            if model:
                self.publisher.rate_limited(ratelimits.scoped(model, scope), wait)
        except Exception:
            self._failed("pausing shadows")

    def saw_headers(self, model: str | None, headers: Any, scope: str = "") -> None:
        """A production response's headers: its rate-limit view gates the shadows (never raises);
        ``scope`` as for :meth:`rate_limited`."""
        try:
            if model and headers is not None:
                self.publisher.saw_headers(ratelimits.scoped(model, scope), headers)
        except Exception:
            self._failed("reading rate-limit headers")

    def served(self, cat: CategoryPolicy | None, request: dict[str, Any], usage: Any,
               escalated: bool = False) -> None:
        """Add a production answer's tokens to its category's counters (every call, measured;
        ``escalated``: the answer of an escalated call, its spend also counted apart)."""
        if cat is None or usage is None:
            return
        try:
            self.publisher.add_usage(cat.name, request.get("model", ""), usage, escalated)
        except Exception:
            self._failed("counting tokens")

    def checked(self, cat: CategoryPolicy, model: str | None, reason: str | None) -> None:
        """A ``model`` answer checked against ``cat``'s checks (``reason``: the one it failed):
        one outcome of the rung's escalation stream (counted with the traffic)."""
        try:
            self.publisher.count(cat.name, model or "", "checked")
            if reason is not None:
                self.publisher.count(cat.name, model or "", f"escalated_{reason}")
        except Exception:
            self._failed("counting a checked answer")

    def escalated(self, cat: CategoryPolicy, model: str | None, to: str | None, reason: str) -> None:
        """A ``model`` answer failed ``reason``; the caller got ``to``'s (a production call too)."""
        try:
            self.counts["escalated"] += 1
            self.counts[f"escalated_{reason}"] += 1
            metrics.ESCALATIONS.labels(cat.name, model or "", reason).inc()
            self.publisher.count(cat.name, to or "")
            self.publisher.count(cat.name, to or "", "escalated_calls")
        except Exception:
            self._failed("counting an escalation")

    def escalation_failed(self, cat: CategoryPolicy, model: str | None, to: str | None, reason: str,
                          status: int | None) -> None:
        """The escalated call failed: the caller got the original answer (counted, logged once)."""
        self.refuse("escalation_failed", "an answer of %s failed its check (%s) and the escalated "
                    "call to %s failed (%s): the caller got the original answer", model, reason, to,
                    status or "an exception")

    def snapshot(self, request: dict[str, Any], defaults: Any = None
                 ) -> tuple[dict[str, str] | None, str] | None:
        """(shaping headers, the body as JSON text) of a sampled call, taken now on the caller's
        thread (:mod:`~tierguard.app.snapshot`); None if it cannot be taken (counted)."""
        try:
            return snapshot.shaping_headers(request, defaults), snapshot.take(request)
        except Exception:
            self.counts["dropped_unserializable"] += 1
            log.warning("tierguard: a sampled request could not be copied; it is not shadowed",
                        exc_info=True)
            return None

    def submit(self, cat: CategoryPolicy, request: dict[str, Any], answer: Any, started: float,
               headers: dict[str, str] | None = None, body: str | bytes | None = None) -> None:
        """Hand a sampled call to the publisher: its routed ``request`` (for the model), the served
        answer, the shaping headers and ``body``, the request as sent (JSON text; a snapshot of
        ``request`` is taken now when it is not given)."""
        if isinstance(answer, dict) and answer.get(stream.UNASSEMBLED):
            self.refuse("stream_too_long", "a sampled stream was longer than "
                        "TIERGUARD_STREAM_ASSEMBLY_MAX (%d): relayed whole, not shadowed",
                        self.settings.stream_assembly_max)
            return
        try:
            if body is None:
                taken = self.snapshot(request)
                if taken is None:
                    return
                headers, body = headers or taken[0], taken[1]
            model = request["model"]
            self.publisher.submit(Sampled(cat.name, model, cat.other_model(model), body, headers, answer,
                                          (time.perf_counter() - started) * 1000,
                                          dt.datetime.now(dt.UTC)))
        except Exception:
            self._failed("sampling")

    def uncategorized(self, reason: str = "no_category") -> None:
        self.counts["uncategorized"] += 1
        self.counts[f"uncategorized_{reason}"] += 1
        metrics.UNCATEGORIZED.labels(reason).inc()

    def left(self) -> None:
        """A caller that left before its answer (counted ``caller_left``)."""
        self.counts["caller_left"] += 1
        metrics.REFUSED.labels("caller_left").inc()

    def refuse(self, kind: str, why: str, *args: Any) -> None:
        """Count one refusal of ``kind``; the first of each kind in this process is logged (``why``),
        the rest only counted (a flood of them must not flood the log)."""
        self.counts[kind] += 1
        metrics.REFUSED.labels(kind).inc()
        if kind not in self._refusals_logged:
            self._refusals_logged.add(kind)
            log.warning("tierguard: " + why + " (counted as %s; later ones are only counted)",
                        *args, kind)

    def _failed(self, where: str) -> None:
        self.counts["internal_errors"] += 1
        log.exception("tierguard: %s failed; the call goes on unshadowed", where)

    def stats(self) -> dict[str, int]:
        self.check_fork(start=False)
        return {**self.publisher.counts, "internal_errors": 0, **self.counts,
                "route_refresh_failures": self.routes.failures}

    def close(self) -> None:
        self.check_fork(start=False)
        if self.live is not None:
            self.live.stop()
        self.routes.stop()
        self.publisher.close()
