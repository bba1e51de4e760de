"""The worker's values: a finished shadow job (:class:`Result`), what the judge spent on it
(:class:`JudgeUsage`) and what recording it did (:class:`Outcome`).

Built by the calls (``fanout``, ``message_batches``, ``judging``, ``flow``), stored by
``recorder``; plain frozen values with no behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tierguard.compare import Verdict
from tierguard.contract.job import ShadowJob
from tierguard.engine.detector import Decision
from tierguard.store.tables import RouteChange

if TYPE_CHECKING:
    from tierguard.pipeline.calls import Answer


@dataclass(frozen=True)
class JudgeUsage:
    """What the judge spent on one sample."""

    model: str
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    platform: str = "anthropic"  # where it was asked (its price: the policy's platform_pricing)


@dataclass(frozen=True)
class Result:
    """One finished shadow job waiting to be recorded."""

    job: ShadowJob
    answer: Answer | None
    verdict: Verdict | None
    error: tuple[str, str] | None
    attempt: int
    kind: str = "shadow"
    judge: JudgeUsage | None = None


@dataclass(frozen=True)
class Outcome:
    """What recording one result did: its status, the decision, the route change, new events."""

    status: Literal["recorded", "duplicate", "error"]
    decision: Decision | None = None
    change: RouteChange | None = None
    events: int = 0
