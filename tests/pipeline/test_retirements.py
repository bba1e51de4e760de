"""Beat's retirement check on real parts (SQLite and PostgreSQL, Redis, the simulator's /v1/models over
HTTP): one ``model_retiring`` per model and ISO week however often it runs; past the date a category
moves once, audited; an unlisted model is reported, never moved; retired rungs are never promoted to;
a policy without retirements behaves as before."""

import datetime as dt
import json
import uuid

import anthropic
import pytest
import redis
from sqlmodel import select

from tierguard.compare import Verdict
from tierguard.contract import keys
from tierguard.contract.job import ShadowJob
from tierguard.ops.actions import ActionRefused, pin, promote
from tierguard.ops.status import category_status
from tierguard.pipeline import listed_models
from tierguard.pipeline.calls import Answer
from tierguard.pipeline.recorder import record
from tierguard.pipeline.retirements import check
from tierguard.policy import parse_policy
from tierguard.routing.routes import ensure_categories, lock_category
from tierguard.store.db import session
from tierguard.store.tables import Alert, Category, Event, RouteChange

HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"
MONDAY = dt.datetime(2026, 11, 16, 9, 0, tzinfo=dt.UTC)  # ISO week 2026-W47
HOOK = [{"type": "webhook", "url": "http://127.0.0.1:9/hook", "events": ["model_retiring", "model_retired"]}]


def policy_with(retirements=None, **pair):
    data = {"alerts": HOOK, "categories": {
        "pair": {"start_on": "cheapest", **pair},
        "ladder": {"ladder": [HAIKU, SONNET, OPUS], "start_on": OPUS}}}
    if retirements is not None:
        data["retirements"] = {m: d.isoformat() for m, d in retirements.items()}
    return parse_policy(data)


def rows(engine, table, *where):
    with session(engine) as s:
        return list(s.exec(select(table).where(*where)))


def set_row(engine, policy, name, **values):
    with session(engine) as s:
        row = lock_category(s, policy.category(name))
        for k, v in values.items():
            setattr(row, k, v)
        s.add(row)
        s.commit()


def test_a_retiring_model_raises_one_event_per_week_however_often_the_check_runs(engine, redis_url):
    policy = policy_with({HAIKU: dt.date(2026, 11, 26)})
    ensure_categories(engine, policy)
    set_row(engine, policy, "ladder", detector_state={"rungs": {SONNET: {"eligible": True}}})
    r = redis.Redis.from_url(redis_url)
    raised = [check(engine, r, policy, MONDAY + dt.timedelta(hours=h)).events for h in (0, 0, 1, 50, 96)]
    assert raised == [1, 0, 0, 0, 0]  # Monday to Friday of one week
    assert check(engine, r, policy, MONDAY + dt.timedelta(days=7)).events == 1  # the next week
    events = rows(engine, Event)
    assert [(e.kind, e.key, e.severity) for e in events] == [
        ("model_retiring", f"model_retiring:{HAIKU}:2026-W47", "warning"),
        ("model_retiring", f"model_retiring:{HAIKU}:2026-W48", "warning")]
    first = events[0]
    assert first.summary == (
        f"{HAIKU} retires on 2026-11-26 (10 days left); used by ladder (rung; replacement: {SONNET}, the "
        f"cheapest usable rung eligible on its own evidence); pair (route; replacement: {OPUS}, the "
        "reference: no cheaper usable rung serves or is eligible)")
    numbers = first.details["numbers"]
    assert (numbers["model"], numbers["date"], numbers["days_left"], numbers["listed"]) == (
        HAIKU, "2026-11-26", 10, True)
    assert {n: u["replacement"] for n, u in numbers["categories"].items()} == {"ladder": SONNET, "pair": OPUS}
    assert f"tierguard pin pair {OPUS} --reason '{HAIKU} retiring'  (move it now)" in first.details["actions"]
    assert len(rows(engine, Alert)) == 2  # one page per event on the channel that wants it
    assert rows(engine, RouteChange) == []
    assert rows(engine, Category, Category.name == "pair")[0].routed_model == HAIKU


