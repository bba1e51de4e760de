"""``tierguard replay``: recorded comparisons through the real comparators and engine, fast.

A line is ``{"category", "ts"?, "request"?, "primary": {"model", "output"}, "shadow": {"model",
"output"}}`` (judged here by the category's comparator) or, pre-judged,
``{"category", "agree", "score"?}``; either may name ``prompt_fingerprint``, ``served_snapshot``
and ``shadow_snapshot``. ``--from-db`` reads the recorded outcomes (and those columns)
instead. Where the fingerprint tracker (:mod:`tierguard.engine.fingerprints`) resets a
category's evidence, its promotion evidence restarts there, as the recorder's does
(``evidence_resets`` lists them). Each category's stream goes through the vectorised
runner (:mod:`tierguard.engine.replay`, the same decisions as the per-sample engine);
routes start from the database (a fresh in-memory one by default) and move as
the policy under test decides; each change reports the 0-based index of the
sample that triggered it (its line in a file). A category the policy does not
list is replayed as its ``defaults`` describe (``defaults.start_on``), not on the
caller's model as production serves it: a replay asks what the engine would do.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from tierguard.contract.job import digest
from tierguard.engine.detector import Decision, Situation, restart_promotion
from tierguard.engine.fingerprints import KEY as TRACKED
from tierguard.engine.fingerprints import Tracker, kept
from tierguard.engine.replay import StreamRunner
from tierguard.errors import TierguardError
from tierguard.pipeline.recorder import apply_decision, situation
from tierguard.policy import Policy
from tierguard.routing.routes import lock_category
from tierguard.store.db import session
from tierguard.store.tables import Category, Sample

EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC).timestamp()
TRACKER = Tracker()
# What one outcome's evidence was gathered on: its prompt fingerprint and model -> snapshot.
Evidence = tuple[str | None, dict[str, str | None]]


class ReplayError(TierguardError):
    """A line of the replay file cannot be used; the message names the line."""


def _text(output: Any) -> str:
    return output if isinstance(output, str) else json.dumps(output, sort_keys=True)


def _judge(policy: Policy, rec: dict[str, Any], line_no: int) -> bool:
    if "agree" in rec:
        if not isinstance(rec["agree"], bool):
            raise ReplayError(f"line {line_no}: agree: must be true or false")
        return rec["agree"]
    try:
        primary, shadow = _text(rec["primary"]["output"]), _text(rec["shadow"]["output"])
    except (KeyError, TypeError):
        raise ReplayError(f"line {line_no}: needs 'agree', or 'primary' and 'shadow' with "
                          "'output'") from None
    try:
        return policy.category(rec["category"]).compare.compare(primary, shadow).agree
    except ValueError as err:
        raise ReplayError(f"line {line_no}: {err}") from None


def _seconds(ts: Any, line_no: int) -> float:
    try:
        parsed = dt.datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"line {line_no}: ts: not an ISO 8601 time ({ts!r})") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()


def parse_lines(lines: list[str], policy: Policy) -> tuple[list[str], np.ndarray, np.ndarray, list[dict]]:
    """(category per outcome, agree, seconds, records) for every non-blank line; index = line - 1."""
    try:  # one C-level parse of the whole file; a bad line is found below, line by line
        records = json.loads("[" + ",".join(line if line.strip() else "null" for line in lines) + "]")
    except ValueError:
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line) if line.strip() else None)
            except ValueError as err:
                raise ReplayError(f"line {i + 1}: not JSON ({err})") from None
    cats: list[str] = []
    agree = np.zeros(len(records), dtype=bool)
    seconds = np.zeros(len(records))
    clock = EPOCH
    for i, rec in enumerate(records):
        if rec is None:
            cats.append("")
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("category"), str):
            raise ReplayError(f"line {i + 1}: category: required (a string)")
        cats.append(rec["category"])
        a = rec.get("agree")
        agree[i] = a if a is True or a is False else _judge(policy, rec, i + 1)
        ts = rec.get("ts")
        clock = clock + 1.0 if ts is None else _seconds(ts, i + 1)
        seconds[i] = clock
    return cats, agree, seconds, records


def run(policy: Policy, engine: Engine, cats: list[str], agree: np.ndarray, seconds: np.ndarray,
        *, job_prefix: str, records: list[dict] | None = None,
        progress: Callable[[int], None] | None = None,
        evidence: list[Evidence | None] | None = None) -> dict[str, Any]:
    """Replay the outcomes (in stream order) against ``engine``'s routes, writing the route
    changes there and, with ``records``, a sample row per outcome; ``evidence`` (per outcome:
    its prompt fingerprint and model -> snapshot, or None) restarts promotion evidence where the
    live recorder's fingerprint tracker would."""
    order: dict[str, list[int]] = {}
    for i, name in enumerate(cats):
        if name:
            order.setdefault(name, []).append(i)
    out: dict[str, list[dict[str, Any]]] = {"changes": [], "would_change": [], "evidence_resets": []}
    routes: dict[str, str] = {}
    done = 0
    with session(engine) as s:
        for name in sorted(order):
            idx = np.array(order[name])
            row = lock_category(s, policy.category(name))
            _category(s, policy.category(name), row, idx, agree, seconds, job_prefix, evidence, out)
            s.add(row)
            routes[name] = row.routed_model
            if records is not None:
                _store(s, records, idx, row, agree, seconds, job_prefix, policy.category(name).comparator)
            done += len(idx)
            if progress:
                progress(done)
        s.commit()
    for found in out.values():
        found.sort(key=lambda c: c["index"])
    return {**out, "categories": {name: {"samples": len(ix),
                                         "agreement": float(agree[ix].mean()) if ix else None,
                                         "route": routes[name]}
                                  for name, ix in sorted(order.items())}}


