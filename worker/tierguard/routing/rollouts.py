"""Staged rollouts' splits: what the wrappers and gateways read to send a share of a category's calls
to a new model (:mod:`tierguard.engine.rollouts`).

The database's ``rollout`` rows are the truth; :data:`~tierguard.contract.keys.SPLITS` is their copy
for the production side (``category -> base|model|weight``, running rollouts only), rewritten whole
by :func:`publish` after every transition and on every beat pass, so a lost write heals by itself.
:class:`~tierguard.routing.routes.RouteTable` reads it with the routes; a call is split there with
no I/O (``Split.pick``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import redis as redis_lib
from sqlalchemy.engine import Engine
from sqlmodel import select

from tierguard.contract import keys
from tierguard.engine.rollouts import weight
from tierguard.store.db import session
from tierguard.store.tables import Rollout


@dataclass(frozen=True)
class Split:
    base: str
    model: str
    weight: float

    def pick(self, routed: str) -> str:
        """The model a call routed to ``routed`` goes to."""
        return self.model if routed == self.base and random.random() < self.weight else routed


def parse(raw: dict[bytes, bytes]) -> dict[str, Split]:
    out = {}
    for name, value in raw.items():
        parts = value.decode().split("|")
        try:
            if len(parts) == 3 and 0 < float(parts[2]) <= 1:
                out[name.decode()] = Split(parts[0], parts[1], float(parts[2]))
        except ValueError:
            continue
    return out


def read_db(engine: Engine) -> dict[str, Split]:
    """The running rollouts' splits, from the database."""
    with session(engine) as s:
        return {r.category: Split(r.base, r.model, weight(r.steps, r.step, r.status))
                for r in s.exec(select(Rollout).where(Rollout.status == "running"))}


def publish(r: redis_lib.Redis, engine: Engine) -> int:
    """Rewrite the splits' Redis copy whole from the database; how many are running."""
    found = read_db(engine)
    pipe = r.pipeline(transaction=True)
    pipe.delete(keys.SPLITS)
    if found:
        pipe.hset(keys.SPLITS, mapping={c: f"{x.base}|{x.model}|{x.weight:g}" for c, x in found.items()})
    pipe.execute()
    return len(found)
