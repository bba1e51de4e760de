"""The policy file's self-contained sections: models, prices, limits, headroom, retention, payloads,
retirement dates."""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from tierguard.policy.base import Strict
from tierguard.policy.platform_ids import DEFAULT_MODEL_IDS, bare


class Models(Strict):
    """Two models (``candidate``, ``reference``), or a ``ladder`` of them, cheapest first."""

    candidate: str = "claude-haiku-4-5"
    reference: str = "claude-opus-4-7"
    ladder: list[str] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Models:
        if self.ladder is not None:
            both = {"candidate", "reference"} & self.model_fields_set
            if both:
                raise ValueError(f"ladder: set the ladder or {' and '.join(sorted(both))}, not both")
            check_ladder(self.ladder)
        return self

    @property
    def rungs(self) -> tuple[str, ...]:
        return tuple(self.ladder) if self.ladder is not None else (self.candidate, self.reference)


def check_ladder(ladder: list[str]) -> None:
    if len(ladder) < 2:
        raise ValueError("ladder: needs at least two models, cheapest first, the reference last")
    if len(set(ladder)) != len(ladder):
        raise ValueError(f"ladder: a model is listed twice ({', '.join(ladder)})")


class ModelLimits(Strict):
    context_tokens: int = Field(gt=0, description="input + output tokens the model takes")
    max_output_tokens: int = Field(gt=0)


class Price(Strict):
    input: float = Field(ge=0, description="USD per million input tokens")
    output: float = Field(ge=0, description="USD per million output tokens")
    cache_write: float | None = Field(None, ge=0, description="USD per million cache-write tokens "
                                      "(default 1.25 × input)")
    cache_read: float | None = Field(None, ge=0, description="USD per million cache-read tokens "
                                     "(default 0.1 × input)")
    batch_discount: float = Field(0.5, gt=0, le=1, description="price factor for Message Batches")

    def usd(self, input_tokens: int, output_tokens: int, cache_write_tokens: int = 0,
            cache_read_tokens: int = 0, batch: bool = False) -> float:
        write = self.cache_write if self.cache_write is not None else 1.25 * self.input
        read = self.cache_read if self.cache_read is not None else 0.1 * self.input
        total = (input_tokens * self.input + output_tokens * self.output
                 + cache_write_tokens * write + cache_read_tokens * read) / 1_000_000
        return total * self.batch_discount if batch else total


class ShadowHeadroom(Strict):
    """How shadows yield to production's rate limits (tierguard.headroom.pauses)."""

    max_defer_minutes: float = Field(60, gt=0, description="then a deferred job is recorded as "
                                     "skipped (rate_headroom)")
    min_remaining: float = Field(0.25, ge=0, le=1, description="shadows wait while a model has less "
                                 "than this share of a rate limit left (the API's headers)")
    follow_production: bool = Field(True, description="with TIERGUARD_SHADOW_API_KEY: production's "
                                    "headroom and 429s gate the shadows too (false: only for a key "
                                    "in a workspace of its own)")


class Sentinels(Strict):
    """A category's known answers, run against every rung on a schedule (pipeline/sentinels.py)."""

    file: str = Field(min_length=1, description="JSON lines: Messages API bodies without model, "
                      "each with 'expected' (the right answer's text); relative to the policy file")
    every_hours: float = Field(24, gt=0, le=24 * 366, description="hours between runs")
    tolerance: float = Field(0.05, ge=0, le=1, description="accuracy a rung may lose against its "
                             "baseline before sentinel_failed")


class ShadowCap(Strict):
    """Hard caps on one model's shadow calls, across every worker (tierguard.headroom.caps)."""

    requests_per_minute: int | None = Field(None, ge=1)
    input_tokens_per_minute: int | None = Field(None, ge=1)
    output_tokens_per_minute: int | None = Field(None, ge=1)


class Retention(Strict):
    """How long raw samples and aggregates are kept (audit tables are kept for good)."""

    samples_days: float = Field(30, gt=0)
    rollups_days: float = Field(400, gt=0)


class Payloads(Strict):
    """What of a production request and its answers is stored with a sample."""

    store: Literal["hash", "excerpt"] = "hash"
    excerpt_chars: int = Field(500, ge=1, le=100_000)


