"""Routes: which model serves each category.

The database is the truth. A flip is one transaction with an optimistic version
check that writes the route and its ``route_change`` row; Redis holds a copy
(``model|version`` per category, written only forward after a flip, rewritten whole from the
database every 5 s by each worker, and by an operator's pin or promotion) for the wrappers, whose
:class:`RouteTable` keeps an in-process dict refreshed in the background.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, select

from tierguard.contract import keys
from tierguard.engine.detector import note_change
from tierguard.engine.fingerprints import kept
from tierguard.errors import RouteConflict
from tierguard.policy import CategoryPolicy, Policy
from tierguard.routing.rates import parse_rates
from tierguard.routing.rollouts import Split
from tierguard.routing.rollouts import parse as parse_splits
from tierguard.routing.rollouts import read_db as read_db_splits
from tierguard.store.db import insert_new, session, utcnow
from tierguard.store.tables import Category, RouteChange

log = logging.getLogger(__name__)

REDIS_KEY = keys.ROUTES
THREAD = "tierguard-routes"  # its refresh thread's name (bench hotpath reads its CPU time by it)

# Write model|version only if the stored version is older (never move a route backwards).
_FORWARD_ONLY = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local v = tonumber(string.match(cur, '|(%d+)$'))
  if v and v >= tonumber(ARGV[3]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3])
return 1
"""


def lock_category(s: Session, cat: CategoryPolicy) -> Category:
    """The category's row, created from the policy when missing, locked for this transaction."""
    return lock_categories(s, [cat])[cat.name]


def lock_categories(s: Session, cats: list[CategoryPolicy]) -> dict[str, Category]:
    """name -> the categories' rows, created from the policy when missing, locked for this
    transaction in one query (in name order, as every writer locks them: no deadlock)."""
    by_name = {cat.name: cat for cat in cats}
    query = (select(Category).where(Category.name.in_(sorted(by_name))).order_by(Category.name)
             .with_for_update())
    rows = {row.name: row for row in s.exec(query)}
    missing = [cat for name, cat in sorted(by_name.items()) if name not in rows]
    for cat in missing:
        insert_new(s, Category.__table__, {
            "name": cat.name, "candidate": cat.candidate, "reference": cat.reference,
            "routed_model": cat.initial_route, "pinned": False, "detector_state": {},
            "threshold": cat.threshold, "sample_rate": cat.sample_rate,
            "version": 1, "updated_at": utcnow()})
    if missing:  # created here or by a concurrent writer first: now locked like the others
        rows = {row.name: row for row in s.exec(query)}
    for name, cat in by_name.items():
        row = rows[name]
        wanted = (cat.candidate, cat.reference, cat.threshold, cat.sample_rate)
        if (row.candidate, row.reference, row.threshold, row.sample_rate) != wanted:
            row.candidate, row.reference, row.threshold, row.sample_rate = wanted
            s.add(row)
    return rows


def ensure_categories(engine: Engine, policy: Policy) -> None:
    """Create rows for every category the policy names; a route to a model the category no longer
    lists (a changed ladder or pair) goes to its reference, audited: nothing would watch it. A row
    never moved (version 1, e.g. tracked while unlisted) goes where ``start_on`` says, audited."""
    for name in policy.categories:
        cat = policy.category(name)
        with session(engine) as s:
            row = lock_category(s, cat)
            target, reason = _policy_route(row, cat)
            if target is not None and not row.pinned:
                try:
                    change_route(s, row, target, rule="policy", reason=reason)
                except RouteConflict:  # another process moved it first
                    log.info("category %s: moved by another process first", row.name)
            s.commit()


def _policy_route(row: Category, cat: CategoryPolicy) -> tuple[str | None, str]:
    """Where the policy moves a row on its own (None: nowhere), and why."""
    if row.routed_model not in cat.rungs:
        return cat.reference, (f"{row.routed_model} is no longer one of the category's models "
                               f"({', '.join(cat.rungs)}): its reference serves")
    if row.version <= 1 and row.routed_model != cat.initial_route:  # never moved: tracked unlisted
        return cat.initial_route, (f"the policy lists {cat.name} now: it starts on "
                                   f"{cat.initial_route} (start_on: {cat.start_on})")
    return None, ""


