"""Alerts: payloads per channel's public API, the outbox's exactly-once delivery, no leaked secrets."""

import logging
import threading

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import flip
from tierguard.alerts.channels import verify_webhook
from tierguard.alerts.events import emit
from tierguard.alerts.outbox import deliver_due
from tierguard.ops.actions import promote
from tierguard.policy import parse_policy
from tierguard.store.db import session
from tierguard.store.tables import Alert, Event, RouteChange

SLACK_SECRET_PATH = "/services/T0000/B0000/SECRETSLACKTOKEN"
WEBHOOK_SECRET = "whsec-very-secret-value"
PD_KEY = "R0UTINGKEYSECRET0000000000000000"


@pytest.fixture
def channels_env(monkeypatch, receiver):
    monkeypatch.setenv("TG_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("TG_SLACK_URL", receiver.url + SLACK_SECRET_PATH)
    monkeypatch.setenv("TG_PD_KEY", PD_KEY)
    return receiver


def policy_for(receiver, channels=("webhook", "slack", "pagerduty", "alertmanager")):
    all_channels = {
        "webhook": {"type": "webhook", "url": receiver.url + "/hook", "secret_env": "TG_WEBHOOK_SECRET"},
        "slack": {"type": "slack", "webhook_url_env": "TG_SLACK_URL"},
        "pagerduty": {"type": "pagerduty", "routing_key_env": "TG_PD_KEY",
                      "url": receiver.url + "/v2/enqueue"},
        "alertmanager": {"type": "alertmanager", "url": receiver.url},
    }
    return parse_policy({"defaults": {"min_samples": 5}, "categories": {"sentiment": {}},
                         "alerts": {"channels": [all_channels[c] for c in channels],
                                    "dashboard_url": "https://grafana.example/d/tierguard"}})


def by_path(receiver, prefix):
    return [r for r in receiver.requests if r.path.startswith(prefix)]


def test_demotion_writes_event_and_alerts_in_its_transaction_and_each_channel_gets_its_payload(
        engine, channels_env):
    receiver = channels_env
    policy = policy_for(receiver)
    flip(engine, policy)
    with session(engine) as s:
        change = s.exec(select(RouteChange)).one()
        event = s.exec(select(Event)).one()
        alerts = s.exec(select(Alert)).all()
    assert (event.kind, event.severity, event.route_change_id) == ("demoted", "critical", change.id)
    assert sorted(a.channel for a in alerts) == ["alertmanager", "pagerduty", "slack", "webhook"]
    assert deliver_due(engine, policy)["delivered"] == 4

    [hook] = by_path(receiver, "/hook")
    assert verify_webhook(WEBHOOK_SECRET, hook.headers["x-tierguard-timestamp"], hook.body,
                          hook.headers["x-tierguard-signature"])
    assert not verify_webhook("wrong", hook.headers["x-tierguard-timestamp"], hook.body,
                              hook.headers["x-tierguard-signature"])
    body = hook.json
    assert body["event"] == "demoted" and body["category"] == "sentiment"
    assert body["details"]["numbers"]["agreement"] == 0.0 and body["details"]["numbers"]["samples"] == 20
    assert "tierguard pin sentiment claude-opus-4-7" in " ".join(body["details"]["actions"])
    assert "Production traffic for sentiment now goes to claude-opus-4-7" in body["details"]["did"]
    assert hook.headers["idempotency-key"] == f"route_change:{change.id}/webhook"

    [slack] = by_path(receiver, SLACK_SECRET_PATH)
    blocks = slack.json["blocks"]
    assert blocks[0] == {"type": "header", "text": {"type": "plain_text", "text": "tierguard: demoted"}}
    fields = [f["text"] for f in blocks[2]["fields"]]
    assert "*Category*\nsentiment" in fields and "*Agreement*\n0.0%" in fields and "*Samples*\n20" in fields
    assert blocks[-1]["elements"][0]["url"] == "https://grafana.example/d/tierguard?var-category=sentiment"

    [pd] = by_path(receiver, "/v2/enqueue")
    assert pd.json["routing_key"] == PD_KEY and pd.json["event_action"] == "trigger"
    assert pd.json["dedup_key"] == "tierguard/sentiment/quality"
    payload = pd.json["payload"]
    assert (payload["severity"], payload["source"], payload["component"]) == (
        "critical", "tierguard", "sentiment")
    assert payload["summary"].startswith("sentiment demoted: claude-haiku-4-5 → claude-opus-4-7")

    [am] = by_path(receiver, "/api/v2/alerts")
    [alert] = am.json
    assert alert["labels"] == {"alertname": "TierguardDemoted", "service": "tierguard",
                               "severity": "critical", "category": "sentiment"}
    assert "endsAt" not in alert and alert["annotations"]["summary"] == payload["summary"]

    # Promotion resolves what the demotion opened.
    receiver.requests.clear()
    promote(engine, None, policy, "sentiment", reason="fixed", actor="ana", force=True)
    assert deliver_due(engine, policy)["delivered"] == 4
    [pd] = by_path(receiver, "/v2/enqueue")
    assert pd.json["event_action"] == "resolve" and pd.json["dedup_key"] == "tierguard/sentiment/quality"
    [am] = by_path(receiver, "/api/v2/alerts")
    assert am.json[0]["labels"]["alertname"] == "TierguardDemoted" and "endsAt" in am.json[0]


def test_a_receiver_that_fails_then_recovers_gets_exactly_one_alert(engine, channels_env):
    receiver = channels_env
    policy = policy_for(receiver, ["webhook"])
    receiver.fail_next = 3
    flip(engine, policy)
    results = []
    for _ in range(6):
        results.append(dict(deliver_due(engine, policy)))
        with session(engine) as s:  # skip the backoff wait
            s.execute(sa.update(Alert).values(next_attempt_at=sa.func.now()))
            s.commit()
    assert results[:4] == [{"retry": 1}] * 3 + [{"delivered": 1}]
    assert len(by_path(receiver, "/hook")) == 1
    with session(engine) as s:
        alert = s.exec(select(Alert)).one()
    assert (alert.status, alert.attempts, alert.last_error) == ("delivered", 4, None)


def test_two_deliverers_never_duplicate(engine, channels_env):
    receiver = channels_env
    policy = policy_for(receiver, ["webhook"])
    with session(engine) as s:
        for i in range(40):
            emit(s, policy, key=f"test-event-{i}", kind="monitor_blind", category=f"c{i}", summary="x")
        s.commit()
    barrier = threading.Barrier(2)

    def deliver():
        barrier.wait()
        deliver_due(engine, policy, limit=5)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = [r.headers["idempotency-key"] for r in by_path(receiver, "/hook")]
    assert len(keys) == len(set(keys)) == 40


def test_secrets_never_reach_the_database_or_the_logs(engine, channels_env, caplog):
    receiver = channels_env
    policy = policy_for(receiver, ["slack", "webhook", "pagerduty"])
    receiver.fail_next, receiver.fail_status = 100, 500
    caplog.set_level(logging.DEBUG)
    flip(engine, policy)
    deliver_due(engine, policy)
    with session(engine) as s:
        dumped = repr([a.model_dump() for a in s.exec(select(Alert))] +
                      [e.model_dump() for e in s.exec(select(Event))])
    assert "slack slack answered 500" in dumped
    for secret in ("SECRETSLACKTOKEN", WEBHOOK_SECRET, PD_KEY):
        assert secret not in dumped
        assert secret not in caplog.text


def test_missing_secret_is_retried_not_dropped(engine, receiver, monkeypatch):
    monkeypatch.delenv("TG_SLACK_URL", raising=False)
    policy = policy_for(receiver, ["slack"])
    flip(engine, policy)
    assert deliver_due(engine, policy) == {"retry": 1}
    with session(engine) as s:
        alert = s.exec(select(Alert)).one()
    assert alert.status == "pending"
    assert alert.last_error == "environment variable TG_SLACK_URL (Slack webhook URL) is not set"


def test_channel_routing_by_event_and_severity(engine, channels_env):
    receiver = channels_env
    policy = parse_policy({"alerts": {"channels": [
        {"type": "webhook", "name": "pages", "url": receiver.url + "/p", "min_severity": "critical"},
        {"type": "webhook", "name": "blind", "url": receiver.url + "/b", "events": ["monitor_blind"]},
    ], "severities": {"monitor_blind": "critical"}}})
    with session(engine) as s:
        emit(s, policy, key="e1", kind="monitor_blind", category="x", summary="blind")
        emit(s, policy, key="e2", kind="eligible", category="x", summary="eligible")
        assert emit(s, policy, key="e1", kind="monitor_blind", category="x", summary="again") is None
        s.commit()
        alerts = sorted((a.event_id, a.channel) for a in s.exec(select(Alert)))
    assert [c for _, c in alerts] == ["blind", "pages"]  # eligible (info) goes nowhere


def test_alerts_test_command_reports_each_channel(channels_env, tmp_path):
    import os

    from tests.helpers import last_json, tg, write_policy

    receiver = channels_env
    write_policy(tmp_path / "tierguard.yaml", {"alerts": [
        {"type": "webhook", "url": receiver.url + "/hook", "secret_env": "TG_WEBHOOK_SECRET"},
        {"type": "alertmanager", "name": "am", "url": "http://127.0.0.1:9"}]})
    env = {**os.environ, "TIERGUARD_POLICY": str(tmp_path / "tierguard.yaml")}
    done = tg("alerts", "test", "--json", env=env, cwd=tmp_path, check=False)
    assert done.returncode == 1
    assert last_json(done.stdout) == {"channels": {
        "webhook": "delivered", "am": "failed: alertmanager am unreachable (ConnectionRefusedError)"}}
    assert by_path(receiver, "/hook")[0].json["event"] == "test"
    one = tg("alerts", "test", "--channel", "0", "--json", env=env, cwd=tmp_path)
    assert last_json(one.stdout) == {"channels": {"webhook": "delivered"}}


def test_monitors_page_once_per_episode(engine, redis_url, channels_env):
    import datetime as dt

    import redis

    from tierguard.alerts.monitors import check
    from tierguard.contract.keys import TRAFFIC as TRAFFIC_KEY
    from tierguard.store.db import utcnow

    receiver = channels_env
    policy = policy_for(receiver, ["webhook"])
    r = redis.Redis.from_url(redis_url)
    now = utcnow()
    r.hset(TRAFFIC_KEY.format(minute=int(now.timestamp() // 60)), "sentiment", 500)
    assert check(engine, r, policy, "tierguard", now) == 1
    assert check(engine, r, policy, "tierguard", now + dt.timedelta(seconds=60)) == 0
    deliver_due(engine, policy)
    [hook] = by_path(receiver, "/hook")
    assert hook.json["event"] == "monitor_blind"
    assert "500 production calls in 15 min but no shadow sample ever" in hook.json["summary"]


def test_pagerduty_opens_one_incident_per_model_for_a_models_own_events():
    import datetime as dt

    from tierguard.alerts.channels import pagerduty_event
    from tierguard.store.tables import Event

    def retiring(model):
        return Event(key=f"model_retiring:{model}:2026-W49", kind="model_retiring", category=None,
                     severity="warning", summary=f"{model} retires", created_at=dt.datetime.now(dt.UTC),
                     details={"numbers": {"model": model}})

    keys = {pagerduty_event(retiring(m), "rk")["dedup_key"] for m in ("claude-a", "claude-b")}
    assert keys == {"tierguard/all/model_retiring/claude-a", "tierguard/all/model_retiring/claude-b"}
