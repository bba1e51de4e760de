"""The Models API (``GET /v1/models``): the models the simulator knows, in pages as the API pages.

Known models: the scenario's reference models, every model its categories script, its ``models``
(default: ``claude-haiku-4-5`` and ``claude-sonnet-4-6``) and any ``POST /_sim/script`` added with
``models``. A page: ``limit`` (1–1000, default 20) models after ``after_id`` (or before
``before_id``), answered ``{"data": [{"type": "model", "id", "display_name", "created_at"}],
"has_more", "first_id", "last_id"}``.
"""

from __future__ import annotations

from typing import Any

DEFAULT_MODELS = ("claude-haiku-4-5", "claude-sonnet-4-6")
CREATED_AT = "2026-01-01T00:00:00Z"


class PageError(ValueError):
    """A query the API would refuse (a 400 naming the parameter)."""


def known(reference_models: list[str], categories: dict[str, Any], models: list[str] | None) -> list[str]:
    """Every model the simulator lists, sorted."""
    scripted = {m for cat in categories.values() for m in cat.models}
    return sorted({*reference_models, *scripted, *(DEFAULT_MODELS if models is None else models)})


def page(models: list[str], query: dict[str, str]) -> dict[str, Any]:
    """One page of ``models`` for ``query`` (``limit``, ``after_id``, ``before_id``)."""
    try:
        limit = int(query.get("limit", 20))
    except ValueError:
        raise PageError(f"limit: {query['limit']!r} is not an integer") from None
    if not 1 <= limit <= 1000:
        raise PageError(f"limit: must be between 1 and 1000, not {limit}")
    start, end = 0, len(models)
    for name in ("after_id", "before_id"):
        if name in query and query[name] not in models:
            raise PageError(f"{name}: no model {query[name]!r}")
    if "after_id" in query:
        start = models.index(query["after_id"]) + 1
    if "before_id" in query:
        end = models.index(query["before_id"])
        start = max(start, end - limit)
    chosen = models[start:min(end, start + limit)]
    return {"data": [{"type": "model", "id": m, "display_name": m, "created_at": CREATED_AT}
                     for m in chosen],
            "has_more": start + len(chosen) < end if "before_id" not in query else start > 0,
            "first_id": chosen[0] if chosen else None, "last_id": chosen[-1] if chosen else None}
