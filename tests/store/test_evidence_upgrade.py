"""Upgrading to issue 27's schema and rule: every sample kept (fingerprint and snapshots null),
every eligibility re-derived under the betting test on the next sample, demotion watches kept."""

import json
import uuid

import sqlalchemy as sa

from tests.helpers import tg
from tierguard.compare import Verdict
from tierguard.contract.job import ShadowJob
from tierguard.pipeline.calls import Answer
from tierguard.pipeline.recorder import record
from tierguard.policy import parse_policy
from tierguard.store.db import make_engine, session, upgrade
from tierguard.store.tables import Category, Sample

HAIKU, OPUS = "claude-haiku-4-5", "claude-opus-4-7"
# Detector states as the former rule wrote them: one category eligible (Wilson), one demoting.
ELIGIBLE = {"v": 2, "dir": "promote", "s": 0, "n": 400, "a": 396, "z": 0, "za": 0, "eligible": True,
            "ewma": 0.99, "total": 900, "last_change": 1.7e9, "changes": [1.7e9],
            "cfg": "0.9|0.93|0.01|10000|50|0.95|200"}
WATCHING = {**ELIGIBLE, "dir": "demote", "s": 400, "n": 300, "a": 280, "eligible": False}


def _legacy(conn) -> None:
    for i in range(40):
        conn.execute(sa.text(
            "INSERT INTO sample (job_id, category, kind, served_model, shadow_model, agree, comparator,"
            " reason, detail, attempts, request_hash, primary_hash, requested_at, created_at, rung)"
            " VALUES (:id, 'sentiment', 'shadow', :served, :shadow, true, 'exact', '', '{}', 1, 'h', 'h',"
            " now(), now(), :rung)"), {"id": f"old-{i}", "served": OPUS, "shadow": HAIKU, "rung": HAIKU})
    for name, route, state in (("sentiment", OPUS, ELIGIBLE), ("invoice", HAIKU, WATCHING)):
        conn.execute(sa.text(
            "INSERT INTO category (name, candidate, reference, routed_model, pinned, detector_state,"
            " version, updated_at) VALUES (:n, :c, :r, :m, false, CAST(:s AS JSON), 2, now())"),
            {"n": name, "c": HAIKU, "r": OPUS, "m": route, "s": json.dumps(state)})


def test_upgrade_keeps_samples_and_re_derives_eligibility(postgres_server, tmp_path):
    url = postgres_server.create_database("evidence27")
    engine = make_engine(url)
    upgrade(engine, "0012")
    with engine.begin() as conn:
        _legacy(conn)
    tg("db", "upgrade", env={"TIERGUARD_DATABASE_URL": url}, cwd=tmp_path)  # no new flag
    with session(engine) as s:
        rows = list(s.execute(sa.select(Sample)).scalars())
    assert len(rows) == 40 and all(r.rung == HAIKU for r in rows)
    unknown = {(r.prompt_fingerprint, r.served_snapshot, r.shadow_snapshot) for r in rows}
    assert unknown == {(None, None, None)}
    policy = parse_policy({"categories": {"sentiment": {}, "invoice": {}}})
    agree = Verdict(True, 1.0, "same")
    for category, served, shadow in (("sentiment", OPUS, HAIKU), ("invoice", HAIKU, OPUS)):
        job = ShadowJob(job_id=uuid.uuid4().hex, category=category, served_model=served, shadow_model=shadow,
                        request={"max_tokens": 8, "messages": [{"role": "user", "content": "x"}]},
                        primary_text="POSITIVE")
        record(engine, None, policy, job, Answer("POSITIVE", 1, 1, 1.0), agree, None, 1)
    with session(engine) as s:
        eligible = s.get(Category, "sentiment").detector_state
        watching = s.get(Category, "invoice").detector_state
    # Re-derived: the former eligibility is gone until the betting test passes.
    assert not eligible["eligible"] and eligible["n"] == 1 and eligible["pcfg"].startswith("betting-v1|")
    assert eligible["changes"] == [1.7e9]  # the flap guard's memory is kept
    # A running demotion watch keeps its CUSUM (an agreement takes k = 3 units off).
    assert watching["dir"] == "demote" and watching["s"] == 397 and watching["n"] == 301
