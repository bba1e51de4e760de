"""Which challengers a category's sampled jobs also ask, and operators starting and stopping them.

A challenger is the policy's (``challengers``: every category, at its ``challenge_rate``) or an
operator's (``tierguard challenge MODEL [--categories A,B] [--rate R]``: a ``challenge`` row).
``tierguard challenge stop MODEL`` stops either: a stopped row outlives the policy's list until
the model is challenged again. A model that is one of a category's rungs is never its
challenger (it is watched as a rung). :class:`Active` is the worker's view, read from the
database at most every :data:`REFRESH_S` seconds per process; the last one read is kept while
the database cannot be read.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import select

from tierguard.errors import ConfigError
from tierguard.policy import Policy, valid_category
from tierguard.store.db import session, utcnow
from tierguard.store.tables import Challenge

log = logging.getLogger(__name__)
REFRESH_S = 15.0


@dataclass(frozen=True)
class Row:
    """A ``challenge`` row as read (detached from its session)."""

    model: str
    categories: tuple[str, ...] | None
    rate: float | None
    stopped: bool


def rows(engine: Engine) -> list[Row]:
    with session(engine) as s:
        return [Row(c.model, None if c.categories is None else tuple(c.categories), c.rate,
                    c.stopped_at is not None) for c in s.exec(select(Challenge))]


def challengers_of(policy: Policy, found: list[Row], category: str) -> list[tuple[str, float]]:
    """(model, share of sampled jobs) of every challenger of ``category``."""
    cat = policy.category(category)
    out = {m: cat.challenge_rate for m in policy.challengers}
    for row in found:
        if row.stopped or (row.categories is not None and category not in row.categories):
            out.pop(row.model, None)  # stopped, or an operator's narrower choice of categories
        else:
            out[row.model] = cat.challenge_rate if row.rate is None else row.rate
    return sorted((m, r) for m, r in out.items() if m not in cat.rungs and r > 0)


class Active:
    """The challengers every category has now, as one worker process sees them."""

    def __init__(self, engine: Engine | None):
        self.engine, self.found, self.read_at = engine, [], -math.inf
        self.lock = threading.Lock()

    def of(self, policy: Policy, category: str) -> list[tuple[str, float]]:
        return challengers_of(policy, self.rows(), category)

    def rows(self) -> list[Row]:
        with self.lock:
            now = time.monotonic()
            if self.engine is not None and now - self.read_at >= REFRESH_S:
                self.read_at = now
                try:
                    self.found = rows(self.engine)
                except sa.exc.SQLAlchemyError as err:
                    log.warning("cannot read the challengers (%s); the last ones read stand", err)
            return self.found


def start(engine: Engine, policy: Policy, model: str, categories: list[str] | None, rate: float | None,
          actor: str) -> Challenge:
    """Challenge ``model`` (in ``categories``, or every one) from now on; the row written."""
    problems = []
    if model not in policy.pricing:
        problems.append(f"model: {model} has no price in the policy's pricing (a challenger is priced "
                        "like any rung)")
    problems += [f"--categories: {c!r} is not a category name" for c in categories or []
                 if not valid_category(c)]
    if rate is not None and not 0 < rate <= 1:
        problems.append(f"--rate: {rate} must be above 0 and at most 1")
    if problems:
        raise ConfigError(problems)
    with session(engine) as s:
        row = s.get(Challenge, model) or Challenge(model=model)
        row.categories, row.rate, row.started_by = categories, rate, actor
        row.started_at, row.stopped_at = utcnow(), None
        s.add(row)
        s.commit()
        s.refresh(row)
        return row


def stop(engine: Engine, model: str, actor: str) -> Challenge:
    """Stop challenging ``model`` everywhere (its evidence is kept)."""
    with session(engine) as s:
        row = s.get(Challenge, model) or Challenge(model=model, started_by=actor)
        row.stopped_at = utcnow()
        s.add(row)
        s.commit()
        s.refresh(row)
        return row