def _category(s: Any, cat: Any, row: Category, idx: np.ndarray, agree: np.ndarray, seconds: np.ndarray,
              prefix: str, evidence: list[Evidence | None] | None, out: dict[str, list]) -> None:
    """One category's outcomes through the engine, in stretches cut where its evidence resets."""
    before = dict(row.detector_state or {})
    tracked, cuts = _resets(before.get(TRACKED), row.name, idx, seconds, evidence, out["evidence_resets"])
    runner = StreamRunner(cat.engine, before)
    offset = [0]

    def on_event(k: int, decision: Decision) -> Situation:
        i = int(idx[offset[0] + k])
        at = dt.datetime.fromtimestamp(float(seconds[i]), dt.UTC)
        if decision.changes_route:
            row.detector_state = kept(before, runner.state)  # written with the route
            change = apply_decision(s, row, decision, f"{prefix}-{i}", at=at)
            if change is not None:
                out["changes" if change.applied else "would_change"].append({
                    "category": row.name, "from": change.from_model, "to": change.to_model,
                    "index": i, "agreement": change.agreement, "rule": change.rule,
                    "reason": change.reason})
        return situation(row, at.timestamp())

    sit = situation(row, float(seconds[idx[0]]))
    stretches = zip([0, *cuts], [*cuts, len(idx)], [False] + [True] * len(cuts), strict=True)
    for start, end, reset in stretches:
        if reset:  # the runner's state is the two-model engine's, ladders included
            runner.state = restart_promotion(runner.state)
        offset[0] = start
        if end > start:
            sit = runner.run(agree[idx[start:end]], seconds[idx[start:end]], sit, on_event)
    row.detector_state = kept({TRACKED: tracked} if tracked else before, runner.state)


