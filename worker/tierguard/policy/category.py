"""One category's effective policy: the defaults merged with its overrides, and what follows from them
(its comparator, engine, ladder, rungs, initial route)."""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any, Literal

from tierguard import compare as comparators
from tierguard.compare.base import model_called
from tierguard.compare.checks import Checks
from tierguard.compare.registry import pattern_of
from tierguard.engine.detector import Engine, EngineConfig
from tierguard.engine.escalations import Watch as EscalationWatch
from tierguard.engine.ladder import Ladder
from tierguard.engine.sampling import SamplingConfig
from tierguard.policy.base import Strict
from tierguard.policy.sections import Sentinels

ComparatorSpec = str | dict[str, Any]
CheckReason = Literal["invalid", "refusal", "truncated", "empty"]  # compare/checks.py


class CategoryPolicy(Strict):
    """One category's effective settings (defaults merged with its overrides)."""

    name: str
    candidate: str
    reference: str
    sample_rate: float
    threshold: float
    healthy: float | None
    false_flip_rate: float
    false_flip_horizon: int
    comparator: ComparatorSpec
    min_samples: int
    promote_threshold: float
    promote_min_samples: int
    promote_error_rate: float
    auto_promote: bool
    cooldown_minutes: float
    flap_limit: int
    flap_window_hours: float
    mode: Literal["enforce", "observe"]
    noise_floor_rate: float
    start_on: str
    demote_to: Literal["reference", "next"]
    probe_rate: float
    ladder: tuple[str, ...] = ()
    sampling: Literal["fixed", "adaptive"]
    sample_rate_min: float
    sample_rate_max: float
    shadow_budget_usd_per_day: float | None
    shadow_via: Literal["sync", "batch"]
    batch_max_jobs: int
    batch_max_wait_minutes: float
    sentinels: Sentinels | None = None  # known answers run against every rung on a schedule
    follows_caller: bool = False  # unlisted, start_on caller: the caller's model until moved
    escalate_on: tuple[CheckReason, ...] = ()  # answer checks (compare/checks.py); none: no checks
    escalate_to: Literal["reference", "next"] = "reference"  # where a failed answer goes
    buffer_streams: bool = False  # streams buffered and checked before they are relayed
    max_escalation_rate: float = 0.05  # the escalation CUSUM's limit per (category, rung)
    challenge_rate: float = 0.2  # share of sampled jobs that also ask a challenger
    auto_rollout: bool = False  # an eligible, cheaper challenger rolled out by itself (pipeline/challengers)

    @cached_property
    def challenge_engine(self) -> Engine:
        """The promotion rule a challenger's eligibility follows (never promoting by itself)."""
        return Engine(dataclasses.replace(self.engine_config, auto_promote=False, observe=False))

    @property
    def sampling_config(self) -> SamplingConfig:
        return SamplingConfig(mode=self.sampling, fixed_rate=self.sample_rate,
                              rate_min=self.sample_rate_min, rate_max=self.sample_rate_max,
                              min_samples=self.min_samples, settle_s=max(self.cooldown_minutes, 60) * 60,
                              budget_usd_per_day=self.shadow_budget_usd_per_day)

    @cached_property
    def escalation_watch(self) -> EscalationWatch:
        """The escalation CUSUM of this category's rungs (engine/escalations.py)."""
        return EscalationWatch(self.max_escalation_rate, self.false_flip_rate, self.false_flip_horizon,
                               self.min_samples)

    @cached_property
    def compare(self) -> comparators.Comparator:
        return comparators.resolve(self.comparator)

    @cached_property
    def checks(self) -> Checks:
        """The answer checks of ``escalate_on`` against the comparator's format, compiled once."""
        return Checks(self.escalate_on, self.compare, pattern_of(self.comparator))

    @property
    def judge_model(self) -> str | None:
        """The model the comparator calls for each comparison (the judge's), or None."""
        return model_called(self.compare, self.reference)

    @property
    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            threshold=self.threshold, healthy=self.healthy_level,
            false_flip_rate=self.false_flip_rate, horizon=self.false_flip_horizon,
            min_samples=self.min_samples, promote_threshold=self.promote_threshold,
            promote_min_samples=self.promote_min_samples, promote_error_rate=self.promote_error_rate,
            auto_promote=self.auto_promote,
            cooldown_s=self.cooldown_minutes * 60, flap_limit=self.flap_limit,
            flap_window_s=self.flap_window_hours * 3600, observe=self.mode == "observe")

    @cached_property
    def engine(self) -> Engine:
        return Engine(self.engine_config)

    @cached_property
    def ladder_engine(self) -> Ladder:
        """One state per rung (only for ladders of three or more: two rungs use ``engine``)."""
        manual = Engine(dataclasses.replace(self.engine_config, auto_promote=False))
        return Ladder(self.rungs, self.engine, manual, self.demote_to)

    @property
    def healthy_level(self) -> float:
        return self.healthy if self.healthy is not None else min(self.threshold + 0.03, 0.999)

    @property
    def rungs(self) -> tuple[str, ...]:
        """The ladder, cheapest first, the reference last (two rungs: candidate, reference)."""
        return self.ladder or (self.candidate, self.reference)

    @property
    def laddered(self) -> bool:
        """More than two rungs: every rung watched, probes, one engine state per rung."""
        return len(self.rungs) > 2

    def other_model(self, served: str) -> str:
        """The model a request served by ``served`` is shadowed to: the reference, or, while the
        reference serves, the rung just below it (the next to promote)."""
        if served != self.reference:  # a rung, or a model a staged rollout sends calls to
            return self.reference
        return self.rungs[-2] if self.laddered else self.candidate

    def above(self, model: str) -> tuple[str, ...]:
        """The rungs dearer than ``model``, cheapest first (the reference for one off the ladder)."""
        rungs = self.rungs
        return rungs[rungs.index(model) + 1:] if model in rungs else (self.reference,)

    @property
    def initial_route(self) -> str:
        if self.start_on in ("cheapest", "candidate"):
            return self.candidate
        return self.reference if self.start_on == "reference" else self.start_on