def test_past_the_date_a_pinned_category_moves_once_audited_and_unpinned(engine, redis_url):
    policy = policy_with({HAIKU: dt.date(2026, 11, 14)})
    ensure_categories(engine, policy)
    pin(engine, None, policy_with(), "pair", HAIKU, reason="keep it cheap", actor="ops")  # before the date
    set_row(engine, policy, "ladder", routed_model=HAIKU,
            detector_state={"rungs": {SONNET: {"eligible": True}}})
    r = redis.Redis.from_url(redis_url)
    first = check(engine, r, policy, MONDAY)
    assert [c.category for c in first.changes] == ["ladder", "pair"] and first.events == 3
    for later in (1, 2, 30):
        assert check(engine, r, policy, MONDAY + dt.timedelta(minutes=later)).changes == []
    moves = rows(engine, RouteChange, RouteChange.rule == "retirement")
    assert [(c.category, c.from_model, c.to_model, c.applied) for c in moves] == [
        ("ladder", HAIKU, SONNET, True), ("pair", HAIKU, OPUS, True)]
    assert moves[1].reason == (f"{HAIKU} retired on 2026-11-14 (2 days ago): {OPUS} serves instead, the "
                               "reference: no cheaper usable rung serves or is eligible; the pin on it is "
                               "lifted")
    assert moves[1].numbers == {"retired_on": "2026-11-14"}
    pair = rows(engine, Category, Category.name == "pair")[0]
    assert (pair.routed_model, pair.pinned, pair.pin_reason) == (OPUS, False, None)
    assert r.hget(keys.ROUTES, "pair").decode() == f"{OPUS}|{pair.version}"
    assert sorted(e.kind for e in rows(engine, Event)) == ["model_retired", "model_retired", "model_retiring"]
    [retired] = rows(engine, Event, Event.kind == "model_retired", Event.category == "pair")
    assert retired.summary == f"pair: {HAIKU} retired, {OPUS} serves"
    assert retired.route_change_id == moves[1].id
    statuses = category_status(engine, policy)
    assert statuses["pair"]["route"] == OPUS and statuses["ladder"]["route"] == SONNET
    assert statuses["pair"]["retiring"] == [{"model": HAIKU, "date": "2026-11-14",
                                            "days_left": (dt.date(2026, 11, 14) - dt.date.today()).days}]


def test_observe_mode_records_one_would_change_row(engine, redis_url):
    policy = policy_with({HAIKU: dt.date(2026, 11, 1)}, mode="observe")
    ensure_categories(engine, policy)
    for minute in range(3):
        check(engine, redis.Redis.from_url(redis_url), policy, MONDAY + dt.timedelta(minutes=minute))
    [would] = rows(engine, RouteChange, RouteChange.category == "pair")
    assert (would.rule, would.from_model, would.to_model, would.applied) == ("retirement", HAIKU, OPUS, False)
    assert rows(engine, Category, Category.name == "pair")[0].routed_model == HAIKU
    assert [e.kind for e in rows(engine, Event)] == ["model_retiring"]


def test_a_policy_without_retirements_behaves_as_before(engine, redis_url, simulator):
    policy = policy_with()
    ensure_categories(engine, policy)
    r = redis.Redis.from_url(redis_url)
    assert check(engine, r, policy, MONDAY).events == 0  # no dates, no list: nothing read
    sim = simulator()  # lists every model the policy uses
    with anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0) as client:
        assert listed_models.refresh(r, client) == {"models": 3}
    done = check(engine, r, policy, MONDAY)
    assert (done.events, done.changes) == (0, [])
    assert rows(engine, Event) == [] and rows(engine, RouteChange) == []
    assert "retiring" not in category_status(engine, policy)["pair"]


def test_a_model_the_api_does_not_list_is_reported_and_not_moved(engine, redis_url, simulator):
    policy = policy_with()
    ensure_categories(engine, policy)
    r = redis.Redis.from_url(redis_url)
    sim = simulator(models=[SONNET])  # Haiku is gone from the API's list
    with anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0) as client:
        listed_models.refresh(r, client, MONDAY)
    done = check(engine, r, policy, MONDAY)
    assert (done.events, done.changes) == (1, [])
    [event] = rows(engine, Event)
    assert event.summary.startswith(f"{HAIKU} is not listed by the API (its model list as read at "
                                    "2026-11-16T09:00:00+00:00); used by ladder (rung; ")
    assert event.details["numbers"]["listed"] is False and event.details["numbers"]["date"] is None
    assert rows(engine, Category, Category.name == "pair")[0].routed_model == HAIKU