def _resets(tracked: dict | None, name: str, idx: np.ndarray, seconds: np.ndarray,
            evidence: list[Evidence | None] | None, found: list[dict]) -> tuple[dict | None, list[int]]:
    """The tracker's state after the category's outcomes, and the positions (in ``idx``) of the
    outcomes whose evidence resets (before the engine sees them, as the recorder does)."""
    cuts: list[int] = []
    if evidence is None:
        return tracked, cuts
    for k, i in enumerate(idx.tolist()):
        if evidence[i] is None:
            continue
        prompt, snapshots = evidence[i]
        tracked, reset = TRACKER.feed(tracked, prompt, snapshots, float(seconds[i]))
        if reset is not None:
            cuts.append(k)
            found.append({"category": name, "index": i, "at": reset.since, "what": reset.what})
    return tracked, cuts


def as_defaults(policy: Policy) -> Policy:
    """``policy`` with its unlisted categories starting as ``defaults.start_on`` says."""
    if policy.unknown_categories.start_on != "caller":
        return policy
    unknown = policy.unknown_categories.model_copy(update={"start_on": policy.defaults.start_on})
    return Policy.model_validate({**dict(policy), "unknown_categories": unknown})


def replay(lines: Iterable[str], policy: Policy, engine: Engine,
           progress: Callable[[int], None] | None = None, store: bool = True) -> dict[str, Any]:
    """Replay a JSONL file's lines; ``store`` writes a ``replay`` sample row per line."""
    lines = list(lines)
    policy = as_defaults(policy)
    cats, agree, seconds, records = parse_lines(lines, policy)
    return run(policy, engine, cats, agree, seconds, job_prefix=f"replay-{uuid.uuid4().hex[:8]}",
               records=records if store else None, progress=progress, evidence=_evidence(records))


def _evidence(records: list[dict | None]) -> list[Evidence | None] | None:
    """Per line, its ``prompt_fingerprint`` and snapshots (``served_snapshot``/``shadow_snapshot``
    of ``primary.model``/``shadow.model``), when any line names one."""
    out: list[Evidence | None] = []
    for rec in records:
        rec = rec or {}
        named = [rec.get(k) for k in ("prompt_fingerprint", "served_snapshot", "shadow_snapshot")]
        if not any(isinstance(v, str) for v in named):
            out.append(None)
            continue
        snapshots: dict[str, str | None] = {}
        for side, snap in (("primary", named[1]), ("shadow", named[2])):
            model = (rec.get(side) or {}).get("model")
            if isinstance(snap, str) and not isinstance(model, str):
                raise ReplayError(f"line {len(out) + 1}: {side}.model: required with its snapshot "
                                  "(snapshots are tracked per model)")
            if isinstance(snap, str):
                snapshots[model] = snap
        out.append((named[0] if isinstance(named[0], str) else None, snapshots))
    return out if any(out) else None


def _store(s: Any, records: list[dict], idx: np.ndarray, row: Category, agree: np.ndarray,
           seconds: np.ndarray, prefix: str, comparator: Any) -> None:
    name = comparator if isinstance(comparator, str) else str(comparator.get("type"))
    batch = []
    for i in idx.tolist():
        rec = records[i]
        primary, shadow = rec.get("primary") or {}, rec.get("shadow") or {}
        at = dt.datetime.fromtimestamp(float(seconds[i]), dt.UTC)
        batch.append({
            "job_id": f"{prefix}-{i}", "category": row.name, "kind": "replay",
            "served_model": primary.get("model") or row.routed_model,
            "shadow_model": shadow.get("model") or "", "agree": bool(agree[i]),
            "score": rec.get("score", float(agree[i])), "reason": "replayed", "detail": {},
            "error": None, "attempts": 1, "comparator": name,
            "request_hash": digest(rec.get("request") or ""),
            "primary_hash": digest(_text(primary.get("output", ""))),
            "shadow_hash": digest(_text(shadow.get("output", ""))) if shadow else None,
            "requested_at": at, "created_at": at})
        if len(batch) >= 5000:
            s.execute(Sample.__table__.insert(), batch)
            batch = []
    if batch:
        s.execute(Sample.__table__.insert(), batch)


