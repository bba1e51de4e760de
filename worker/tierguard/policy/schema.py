"""The policy file: models, pricing, per-category rates, thresholds, comparators.

``load_policy(path)`` returns a validated :class:`Policy` or raises
:class:`~tierguard.errors.ConfigError` listing every bad field by its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from tierguard import compare as comparators
from tierguard.errors import ConfigError
from tierguard.policy.alerting import EVENT_KINDS, SEVERITIES, Alerting, Channel, Severity
from tierguard.policy.base import Strict, error_lines, unit, valid_category
from tierguard.policy.category import CategoryPolicy, CheckReason, ComparatorSpec
from tierguard.policy.model_limits import family_limits
from tierguard.policy.platform_ids import DEFAULT_MODEL_IDS, model_name_of
from tierguard.policy.sections import (
    GatewayTenant,
    ModelLimits,
    Models,
    Payloads,
    Price,
    Retention,
    RetirementDates,
    Sentinels,
    ShadowCap,
    ShadowHeadroom,
    UnknownCategories,
    check_ladder,
    platform_problems,
    tenant_problems,
)

__all__ = ["EVENT_KINDS", "SEVERITIES", "Alerting", "CategoryPolicy", "Channel", "Policy", "Severity",
           "load_policy", "parse_policy", "valid_category"]


class _Tunables(Strict):
    """Keys a category may set; unset ones come from ``defaults``."""

    sample_rate: float | None = None
    threshold: float | None = None
    healthy: float | None = None
    false_flip_rate: float | None = None
    false_flip_horizon: int | None = Field(None, ge=100, le=1_000_000)
    comparator: ComparatorSpec | None = None
    min_samples: int | None = Field(None, ge=1)
    promote_threshold: float | None = None
    promote_min_samples: int | None = Field(None, ge=1)
    # The promotion test's error rate (engine/betting.py): chance of declaring eligible a rung
    # whose agreement is at most promote_threshold, however often the evidence is looked at.
    promote_error_rate: float | None = None
    auto_promote: bool | None = None
    cooldown_minutes: float | None = Field(None, ge=0)
    flap_limit: int | None = Field(None, ge=2)
    flap_window_hours: float | None = Field(None, gt=0)
    mode: Literal["enforce", "observe"] | None = None
    noise_floor_rate: float | None = None
    # cheapest (candidate: the same), reference, or a model of the category's ladder.
    start_on: str | None = None
    demote_to: Literal["reference", "next"] | None = None  # where a failing rung goes (ladders)
    probe_rate: float | None = None  # share of sampled jobs that also ask a rung not in service
    # sampling: fixed keeps sample_rate; adaptive chooses between the two bounds (engine/sampling.py).
    sampling: Literal["fixed", "adaptive"] | None = None
    sample_rate_min: float | None = None
    sample_rate_max: float | None = None
    shadow_budget_usd_per_day: float | None = Field(None, ge=0)
    # shadow_via: batch sends shadows through the Message Batches API (pipeline/batches.py).
    shadow_via: Literal["sync", "batch"] | None = None
    batch_max_jobs: int | None = Field(None, ge=1, le=100_000)
    batch_max_wait_minutes: float | None = Field(None, gt=0)
    sentinels: Sentinels | None = None  # known answers run against every rung (pipeline/sentinels.py)
    # Answer checks (compare/checks.py): the reasons a served answer is escalated for, and where to.
    escalate_on: list[CheckReason] | None = None
    escalate_to: Literal["reference", "next"] | None = None
    buffer_streams: bool | None = None  # streams buffered, checked, then relayed (short outputs)
    max_escalation_rate: float | None = None  # the escalation CUSUM's limit per rung
    # Share of sampled jobs that also ask a challenger (pipeline/challengers.py); unset: the
    # policy's top-level challenge_rate.
    challenge_rate: float | None = None
    auto_rollout: bool | None = None  # an eligible, cheaper challenger is rolled out in steps by itself

    _unit_fields = field_validator("sample_rate", "threshold", "healthy", "promote_threshold",
                                   "noise_floor_rate", "sample_rate_min", "sample_rate_max",
                                   "probe_rate", "challenge_rate")(unit)

    @field_validator("escalate_on")
    @classmethod
    def _no_repeats(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) < len(v):
            twice = next(r for r in v if v.count(r) > 1)
            raise ValueError(f"{twice!r} is listed twice")
        return v

    @field_validator("false_flip_rate", "promote_error_rate", "max_escalation_rate")
    @classmethod
    def _small_rate(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v < 0.5:
            raise ValueError("must be above 0 and below 0.5")
        return v

    @field_validator("comparator")
    @classmethod
    def _comparator_resolves(cls, spec: ComparatorSpec | None) -> ComparatorSpec | None:
        if spec is not None:
            comparators.resolve(spec)  # raises ValueError with the reason
        return spec


class Defaults(_Tunables):
    sample_rate: float = 0.05
    threshold: float = 0.90
    healthy: float | None = None  # threshold + 0.03
    false_flip_rate: float = 0.01
    false_flip_horizon: int = Field(10_000, ge=100, le=1_000_000)
    comparator: ComparatorSpec = "exact"
    min_samples: int = Field(50, ge=1)
    promote_threshold: float = 0.95
    promote_min_samples: int = Field(200, ge=1)
    promote_error_rate: float = 0.01
    auto_promote: bool = False
    cooldown_minutes: float = Field(60, ge=0)
    flap_limit: int = Field(3, ge=2)
    flap_window_hours: float = Field(24, gt=0)
    mode: Literal["enforce", "observe"] = "enforce"
    noise_floor_rate: float = 0.0
    start_on: str = "cheapest"
    demote_to: Literal["reference", "next"] = "reference"
    probe_rate: float = 0.2
    sampling: Literal["fixed", "adaptive"] = "fixed"
    sample_rate_min: float = 0.01
    sample_rate_max: float = 0.10
    shadow_via: Literal["sync", "batch"] = "sync"
    batch_max_jobs: int = Field(1000, ge=1, le=100_000)
    batch_max_wait_minutes: float = Field(10, gt=0)
    escalate_on: list[CheckReason] = []
    escalate_to: Literal["reference", "next"] = "reference"
    buffer_streams: bool = False
    max_escalation_rate: float = 0.05
    auto_rollout: bool = False


class CategoryOverrides(_Tunables):
    candidate: str | None = None
    reference: str | None = None
    ladder: list[str] | None = None  # cheapest first, the reference last

    @field_validator("ladder")
    @classmethod
    def _valid_ladder(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            check_ladder(v)
        return v


class Policy(Strict):
    models: Models = Models()
    pricing: dict[str, Price] = {
        "claude-haiku-4-5": Price(input=1.0, output=5.0),
        "claude-sonnet-4-6": Price(input=3.0, output=15.0),
        "claude-opus-4-7": Price(input=5.0, output=25.0),
    }
    defaults: Defaults = Defaults()
    categories: dict[str, CategoryOverrides] = {}
    payloads: Payloads = Payloads()
    alerts: Alerting = Alerting()
    retention: Retention = Retention()
    shadow_headroom: ShadowHeadroom = ShadowHeadroom()
    limits: dict[str, ModelLimits] = {}  # by model name; families have defaults (model_limits)
    shadow_limits: dict[str, ShadowCap] = {}  # by model name: hard caps on shadow calls
    # A category a caller names that the policy does not: tracked (up to max_categories in all)
    # and served with the caller's model unless start_on says otherwise, or passed through.
    unknown_categories: UnknownCategories = UnknownCategories()
    max_categories: int = Field(500, ge=1, le=100_000)  # unlisted categories tracked at once
    unknown_category_ttl_days: float = Field(7.0, gt=0)  # an unlisted one without traffic is forgotten
    # Retirement dates (Anthropic's); model_retiring this many days ahead (pipeline/retirements.py).
    retirements: RetirementDates = {}
    retirement_warning_days: int = Field(30, ge=0)
    # Teams at the gateway (opt in): a caller's key names its team, its team the categories it may use.
    gateway_tenants: dict[str, GatewayTenant] = {}
    # Adaptive categories' shadow spend together stays under this (optional; see engine/sampling.py).
    shadow_budget_usd_per_day: float | None = Field(None, ge=0)
    # Bedrock's and Vertex's ids per model, over the defaults (policy/platform_ids.py), and their
    # prices where they differ from ``pricing`` (e.g. Bedrock's geographic inference profiles).
    model_ids: dict[str, dict[str, str]] = {}
    platform_pricing: dict[str, dict[str, Price]] = {}
    # Models shadowed beside every category's ladder on a share of its sampled jobs, judged against
    # the rung in service (engine/challengers.py); `tierguard challenge` adds and stops them too.
    challengers: list[str] = []
    challenge_rate: float = 0.2
    _resolved: dict[str, CategoryPolicy] = PrivateAttr(default_factory=dict)
    _limits: dict[str, tuple[int, int] | None] = PrivateAttr(default_factory=dict)
    _tenant_keys: dict[str, GatewayTenant] | None = PrivateAttr(default=None)
    _known: set[str] | None = PrivateAttr(default=None)
    _folder: Path | None = PrivateAttr(default=None)  # the policy file's: relative file keys start there

    @field_validator("alerts", mode="before")
    @classmethod
    def _channel_list(cls, v: Any) -> Any:
        return {"channels": v} if isinstance(v, list) else v

    _challenge_unit = field_validator("challenge_rate")(unit)

    @field_validator("categories")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not valid_category(name):
                raise ValueError(f"{name!r}: a category name is 1–64 of A-Z a-z 0-9 . _ : - "
                                 "(starting with a letter or digit)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        problems = []
        for where, name in [("defaults", None)] + [(f"categories.{n}", n) for n in self.categories]:
            c = self._merged(name or "")
            if c.healthy_level <= c.threshold:
                problems.append(f"{where}.healthy: must be above threshold ({c.threshold})")
            if c.promote_threshold < c.threshold:
                problems.append(f"{where}.promote_threshold: must be at least threshold ({c.threshold})")
            if c.laddered and c.shadow_via == "batch":
                problems.append(f"{where}.shadow_via: a ladder's probes are sync calls; use sync")
            if c.sample_rate_min > c.sample_rate_max:
                problems.append(f"{where}.sample_rate_min: must not exceed sample_rate_max "
                                f"({c.sample_rate_max})")
        if problems:
            raise ValueError("\n".join(problems))
        for name, cat in self.categories.items():
            if cat.ladder is not None and (cat.candidate or cat.reference):
                raise ValueError(f"categories.{name}.ladder: set the ladder or candidate/reference, "
                                 "not both")
            cand, ref = self._ladder(cat)[0], self._ladder(cat)[-1]
            if cand == ref:
                raise ValueError(f"categories.{name}: candidate and reference are both {cand!r}")
        for where, o in [("models", None)] + [(f"categories.{n}", c) for n, c in self.categories.items()]:
            explicit = self.models.ladder if o is None else o.ladder
            rungs = self.models.rungs if o is None else self._ladder(o)
            for model in explicit or ():
                if model not in self.pricing:
                    problems.append(f"{where}.ladder: {model} has no price in pricing")
            start = (self.defaults.start_on if o is None or o.start_on is None else o.start_on)
            if start not in ("cheapest", "candidate", "reference") and start not in rungs:
                field = "defaults.start_on" if o is None or o.start_on is None else f"{where}.start_on"
                problems.append(f"{field}: {start!r} is not cheapest, reference or a model of "
                                f"the ladder ({', '.join(rungs)})")
        for i, model in enumerate(self.challengers):
            if model not in self.pricing:
                problems.append(f"challengers[{i}]: {model} has no price in pricing")
            elif model in self.challengers[:i]:
                problems.append(f"challengers[{i}]: {model} is listed twice")
        problems += self.unknown_categories.problems(self.models.rungs)
        problems += tenant_problems(self.gateway_tenants)
        problems += platform_problems(self.model_ids, self.platform_pricing, self.known_models)
        if problems:
            raise ValueError("\n".join(dict.fromkeys(problems)))
        return self

    def _ladder(self, o: CategoryOverrides) -> tuple[str, ...]:
        top = self.models.rungs
        if o.ladder is not None:
            return tuple(o.ladder)
        if o.candidate or o.reference:
            return (o.candidate or top[0], o.reference or top[-1])
        return top

    def _merged(self, name: str) -> CategoryPolicy:
        o = self.categories.get(name)
        d = self.defaults
        ladder = self._ladder(o or CategoryOverrides())
        tunables = {k: getattr(o, k) if o is not None and getattr(o, k) is not None else getattr(d, k)
                    for k in _Tunables.model_fields}
        follows = o is None and bool(name) and self.unknown_categories.unlisted(tunables)
        if tunables["challenge_rate"] is None:
            tunables["challenge_rate"] = self.challenge_rate
        return CategoryPolicy(name=name, ladder=ladder if len(ladder) > 2 else (), candidate=ladder[0],
                              reference=ladder[-1], follows_caller=follows, **tunables)

    def category(self, name: str) -> CategoryPolicy:
        """Effective settings for ``name``; unknown categories get the defaults."""
        resolved = self.__pydantic_private__["_resolved"]  # not self._resolved: ~2 µs a read
        found = resolved.get(name)
        if found is None:
            found = resolved[name] = self._merged(name)
        return found

    def sentinel_file(self, name: str) -> Path | None:
        """The category's sentinel file (relative to the policy file's folder), or None."""
        spec = self.category(name).sentinels
        if spec is None:
            return None
        path = Path(spec.file).expanduser()
        return path if path.is_absolute() or self._folder is None else self._folder / path

    def tenant_of(self, key_digest: str) -> GatewayTenant | None:
        """The gateway tenant whose keys include ``key_digest`` (SHA-256 hex of an API key)."""
        if self._tenant_keys is None:  # built once per policy: looked up on every gateway request
            self._tenant_keys = {k: t for t in self.gateway_tenants.values() for k in t.keys}
        return self._tenant_keys.get(key_digest)

    def warm(self) -> None:
        """Design every listed category's detector now, not on its first sample."""
        for name in self.categories:
            self.category(name).engine  # noqa: B018

    def limits_for(self, model: str) -> tuple[int, int] | None:
        """(context tokens, max output tokens) of ``model``: the policy's, else its family's."""
        limits = self.__pydantic_private__["_limits"]  # as in category()
        if model not in limits:
            own = self.limits.get(model)
            limits[model] = (own.context_tokens, own.max_output_tokens) if own else family_limits(model)
        return limits[model]

    @property
    def known_models(self) -> set[str]:
        """Every model the policy names: its pricing, its models and every category's."""
        if self._known is None:  # read on every platform call the gateway routes
            names = set(self.pricing) | set(self.models.rungs)
            for o in self.categories.values():
                names |= set(self._ladder(o))
            self._known = names
        return self._known

    def model_ids_for(self, platform: str) -> dict[str, str]:
        """Model name -> ``platform``'s id: the policy's ``model_ids`` first, then the defaults."""
        if platform not in DEFAULT_MODEL_IDS:
            raise ValueError(f"platform: {platform!r} is not bedrock or vertex")
        own = self.model_ids.get(platform, {})
        return {**own, **{k: v for k, v in DEFAULT_MODEL_IDS[platform].items() if k not in own}}

    def model_id(self, platform: str, model: str) -> str:
        """``model``'s id on ``platform`` (``anthropic``: the name itself); LookupError naming the
        policy field to set when there is none."""
        if platform == "anthropic":
            return model
        found = self.model_ids_for(platform).get(model)
        if found is None:
            raise LookupError(f"model_ids.{platform}.{model}: no {platform} id for {model}; add one "
                              f"to the policy")
        return found

    def model_name(self, platform: str, model_id: str) -> str | None:
        """The model a ``platform`` id names (region prefixes and ``@DATE`` forgiven), or None."""
        if platform == "anthropic":
            return model_id
        return model_name_of(platform, model_id, self.model_ids_for(platform), self.known_models)

    def cost_usd(self, model: str, input_tokens: int | None, output_tokens: int | None,
                 cache_write_tokens: int | None = 0, cache_read_tokens: int | None = 0,
                 batch: bool = False, platform: str = "anthropic") -> float | None:
        """USD for one call's full usage (uncached input, output, cache writes and reads), at
        ``platform``'s price when ``platform_pricing`` gives one."""
        price = self.platform_pricing.get(platform, {}).get(model) or self.pricing.get(model)
        if price is None or input_tokens is None or output_tokens is None:
            return None
        return price.usd(input_tokens, output_tokens, cache_write_tokens or 0, cache_read_tokens or 0,
                         batch)


def parse_policy(data: Any, source: str | None = None) -> Policy:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"top level: must be a mapping, not {type(data).__name__}"], source)
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        raise ConfigError(error_lines(err), source) from None


def load_policy(path: str | Path | None) -> Policy:
    """Load ``path``; a missing file gives the built-in default policy."""
    if path is None:
        return Policy()
    p = Path(path)
    if not p.exists():
        return Policy()
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"{where}not valid YAML ({getattr(err, 'problem', err)})"], str(p)) from None
    except OSError as err:
        raise ConfigError([f"cannot read file: {err.strerror}"], str(p)) from None
    policy = parse_policy(data, str(p))
    policy._folder = p.resolve().parent
    return policy
