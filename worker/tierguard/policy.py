"""The policy file: models, pricing, per-category rates, thresholds, comparators.

``load_policy(path)`` returns a validated :class:`Policy` or raises
:class:`~tierguard.errors.ConfigError` listing every bad field by its path.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from tierguard import comparators
from tierguard.errors import ConfigError


def _unit(v: float | None) -> float | None:
    if v is not None and not 0.0 <= v <= 1.0:
        raise ValueError("must be between 0 and 1")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Models(_Strict):
    candidate: str = "claude-haiku-4-5"
    reference: str = "claude-opus-4-7"


class Price(_Strict):
    input: float = Field(ge=0, description="USD per million input tokens")
    output: float = Field(ge=0, description="USD per million output tokens")


ComparatorSpec = str | dict[str, Any]


class _Tunables(_Strict):
    """Keys a category may set; unset ones come from ``defaults``."""

    sample_rate: float | None = None
    threshold: float | None = None
    comparator: ComparatorSpec | None = None
    min_samples: int | None = Field(None, ge=1)
    window: int | None = Field(None, ge=1)
    start_on: Literal["candidate", "reference"] | None = None

    _unit_fields = field_validator("sample_rate", "threshold")(_unit)

    @field_validator("comparator")
    @classmethod
    def _comparator_resolves(cls, spec: ComparatorSpec | None) -> ComparatorSpec | None:
        if spec is not None:
            comparators.resolve(spec)  # raises ValueError with the reason
        return spec


class Defaults(_Tunables):
    sample_rate: float = 0.05
    threshold: float = 0.90
    comparator: ComparatorSpec = "exact"
    min_samples: int = Field(50, ge=1)
    window: int = Field(200, ge=1)
    start_on: Literal["candidate", "reference"] = "candidate"


class CategoryOverrides(_Tunables):
    candidate: str | None = None
    reference: str | None = None


class Payloads(_Strict):
    """What of a production request and its answers is stored with a sample."""

    store: Literal["hash", "excerpt"] = "hash"
    excerpt_chars: int = Field(500, ge=1, le=100_000)


class CategoryPolicy(_Strict):
    """One category's effective settings (defaults merged with its overrides)."""

    name: str
    candidate: str
    reference: str
    sample_rate: float
    threshold: float
    comparator: ComparatorSpec
    min_samples: int
    window: int
    start_on: Literal["candidate", "reference"]

    @cached_property
    def compare(self) -> comparators.Comparator:
        return comparators.resolve(self.comparator)

    def other_model(self, served: str) -> str:
        """The model a request served by ``served`` is shadowed to."""
        return self.reference if served == self.candidate else self.candidate

    @property
    def initial_route(self) -> str:
        return self.candidate if self.start_on == "candidate" else self.reference


class Policy(_Strict):
    models: Models = Models()
    pricing: dict[str, Price] = {
        "claude-haiku-4-5": Price(input=1.0, output=5.0),
        "claude-opus-4-7": Price(input=5.0, output=25.0),
    }
    defaults: Defaults = Defaults()
    categories: dict[str, CategoryOverrides] = {}
    payloads: Payloads = Payloads()
    _resolved: dict[str, CategoryPolicy] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _distinct_models(self) -> Policy:
        for name, cat in self.categories.items():
            cand = cat.candidate or self.models.candidate
            ref = cat.reference or self.models.reference
            if cand == ref:
                raise ValueError(f"categories.{name}: candidate and reference are both {cand!r}")
        return self

    def category(self, name: str) -> CategoryPolicy:
        """Effective settings for ``name``; unknown categories get the defaults."""
        cache = self._resolved
        found = cache.get(name)
        if found is None:
            o = self.categories.get(name) or CategoryOverrides()
            d = self.defaults
            found = CategoryPolicy(
                name=name,
                candidate=o.candidate or self.models.candidate,
                reference=o.reference or self.models.reference,
                **{k: getattr(o, k) if getattr(o, k) is not None else getattr(d, k)
                   for k in _Tunables.model_fields},
            )
            cache[name] = found
        return found

    def cost_usd(self, model: str, input_tokens: int | None, output_tokens: int | None) -> float | None:
        price = self.pricing.get(model)
        if price is None or input_tokens is None or output_tokens is None:
            return None
        return (input_tokens * price.input + output_tokens * price.output) / 1_000_000


def _format(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append(f"{path}: {msg}" if path else msg)
    return out


def parse_policy(data: Any, source: str | None = None) -> Policy:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"top level: must be a mapping, not {type(data).__name__}"], source)
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err), source) from None


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
    return parse_policy(data, str(p))
