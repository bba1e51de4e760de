"""The shadow job: what the wrapper hands to a worker, as plain JSON."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

# Request headers that change what the API does with a body (and are no secret): the only ones a
# shadow job carries and a worker sends.
SHAPING_HEADERS = ("anthropic-beta",)


@dataclass(frozen=True)
class ShadowJob:
    """What the wrapper sends: the request, who served it, and the served answer."""

    job_id: str
    category: str
    served_model: str
    shadow_model: str
    request: dict[str, Any]
    primary_text: str
    primary_input_tokens: int | None = None
    primary_output_tokens: int | None = None
    primary_latency_ms: float | None = None
    requested_at: str | None = None
    sealed: str | None = None  # request and primary_text, encrypted (tierguard.contract.sealing)
    primary_cache_write_tokens: int | None = None
    primary_cache_read_tokens: int | None = None
    deferred_since: str | None = None  # first deferred for a rate-limit pause (tierguard.headroom.pauses)
    # Headers that shape the request (``anthropic-beta``; never credentials), sent with the shadow.
    headers: dict[str, str] | None = None
    # The request and primary text kept out of the broker message (a large job): the key of the
    # stored payload (tierguard.contract.job_store); ``request`` is then empty until the worker loads it.
    payload_ref: str | None = None
    # HMAC-SHA256 of the job with TIERGUARD_JOB_SIGNING_KEY, when jobs are signed rather than sealed.
    signature: str | None = None
    # The production answer's ``model`` field: the snapshot that served it (None from older producers).
    served_snapshot: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fields(self) -> dict[str, Any]:
        """:meth:`to_dict` without its deep copy, for a dict serialised at once and never changed."""
        return {name: getattr(self, name) for name in _field_names(type(self))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShadowJob:
        known = _field_names(cls)
        return cls(**{k: v for k, v in data.items() if k in known})


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    """A dataclass's field names, worked out once (every job a worker opens is built from a dict)."""
    return frozenset(f.name for f in dataclasses.fields(cls))


def digest(value: Any) -> str:
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(value.encode()).hexdigest()


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None
