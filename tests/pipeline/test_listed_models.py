"""The API's model list: read by beat's ``tierguard.models`` task when beat starts (a real beat and
worker against the simulator over HTTP), kept in Redis across beat restarts; an unreachable API is
logged and counted, never raised, and the last list stays."""

import logging

import redis
from prometheus_client import REGISTRY

from tests.helpers import API_KEY, wait_until, write_policy
from tierguard.config import get_settings
from tierguard.contract.broker import MODELS_TASK, beat_entries
from tierguard.pipeline import listed_models
from tierguard.pipeline.tasks import worker_app
from tierguard.sim.servers import free_port
from tierguard.store.db import make_engine, upgrade

NEW = "claude-haiku-5"


def failures(reason):
    return REGISTRY.get_sample_value("tierguard_models_read_failures_total", {"reason": reason}) or 0.0


def test_beat_reads_the_list_when_it_starts_and_it_survives_a_restart(stack, simulator, sqlite_url,
                                                                      redis_url):
    sim = simulator()
    settings = stack.configure(policy={"categories": {"a": {}}}, database_url=sqlite_url,
                               base_url=sim.base_url)
    assert ("models", MODELS_TASK, 86_400.0) in beat_entries(settings)  # daily after the start
    r = redis.Redis.from_url(redis_url)
    stack.start_worker(concurrency=2)
    beat = stack.start_beat()
    wait_until(lambda: listed_models.kept(r) is not None, 30, "the list read at beat's start")
    first = listed_models.kept(r)
    assert first.ids == {"claude-haiku-4-5", "claude-opus-4-7", "claude-sonnet-4-6"}
    beat.terminate()
    beat.wait(15)
    sim.sim.script({"models": [NEW]})  # released while beat was down
    assert listed_models.kept(r) == first  # kept while beat is gone
    stack.start_beat()
    wait_until(lambda: NEW in listed_models.kept(r).ids, 30, "the list read again at the restart")


def test_an_unreachable_api_is_logged_and_counted_and_the_last_list_kept(tmp_path, sqlite_url, redis_url,
                                                                         simulator, monkeypatch, caplog):
    upgrade(make_engine(sqlite_url))
    policy = write_policy(tmp_path / "tierguard.yaml", {"categories": {"a": {}}})
    app = worker_app(get_settings(redis_url=redis_url, database_url=sqlite_url, policy=policy))
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    sim = simulator()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.base_url)
    task = app.tasks[MODELS_TASK]
    assert task.apply().get() == {"models": 3}
    assert task.apply(kwargs={"beat": True}).get() == {"models": 3}
    assert task.apply(kwargs={"beat": True}).get() == {"skipped": 1}  # once per period from beat
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    before = failures("connection")
    with caplog.at_level(logging.WARNING, logger="tierguard.pipeline.listed_models"):
        assert task.apply().get() == {"failed": "connection"}
        assert task.apply().get() == {"failed": "connection"}
    assert failures("connection") == before + 2
    assert "cannot read the API's model list (cannot reach the model API" in caplog.text
    assert API_KEY not in caplog.text
    kept = listed_models.state(redis.Redis.from_url(redis_url))
    assert kept["ids"] == ["claude-haiku-4-5", "claude-opus-4-7", "claude-sonnet-4-6"]  # the last good one
    assert kept["failures"] == 2 and kept["error"].startswith("cannot reach the model API")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.base_url)
    assert task.apply().get() == {"models": 3}
    assert listed_models.state(redis.Redis.from_url(redis_url))["failures"] == 0


def test_a_platform_without_a_models_api_is_not_read(tmp_path, sqlite_url, redis_url):
    upgrade(make_engine(sqlite_url))
    policy = write_policy(tmp_path / "tierguard.yaml", {"categories": {"a": {}}})
    app = worker_app(get_settings(redis_url=redis_url, database_url=sqlite_url, policy=policy,
                                  shadow_platform="bedrock"))
    assert app.tasks[MODELS_TASK].apply().get() == {"skipped": "bedrock"}
    assert listed_models.kept(redis.Redis.from_url(redis_url)) is None