def from_db(source: Engine, policy: Policy, since: dt.datetime | None = None,
            categories: list[str] | None = None,
            progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Replay the recorded candidate-vs-reference outcomes under ``policy`` (routes untouched:
    a scratch database starts each category where it stood at ``since``), next to what
    actually changed."""
    import sqlalchemy as sa

    from tierguard.store.db import make_engine, upgrade
    from tierguard.store.tables import RouteChange

    policy = as_defaults(policy)
    s_, c_ = Sample.__table__.c, Category.__table__.c
    pair = sa.or_(sa.and_(s_.served_model == c_.candidate, s_.shadow_model == c_.reference),
                  sa.and_(s_.served_model == c_.reference, s_.shadow_model == c_.candidate))
    # Seconds since the epoch computed by the database: no datetime object per row.
    epoch = (sa.func.date_part("epoch", s_.created_at) if source.dialect.name == "postgresql"
             else (sa.func.julianday(s_.created_at) - 2440587.5) * 86400.0)
    query = (sa.select(s_.category, s_.agree, epoch, s_.served_model, s_.shadow_model,
                       s_.prompt_fingerprint, s_.served_snapshot, s_.shadow_snapshot)
             .select_from(Sample.__table__.join(Category.__table__, c_.name == s_.category))
             .where(s_.kind == "shadow", s_.agree.is_not(None), pair)
             .order_by(s_.created_at, s_.job_id))
    if since is not None:
        query = query.where(s_.created_at >= since)
    if categories:
        query = query.where(s_.category.in_(categories))
    with source.connect() as conn:
        rows = _fetch_raw(conn, query)
        history = conn.execute(sa.select(RouteChange.__table__).where(RouteChange.applied)
                               .order_by(RouteChange.id)).mappings().all()
        current = dict(conn.execute(sa.select(c_.name, c_.routed_model)).all())
    cats = [r[0] for r in rows]
    agree = np.fromiter((bool(r[1]) for r in rows), dtype=bool, count=len(rows))
    seconds = np.fromiter((float(r[2]) for r in rows), dtype=float, count=len(rows))
    start = since or (dt.datetime.fromtimestamp(seconds[0], dt.UTC) if len(rows) else None)

    def at(c: Any) -> dt.datetime:
        return c["created_at"] if c["created_at"].tzinfo else c["created_at"].replace(tzinfo=dt.UTC)

    scratch = make_engine("sqlite://")
    upgrade(scratch)
    with session(scratch) as s:
        for name in sorted(set(cats)):
            row = lock_category(s, policy.category(name))
            before = [c for c in history if c["category"] == name and start and at(c) < start]
            after = [c for c in history if c["category"] == name and (not start or at(c) >= start)]
            row.routed_model = (before[-1]["to_model"] if before else
                                after[0]["from_model"] if after else current.get(name, row.routed_model))
            s.add(row)
        s.commit()
    evidence = [(r[5], {r[3]: r[6], r[4]: r[7]}) if r[5] or r[6] or r[7] else None for r in rows]
    result = run(policy, scratch, cats, agree, seconds, job_prefix="from-db", progress=progress,
                 evidence=evidence if any(evidence) else None)
    stamp = {i: dt.datetime.fromtimestamp(float(seconds[i]), dt.UTC).isoformat() for i in
             {c["index"] for c in result["changes"] + result["would_change"]}}
    for c in result["changes"] + result["would_change"]:
        c["at"] = stamp[c["index"]]
    result["actual"] = [{"category": c["category"], "from": c["from_model"], "to": c["to_model"],
                         "at": at(c).isoformat(), "rule": c["rule"], "actor": c["actor"],
                         "reason": c["reason"]}
                        for c in history if (not start or at(c) >= start)
                        and (not categories or c["category"] in categories)]
    return result


def _fetch_raw(conn: Any, query: Any) -> list[tuple]:
    """All rows as the driver's plain tuples: a million rows without SQLAlchemy's per-row work."""
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    if compiled.positiontup:  # qmark / numeric drivers (SQLite)
        params = [params[name] for name in compiled.positiontup]
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(str(compiled), params)
        return cursor.fetchall()
    finally:
        cursor.close()
