"""``tierguard replay``: run recorded comparisons through the real comparators, engine and storage.

A line is ``{"category", "ts"?, "request"?, "primary": {"model", "output"}, "shadow": {"model",
"output"}}`` (judged here by the category's comparator) or, pre-judged,
``{"category", "agree", "score"?}``. Routes start from the database (a fresh
in-memory one by default) and move as the policy under test decides; each change
reports the 0-based line number of the sample that triggered it.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from tierguard.db import Category, Sample, session
from tierguard.errors import TierguardError
from tierguard.job import digest
from tierguard.pipeline.recorder import apply_decision, situation
from tierguard.policy import Policy
from tierguard.routes import lock_category

BATCH = 5000


class ReplayError(TierguardError):
    """A line of the replay file cannot be used; the message names the line."""


def _text(output: Any) -> str:
    return output if isinstance(output, str) else json.dumps(output, sort_keys=True)


def _judge(policy: Policy, rec: dict[str, Any], line_no: int) -> tuple[bool, float | None, str]:
    if "agree" in rec:
        if not isinstance(rec["agree"], bool):
            raise ReplayError(f"line {line_no}: agree: must be true or false")
        score = rec.get("score")
        return rec["agree"], float(score) if score is not None else float(rec["agree"]), "pre-judged"
    try:
        primary, shadow = _text(rec["primary"]["output"]), _text(rec["shadow"]["output"])
    except (KeyError, TypeError):
        raise ReplayError(f"line {line_no}: needs 'agree', or 'primary' and 'shadow' with "
                          "'output'") from None
    verdict = policy.category(rec["category"]).compare.compare(primary, shadow)
    return verdict.agree, verdict.score, verdict.reason


def _timestamp(rec: dict[str, Any], line_no: int, clock: dt.datetime) -> dt.datetime:
    ts = rec.get("ts")
    if ts is None:
        return clock + dt.timedelta(seconds=1)
    try:
        parsed = dt.datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"line {line_no}: ts: not an ISO 8601 time ({ts!r})") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def replay(lines: Iterable[str], policy: Policy, engine: Engine,
           progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    clock = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    rows: dict[str, Category] = {}
    totals: dict[str, list[int]] = {}
    changes: list[dict[str, Any]] = []
    would: list[dict[str, Any]] = []
    batch: list[dict[str, Any]] = []
    with session(engine) as s:
        for index, line in enumerate(lines):
            if progress and index % BATCH == 0:
                progress(index)
            if not line.strip():
                continue
            line_no = index + 1
            try:
                rec = json.loads(line)
            except ValueError as err:
                raise ReplayError(f"line {line_no}: not JSON ({err})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("category"), str):
                raise ReplayError(f"line {line_no}: category: required (a string)")
            name = rec["category"]
            cat = policy.category(name)
            row = rows.get(name)
            if row is None:
                row = rows[name] = lock_category(s, cat)
                totals[name] = [0, 0]
            agree, score, reason = _judge(policy, rec, line_no)
            clock = _timestamp(rec, line_no, clock)
            job_id = f"replay-{run}-{index}"
            batch.append(_sample(rec, cat.comparator, job_id, row, agree, score, reason, clock))
            totals[name][0] += 1
            totals[name][1] += agree
            state, decision = cat.engine.update(row.detector_state or {}, agree,
                                                situation(row, clock.timestamp()))
            row.detector_state = state
            if decision.changes_route:
                _flush(s, batch)
                change = apply_decision(s, row, decision, job_id, at=clock)
                if change is not None:
                    entry = {"category": name, "from": change.from_model, "to": change.to_model,
                             "index": index, "agreement": change.agreement, "rule": change.rule,
                             "reason": change.reason}
                    (changes if change.applied else would).append(entry)
            elif len(batch) >= BATCH:
                _flush(s, batch)
        _flush(s, batch)
        for row in rows.values():
            s.add(row)
        s.commit()
    return {"changes": changes, "would_change": would,
            "categories": {name: {"samples": n, "agreement": (a / n) if n else None,
                                  "route": rows[name].routed_model}
                           for name, (n, a) in sorted(totals.items())}}


def _sample(rec: dict[str, Any], comparator: Any, job_id: str, row: Category, agree: bool,
            score: float | None, reason: str, at: dt.datetime) -> dict[str, Any]:
    primary = rec.get("primary") or {}
    shadow = rec.get("shadow") or {}
    return {"job_id": job_id, "category": row.name, "kind": "replay",
            "served_model": primary.get("model") or row.routed_model,
            "shadow_model": shadow.get("model") or "",
            "agree": agree, "score": score, "reason": reason, "detail": {}, "error": None,
            "attempts": 1, "comparator": comparator if isinstance(comparator, str)
            else str(comparator.get("type")),
            "request_hash": digest(rec.get("request") or ""),
            "primary_hash": digest(_text(primary.get("output", ""))),
            "shadow_hash": digest(_text(shadow.get("output", ""))) if shadow else None,
            "requested_at": at, "created_at": at}


def _flush(s: Session, batch: list[dict[str, Any]]) -> None:
    if batch:
        s.execute(Sample.__table__.insert(), batch)
        batch.clear()
