"""Fingerprints through the real recorder (SQLite and PostgreSQL): which sample restarts the
promotion evidence, the event that names it, the demotion watch untouched, the state kept."""

import uuid

import sqlalchemy as sa
from sqlmodel import select

from tierguard.compare import Verdict
from tierguard.contract.fingerprint import prompt_fingerprint
from tierguard.contract.job import ShadowJob
from tierguard.engine.detector import Situation
from tierguard.engine.fingerprints import KEY
from tierguard.ops.actions import pin, promote
from tierguard.ops.status import category_status, evidence_resets
from tierguard.pipeline.calls import Answer
from tierguard.pipeline.recorder import record
from tierguard.policy import parse_policy
from tierguard.store.db import session
from tierguard.store.tables import Category, Event, Sample

HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"
AGREE = Verdict(True, 1.0, "same label")


def policy(**cat):
    return parse_policy({"defaults": {"sample_rate": 1.0, "promote_min_samples": 500},
                         "categories": {"sentiment": {"comparator": "exact", **cat}}})


def job(system, served=OPUS, shadow=HAIKU, snapshot="opus-1"):
    return ShadowJob(job_id=uuid.uuid4().hex, category="sentiment", served_model=served,
                     shadow_model=shadow, primary_text="POSITIVE", served_snapshot=snapshot,
                     request={"max_tokens": 8, "system": system,
                              "messages": [{"role": "user", "content": "hi"}]})


def feed(engine, pol, systems, served=OPUS, shadow=HAIKU, served_snap="opus-1", shadow_snap="haiku-1"):
    """Record one agreeing sample per system prompt; the outcomes' event counts."""
    out = []
    for system in systems:
        answer = Answer("POSITIVE", 1, 1, 1.0, snapshot=shadow_snap)
        out.append(record(engine, None, pol, job(system, served, shadow, served_snap), answer, AGREE,
                          None, 1).events)
    return out


def state(engine):
    with session(engine) as s:
        return dict(s.exec(select(Category).where(Category.name == "sentiment")).one().detector_state)


def test_a_new_prompt_restarts_promotion_evidence_once_and_is_audited(engine):
    pol = policy(start_on="reference")
    feed(engine, pol, ["A"] * 60 + ["B"] * 3 + ["A"] * 10)  # a few odd calls: nothing
    assert state(engine)["n"] == 73
    events = feed(engine, pol, ["B"] * 45)
    # The window still holds the 3 odd calls: the 37th B makes 40 of the last 50.
    assert events.index(1) == 36 and sum(events) == 1
    st = state(engine)
    assert st["dir"] == "promote" and st["n"] == 45 - 36  # restarted before that sample counted
    old, new = prompt_fingerprint({"system": "A"}), prompt_fingerprint({"system": "B"})
    assert st[KEY]["prompt"]["current"] == new
    with session(engine) as s:
        (event,) = s.exec(select(Event).where(Event.kind == "evidence_reset")).all()
    assert event.severity == "info" and event.category == "sentiment"
    assert event.summary == f"sentiment: evidence restarts: prompt fingerprint {old} -> {new}"
    assert event.details["numbers"]["changes"] == [{"model": None, "old": old, "new": new}]
    assert evidence_resets(engine, "sentiment")[0]["summary"] == event.summary
    fp = category_status(engine, pol)["sentiment"]["fingerprint"]
    assert fp == {"prompt": new, "served_snapshot": "opus-1", "since": st[KEY]["since"]}
    with session(engine) as s:  # every sample carries what it was gathered on
        rows = s.execute(sa.select(Sample.prompt_fingerprint, Sample.served_snapshot,
                                   Sample.shadow_snapshot).distinct()).all()
    assert set(rows) == {(old, "opus-1", "haiku-1"), (new, "opus-1", "haiku-1")}


def test_the_demotion_watch_keeps_running_and_a_snapshot_change_names_the_model(engine):
    pol = policy()  # the candidate serves
    feed(engine, pol, ["A"] * 50, served=HAIKU, shadow=OPUS, served_snap="haiku-1", shadow_snap="opus-1")
    with session(engine) as s:
        row = s.exec(select(Category).where(Category.name == "sentiment")).one()
        row.detector_state = {**row.detector_state, "s": 600}  # a demotion watch under way (h = 620)
        s.add(row)
        s.commit()
    expected = state(engine)
    sit = Situation("candidate", pinned=False, now=0.0)
    for _ in range(40):
        expected, _ = pol.category("sentiment").engine.update(expected, True, sit)
    events = feed(engine, pol, ["A"] * 40, served=HAIKU, shadow=OPUS, served_snap="haiku-2",
                  shadow_snap="opus-1")
    assert events.index(1) == 39 and sum(events) == 1
    st = state(engine)
    assert st["dir"] == "demote" and st["s"] == 600 - 40 * 3  # k = 3 a sample
    assert {k: st[k] for k in ("n", "s", "z", "a")} == {k: expected[k] for k in ("n", "s", "z", "a")}
    (reset,) = evidence_resets(engine)
    assert reset["summary"] == "sentiment: evidence restarts: claude-haiku-4-5 snapshot haiku-1 -> haiku-2"
    assert category_status(engine, pol)["sentiment"]["fingerprint"]["served_snapshot"] == "haiku-2"


def test_a_ladder_restarts_every_rungs_promotion_and_operator_actions_keep_the_tracker(engine):
    pol = policy(ladder=[HAIKU, SONNET, OPUS], start_on="reference", probe_rate=0.0)
    feed(engine, pol, ["A"] * 50, shadow=SONNET, shadow_snap="sonnet-1")
    feed(engine, pol, ["A"] * 30, shadow=HAIKU, shadow_snap="haiku-1")
    before = state(engine)
    assert before["rungs"][SONNET]["n"] == 50 and before["rungs"][HAIKU]["n"] == 30
    events = feed(engine, pol, ["A"] * 40, shadow=SONNET, shadow_snap="sonnet-2")
    assert events.index(1) == 39 and sum(events) == 1
    st = state(engine)
    assert st["rungs"][SONNET]["n"] == 1 and st["rungs"][HAIKU]["n"] == 0  # both restarted
    assert st[KEY]["snapshots"][SONNET]["current"] == "sonnet-2"
    tracked = st[KEY]
    promote(engine, None, pol, "sentiment", reason="test", actor="t", force=True)
    assert state(engine)[KEY] == tracked  # the operator's change keeps it
    pin(engine, None, pol, "sentiment", OPUS, reason="hold", actor="t")
    assert state(engine)[KEY] == tracked


def test_an_error_or_a_job_without_its_request_never_counts(engine):
    pol = policy(start_on="reference")
    feed(engine, pol, ["A"] * 50)
    lost = ShadowJob(**{**job("B").to_dict(), "request": {}, "payload_ref": "gone"})
    for _ in range(60):
        x = ShadowJob(**{**lost.to_dict(), "job_id": uuid.uuid4().hex})
        record(engine, None, pol, x, None, None, ("payload_expired", "gone"), 1)
    assert state(engine)[KEY]["prompt"]["window"] == [[prompt_fingerprint({"system": "A"}), 50]]
    with session(engine) as s:
        nulls = s.execute(sa.select(sa.func.count()).select_from(Sample)
                          .where(Sample.prompt_fingerprint.is_(None))).scalar()
    assert nulls == 60