def noted(cat: Any, state: dict, target: str, now: float) -> dict:
    """``state`` once a route change to ``target`` is noted (cooldown, flap guard): for a ladder,
    in every rung's state, the target's with its evidence restarted (the fingerprint tracker's
    state kept)."""
    window = cat.flap_window_hours * 3600
    if not cat.laddered:
        return kept(state, note_change(state, now, window))
    states = cat.ladder_engine.stamp(dict(state.get("rungs") or {}), now, target)
    states[target] = {**note_change(states.get(target) or {}, now, window), "failed": False}
    return kept(state, cat.ladder_engine.mirror({**state, "rungs": states}, target))


def change_route(s: Session, row: Category, to_model: str, *, rule: str, reason: str,
                 actor: str = "auto", agreement: float | None = None, samples: int | None = None,
                 numbers: dict | None = None, trigger_job_id: str | None = None,
                 pin: bool | None = None, until: dt.datetime | None = None,
                 at: dt.datetime | None = None) -> RouteChange:
    """Move ``row`` to ``to_model`` if nobody else changed it first (else :class:`RouteConflict`)."""
    from_model, version = row.routed_model, row.version
    at = at or utcnow()
    values: dict[str, Any] = {"routed_model": to_model, "version": version + 1,
                              "updated_at": at, "detector_state": row.detector_state}
    if pin is not None:
        values.update(pinned=pin, pin_reason=reason if pin else None,
                      pinned_by=actor if pin else None, pinned_until=until if pin else None)
    done = s.execute(sa.update(Category).where(Category.name == row.name,
                                               Category.version == version).values(**values),
                     execution_options={"synchronize_session": False})
    if done.rowcount != 1:
        raise RouteConflict(f"category {row.name!r} changed concurrently")
    change = RouteChange(category=row.name, from_model=from_model, to_model=to_model,
                         rule=rule, reason=reason, agreement=agreement, samples=samples,
                         numbers=numbers or {}, actor=actor, trigger_job_id=trigger_job_id,
                         created_at=at)
    s.add(change)
    for k, v in values.items():
        set_committed_value(row, k, v)
    return change


def expire_pin(s: Session, row: Category, now: dt.datetime) -> RouteChange | None:
    """Hand a category whose pin has expired back to the engine."""
    until = row.pinned_until
    if not row.pinned or until is None:
        return None
    if until.tzinfo is None:  # SQLite returns naive datetimes
        until = until.replace(tzinfo=dt.UTC)
    if until > now:
        return None
    return change_route(s, row, row.routed_model, rule="pin_expired", actor="auto", pin=False,
                        reason=f"pin by {row.pinned_by} ({row.pin_reason}) expired at "
                               f"{until.isoformat(timespec='minutes')}")


def publish(r: redis_lib.Redis, rows: list[Category], force: bool = False) -> None:
    """Copy routes to Redis, never overwriting a newer version; ``force``: whatever Redis holds
    (an operator's pin or promotion, just committed, replaces any copy)."""
    if force:
        r.hset(REDIS_KEY, mapping={row.name: f"{row.routed_model}|{row.version}" for row in rows})
        return
    script = r.register_script(_FORWARD_ONLY)
    pipe = r.pipeline(transaction=False)
    for row in rows:
        script(keys=[REDIS_KEY], args=[row.name, row.routed_model, row.version], client=pipe)
    pipe.execute()


def publish_quietly(r: redis_lib.Redis | None, rows: list[Category], force: bool = False) -> bool:
    if r is None or not rows:
        return False
    try:
        publish(r, rows, force)
        return True
    except redis_lib.RedisError as err:
        log.warning("could not copy %d route(s) to Redis (%s); the periodic sync will", len(rows), err)
        return False


def derive(engine: Engine, r: redis_lib.Redis) -> int:
    """Rewrite Redis's copy whole from the database, whatever it holds (a forged version, a category
    the database does not have); a route that changed meanwhile is published again after."""
    with session(engine) as s:
        rows = {row.name: (row.routed_model, row.version) for row in s.exec(select(Category))}
    pipe = r.pipeline(transaction=True)
    pipe.delete(REDIS_KEY)
    if rows:
        pipe.hset(REDIS_KEY, mapping={name: f"{m}|{v}" for name, (m, v) in rows.items()})
    pipe.execute()
    with session(engine) as s:  # a flip committed between the read and the write: forward again
        moved = [row for row in s.exec(select(Category)) if (row.routed_model, row.version) !=
                 rows.get(row.name)]
    if moved:
        publish(r, moved)
    return len(rows)


def read_db_routes(engine: Engine) -> dict[str, str]:
    with session(engine) as s:
        return {row.name: row.routed_model for row in s.exec(select(Category))}


