"""Beat's periodic tasks: no absolute expiry (a worker's skewed clock drops nothing), and a backlog
of beat's sends runs once per period, by Redis's clock."""

from tests.helpers import write_policy
from tierguard.config import get_settings
from tierguard.contract.broker import DELIVER_TASK, MAINTAIN_TASK, make_celery
from tierguard.pipeline.tasks import worker_app
from tierguard.store.db import make_engine, upgrade


def test_beat_sends_carry_no_absolute_expiry(redis_url):
    schedule = make_celery(get_settings(redis_url=redis_url)).conf.beat_schedule
    assert schedule and all("expires" not in entry.get("options", {}) for entry in schedule.values())
    assert all(entry["kwargs"] == {"beat": True} for entry in schedule.values())


def test_a_backlog_of_beat_sends_runs_once_per_period(tmp_path, sqlite_url, redis_url):
    upgrade(make_engine(sqlite_url))
    policy = write_policy(tmp_path / "tierguard.yaml", {"categories": {"c": {}}})
    app = worker_app(get_settings(redis_url=redis_url, database_url=sqlite_url, policy=policy,
                                  maintain_seconds=3600, alert_sweep_seconds=3600))
    for name in (DELIVER_TASK, MAINTAIN_TASK):
        task = app.tasks[name]
        first, backlog = task.apply(kwargs={"beat": True}).get(), task.apply(kwargs={"beat": True}).get()
        assert "skipped" not in first and backlog == {"skipped": 1}, name
        assert "skipped" not in task.apply().get()  # sent by tierguard itself (after an event): runs