class UnknownCategories(Strict):
    """What happens to a category the policy does not list (``track`` / ``pass_through`` alone
    are short for ``{mode: …}``)."""

    mode: Literal["track", "pass_through"] = "track"
    # caller: served with the model the caller named (the reference when it names none), tracked
    # and shadowed for evidence; cheapest, reference or a model of models.ladder: routed from it.
    start_on: str = "caller"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"mode": v} if isinstance(v, str) else v

    def unlisted(self, tunables: dict[str, Any]) -> bool:
        """Set an unlisted category's start (on the caller's model: the reference in the database,
        never auto-promoted); True when it follows the caller's model until moved on purpose."""
        follows = self.start_on == "caller"
        tunables["start_on"] = "reference" if follows else self.start_on
        if follows:
            tunables["auto_promote"] = False
        return follows

    def problems(self, rungs: tuple[str, ...]) -> list[str]:
        if self.start_on in ("caller", "cheapest", "candidate", "reference", *rungs):
            return []
        return [f"unknown_categories.start_on: {self.start_on!r} is not caller, cheapest, reference "
                f"or a model of models.ladder ({', '.join(rungs)})"]


SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class GatewayTenant(Strict):
    """One team at the gateway: its API keys (SHA-256, hex) and the category globs it may name."""

    keys: list[str] = Field(min_length=1)
    categories: list[str] = Field(min_length=1)

    @field_validator("keys")
    @classmethod
    def _digests(cls, v: list[str]) -> list[str]:
        for key in v:
            if not SHA256_HEX.fullmatch(key):
                raise ValueError("each key is the SHA-256 of an API key, as 64 lowercase hex digits "
                                 "(never the key itself): printf %s \"$KEY\" | sha256sum")
        return v

    def allows(self, category: str) -> bool:
        return any(fnmatch.fnmatchcase(category, glob) for glob in self.categories)


def tenant_problems(tenants: dict[str, GatewayTenant]) -> list[str]:
    """A key in two tenants would make its caller's team ambiguous."""
    owner: dict[str, str] = {}
    problems = []
    for name, tenant in tenants.items():
        for key in tenant.keys:
            if key in owner and owner[key] != name:
                problems.append(f"gateway_tenants.{name}.keys: {key[:12]}… is also {owner[key]}'s")
            owner[key] = name
    return problems


def platform_problems(model_ids: dict[str, dict[str, str]], pricing: dict[str, dict[str, Any]],
                      known: set[str]) -> list[str]:
    """What is wrong with ``model_ids`` and ``platform_pricing``: a platform that is not Bedrock or
    Vertex, a model the policy does not know, an empty id, one id given to two models."""
    problems = []
    for field, given in (("model_ids", model_ids), ("platform_pricing", pricing)):
        for platform, per_model in given.items():
            if platform not in DEFAULT_MODEL_IDS:
                problems.append(f"{field}.{platform}: unknown platform (bedrock or vertex)")
                continue
            problems += [f"{field}.{platform}.{model}: not a model of this policy (models, categories "
                         f"or pricing)" for model in per_model if model not in known]
    for platform, ids in model_ids.items():
        owner: dict[str, str] = {}
        for model, model_id in ids.items():
            if not model_id.strip():
                problems.append(f"model_ids.{platform}.{model}: an empty id")
            elif bare(platform, model_id) in owner:
                problems.append(f"model_ids.{platform}.{model}: {model_id} is "
                                f"{owner[bare(platform, model_id)]}'s id too")
            owner.setdefault(bare(platform, model_id), model)
    return problems


ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def mapping_of_dates(v: Any) -> Any:
    """``retirements`` before its values are read: a mapping (an empty key means none)."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError("must be a mapping of model to its retirement date (MODEL: YYYY-MM-DD)")
    return v


def iso_date(v: Any) -> dt.date:
    """A retirement date: a YAML date or an ISO ``YYYY-MM-DD`` string (not a time)."""
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return v
    if isinstance(v, str) and ISO_DATE.fullmatch(v.strip()):
        try:
            return dt.date.fromisoformat(v.strip())
        except ValueError:
            pass
    raise ValueError(f"{v!r} is not an ISO date (YYYY-MM-DD, e.g. 2026-10-01)")


# The policy's ``retirements``: model -> its retirement date (errors name ``retirements.MODEL``).
RetirementDates = Annotated[dict[str, Annotated[dt.date, BeforeValidator(iso_date)]],
                            BeforeValidator(mapping_of_dates)]
