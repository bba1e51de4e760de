"""The models the API lists (``GET /v1/models``, read by beat's ``tierguard.models`` task when beat
starts and every ``TIERGUARD_MODELS_POLL_SECONDS``), kept in Redis (``tierguard:models``).

A read that fails (the API unreachable, a refused key, Redis down) is logged and counted
(``tierguard_models_read_failures_total{reason}``, and ``failures`` in the hash), never raised;
the last successful list stays until another read succeeds. :func:`kept` is what the retirement
check reads: None while no read ever succeeded.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

import anthropic
import redis as redis_lib

from tierguard import metrics
from tierguard.config import Settings
from tierguard.contract import keys
from tierguard.pipeline.calls import classify
from tierguard.store.db import utcnow

log = logging.getLogger(__name__)
PAGE = 1000  # the API's largest page


@dataclass(frozen=True)
class Listed:
    """The last successful read: the model ids and when (ISO 8601, UTC)."""

    ids: frozenset[str]
    read_at: str


def client_for(settings: Settings) -> anthropic.Anthropic:
    """A client as the workers call Anthropic's API (``TIERGUARD_SHADOW_API_KEY``, else the SDK's
    ``ANTHROPIC_API_KEY``); no retries: the next read is the retry."""
    key = settings.shadow_api_key.get_secret_value() if settings.shadow_api_key else None
    return anthropic.Anthropic(api_key=key, max_retries=0, timeout=settings.shadow_timeout)


def read(client: Any) -> list[str]:
    """Every model id the API lists, through every page (the SDK pages with ``after_id``)."""
    return [model.id for model in client.models.list(limit=PAGE)]


def refresh(r: redis_lib.Redis, client: Any, now: dt.datetime | None = None) -> dict[str, Any]:
    """Read the list and keep it; what happened (``models``: how many, or ``failed``: why)."""
    at = (now or utcnow()).isoformat(timespec="seconds")
    try:
        ids = read(client)
    except Exception as err:  # the API unreachable or refusing: keep the last list, say so
        failure = classify(err)
        return _failed(r, failure.kind, str(failure), at)
    try:
        r.hset(keys.MODELS, mapping={"ids": json.dumps(sorted(ids)), "read_at": at, "failures": 0})
        r.hdel(keys.MODELS, "failed_at", "error")
    except redis_lib.RedisError as err:
        metrics.MODELS_READ_FAILURES.labels("redis").inc()
        log.warning("read %d models from the API but cannot keep them in Redis: %s", len(ids), err)
        return {"failed": "redis"}
    log.info("the API lists %d models", len(ids))
    return {"models": len(ids)}


def _failed(r: redis_lib.Redis, reason: str, said: str, at: str) -> dict[str, Any]:
    metrics.MODELS_READ_FAILURES.labels(reason).inc()
    log.warning("cannot read the API's model list (%s); the last one read is kept", said)
    try:
        pipe = r.pipeline(transaction=False)
        pipe.hset(keys.MODELS, mapping={"failed_at": at, "error": said})
        pipe.hincrby(keys.MODELS, "failures", 1)
        pipe.execute()
    except redis_lib.RedisError as err:
        log.warning("cannot note the failed read in Redis either: %s", err)
    return {"failed": reason}


def kept(r: redis_lib.Redis | None) -> Listed | None:
    """The last successful read, or None (never read, or Redis unreachable)."""
    if r is None:
        return None
    try:
        found = r.hmget(keys.MODELS, "ids", "read_at")
    except redis_lib.RedisError as err:
        log.warning("cannot read the kept model list: %s", err)
        return None
    if not found[0]:
        return None
    return Listed(frozenset(json.loads(found[0])), found[1].decode() if found[1] else "")


def state(r: redis_lib.Redis) -> dict[str, Any]:
    """The hash as plain values (for status and tests): ``ids``, ``read_at``, ``failed_at``,
    ``error``, ``failures``."""
    raw = {k.decode(): v.decode() for k, v in r.hgetall(keys.MODELS).items()}
    if "ids" in raw:
        raw["ids"] = json.loads(raw["ids"])
    if "failures" in raw:
        raw["failures"] = int(raw["failures"])
    return raw