def feed(engine, policy, n):
    """``n`` agreeing Haiku shadow samples while the reference serves; the last outcome."""
    agree = Verdict(True, 1.0, "the same")
    for _ in range(n):
        job = ShadowJob(job_id=uuid.uuid4().hex, category="pair", served_model=OPUS, shadow_model=HAIKU,
                        request={"messages": []}, primary_text="YES")
        outcome = record(engine, None, policy, job, Answer("YES", 1, 1, 1.0), agree, None, 1)
        if outcome.change is not None:
            return outcome
    return outcome


@pytest.mark.parametrize("retired", [False, True])
def test_a_retired_rung_is_never_promoted_to(engine, retired):
    policy = policy_with({HAIKU: dt.date(2026, 1, 1) if retired else dt.date(2099, 1, 1)},
                         start_on="reference", auto_promote=True, cooldown_minutes=0,
                         promote_min_samples=50)
    outcome = feed(engine, policy, 400)
    if not retired:  # the same evidence promotes a model still served
        assert outcome.change is not None and outcome.change.to_model == HAIKU
        return
    assert outcome.change is None and outcome.decision.reason.endswith(f"but {HAIKU} retired on 2026-01-01")
    row = rows(engine, Category, Category.name == "pair")[0]
    assert row.routed_model == OPUS and not row.detector_state.get("eligible")
    with pytest.raises(ActionRefused, match=f"pair: {HAIKU} retired on 2026-01-01; it is never promoted"):
        promote(engine, None, policy, "pair", reason="", actor="ops", force=True)
    with pytest.raises(ActionRefused, match=f"pair: {HAIKU} retired on 2026-01-01; pin it to a model"):
        pin(engine, None, policy, "pair", "candidate", reason="", actor="ops")


def test_the_kept_list_survives_in_redis_with_when_it_was_read(redis_url, simulator):
    r = redis.Redis.from_url(redis_url)
    sim = simulator(models=[f"claude-test-{i:04d}" for i in range(1200)])  # two pages of 1000
    with anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0) as client:
        assert listed_models.refresh(r, client, MONDAY) == {"models": 1201}
    kept = listed_models.kept(redis.Redis.from_url(redis_url))  # any process reads it back
    assert len(kept.ids) == 1201 and OPUS in kept.ids and kept.read_at == "2026-11-16T09:00:00+00:00"
    assert json.loads(r.hget(keys.MODELS, "ids"))[:2] == ["claude-opus-4-7", "claude-test-0000"]


def test_beats_monitor_task_runs_the_check(tmp_path, sqlite_url, redis_url):
    from tests.helpers import write_policy
    from tierguard.config import get_settings
    from tierguard.contract.broker import MONITOR_TASK
    from tierguard.pipeline.tasks import worker_app
    from tierguard.store.db import make_engine, upgrade

    engine = make_engine(sqlite_url)
    upgrade(engine)
    soon = dt.date.today() + dt.timedelta(days=5)
    policy = write_policy(tmp_path / "tierguard.yaml", {"categories": {"pair": {}},
                                                         "retirements": {HAIKU: soon.isoformat()}})
    app = worker_app(get_settings(redis_url=redis_url, database_url=sqlite_url, policy=policy))
    monitor = app.tasks[MONITOR_TASK]
    assert monitor.apply().get() == 1 and monitor.apply().get() == 0  # once this week
    [event] = rows(engine, Event)
    assert event.kind == "model_retiring" and event.summary.startswith(f"{HAIKU} retires on {soon} (5 days")


def test_status_json_gains_retiring_only_where_a_model_retires(tmp_path, sqlite_url, redis_url):
    import os

    from tests.helpers import last_json, tg, write_policy
    from tierguard.store.db import make_engine, upgrade

    upgrade(make_engine(sqlite_url))
    soon = dt.date.today() + dt.timedelta(days=3)
    policy = write_policy(tmp_path / "tierguard.yaml", {
        "categories": {"pair": {}, "other": {"candidate": SONNET}}, "retirements": {HAIKU: soon.isoformat()}})
    env = {**os.environ, "TIERGUARD_POLICY": str(policy), "TIERGUARD_DATABASE_URL": sqlite_url,
           "TIERGUARD_REDIS_URL": redis_url}
    cats = last_json(tg("status", "--json", env=env, cwd=tmp_path).stdout)["categories"]
    assert cats["pair"]["retiring"] == [{"model": HAIKU, "date": soon.isoformat(), "days_left": 3}]
    assert "retiring" not in cats["other"] and cats["pair"]["route"] == HAIKU  # other keys unchanged