def read_db_moved(engine: Engine) -> frozenset[str]:
    """Categories whose route has been changed since their row was made (version > 1)."""
    with session(engine) as s:
        return frozenset(s.exec(select(Category.name).where(Category.version > 1)))


class RouteTable:
    """The wrapper's view of routes: a dict, refreshed every ``ttl`` s off the request thread.

    ``get`` never does I/O. A refresh reads Redis; when Redis is unreachable or
    holds nothing, it reads the database (if one is configured) and repopulates
    Redis. A failed refresh keeps the last known routes.
    """

    def __init__(self, redis_factory: Callable[[], redis_lib.Redis], ttl: float,
                 engine_factory: Callable[[], Engine] | None = None):
        self._redis_factory = redis_factory
        self._engine_factory = engine_factory
        self._engine: Engine | None = None
        self._redis: redis_lib.Redis | None = None
        self.ttl = ttl
        self.routes: dict[str, str] = {}
        self.moved: frozenset[str] = frozenset()  # categories whose route was ever changed (version > 1)
        self.rates: dict[str, float] = {}  # adaptive sample rates (tierguard.routing.rates)
        self.splits: dict[str, Split] = {}  # staged rollouts' splits (tierguard.routing.rollouts)
        self.failures = 0
        self.generation = 0  # counts refreshes: what a reader derived from an older one is stale
        self.on_refresh: Callable[[], None] | None = None  # called after each refresh
        self._read_once = False
        self._stop = threading.Event()
        self._loaded = threading.Event()
        self._thread = threading.Thread(target=self._run, name=THREAD, daemon=True)

    def start(self, wait: float = 1.0) -> RouteTable:
        self._thread.start()
        self._loaded.wait(wait)
        return self

    def refresh_quietly(self) -> None:
        """One refresh on the calling thread (a failure is counted, never raised)."""
        try:
            self.refresh()
        except Exception:
            self.failures += 1
            log.exception("route refresh failed")

    def restart_after_fork(self) -> None:
        """In a forked child: new connections and a refresher of its own (the parent's thread and
        sockets did not come along); the last known routes are kept meanwhile."""
        if self._thread.ident is None or self._stop.is_set():
            return  # never started, or stopped: nothing to restart
        if self._engine is not None:
            self._engine.dispose(close=False)  # the parent's pooled connections stay the parent's
        self._engine = self._redis = None
        self._stop, self._loaded = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name=THREAD, daemon=True)
        self._thread.start()

    @property
    def loaded(self) -> bool:
        """True once a refresh has read the routes (from Redis or the database)."""
        return self._read_once

    def get(self, category: str, default: str) -> str:
        return self.routes.get(category, default)

    def stop(self) -> None:
        self._stop.set()

    def refresh(self) -> None:
        """Read the routes, rates and splits (Redis, else the database); a failure keeps the last."""
        try:
            self._refresh()
        finally:  # after the tables it stamps, whatever happened to them (one writer at a time)
            self.generation += 1
            if self.on_refresh is not None:
                self.on_refresh()

    def _refresh(self) -> None:
        routes = None
        try:
            if self._redis is None:
                self._redis = self._redis_factory()
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(REDIS_KEY)
            pipe.hgetall(keys.RATES)
            pipe.hgetall(keys.SPLITS)
            raw, raw_rates, raw_splits = pipe.execute()
            self.rates = parse_rates(raw_rates)
            self.splits = parse_splits(raw_splits)
            if raw:
                pairs = {k.decode(): v.decode().rsplit("|", 1) for k, v in raw.items()}
                routes = {k: v[0] for k, v in pairs.items()}
                self.moved = frozenset(k for k, v in pairs.items() if len(v) == 2 and v[1] != "1")
        except redis_lib.RedisError:
            self.failures += 1
        if routes is None and self._engine_factory is not None:
            try:
                if self._engine is None:
                    self._engine = self._engine_factory()
                routes = read_db_routes(self._engine)
                self.moved = read_db_moved(self._engine)
                self.splits = read_db_splits(self._engine)
                if self._redis is not None and routes:
                    publish_quietly(self._redis, self._rows_for_redis())
            except sa.exc.SQLAlchemyError:
                self.failures += 1
        if routes is not None:
            self.routes = routes
            self._read_once = True

    def _rows_for_redis(self) -> list[Category]:
        with session(self._engine) as s:  # type: ignore[arg-type]
            return list(s.exec(select(Category)))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # never let the refresher die
                log.exception("route refresh failed")
            self._loaded.set()
            self._stop.wait(self.ttl)
