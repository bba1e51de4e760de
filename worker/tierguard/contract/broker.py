"""The Celery app both sides share: broker settings and the task names (the message contract).

Built from settings on demand (never at import). The production side only sends
by name; :func:`tierguard.pipeline.tasks.worker_app` registers the tasks that
consume them.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import beat_init

from tierguard.config import Settings

log = logging.getLogger(__name__)

SHADOW_TASK = "tierguard.pipeline.shadow"
BATCH_TASK = "tierguard.shadow_batch"
DELIVER_TASK = "tierguard.deliver_alerts"
MONITOR_TASK = "tierguard.monitor"
MAINTAIN_TASK = "tierguard.maintain"
BATCHES_TASK = "tierguard.batches"
SENTINELS_TASK = "tierguard.sentinels"
MODELS_TASK = "tierguard.models"


def job_reprs(jobs: int | None = None) -> dict[str, str]:
    """``send_task``'s reprs for a message of ``jobs`` shadow jobs (None: one, alone): a count, never
    the jobs (Celery would walk every job, prompts and answers, to build the message's headers)."""
    return {"argsrepr": "[<a shadow job>]" if jobs is None else f"[<{jobs} shadow jobs>]",
            "kwargsrepr": "{}"}


def beat_entries(settings: Settings) -> list[tuple[str, str, float]]:
    """(schedule name, task, period in seconds) of everything beat sends."""
    return [("deliver-alerts", DELIVER_TASK, settings.alert_sweep_seconds),
            ("monitor", MONITOR_TASK, settings.monitor_seconds),
            ("batches", BATCHES_TASK, settings.batch_poll_seconds),
            ("maintain", MAINTAIN_TASK, settings.maintain_seconds),
            # A look every monitor period; each category runs when its every_hours have passed.
            ("sentinels", SENTINELS_TASK, settings.monitor_seconds),
            # The API's model list: daily by default, and once when beat starts (send_at_start).
            ("models", MODELS_TASK, settings.models_poll_seconds)]


def send_at_start(app: Celery) -> None:
    """When this app's beat starts, send the model-list read at once (its schedule would first send
    it a period later); a broker that is down then is logged, and the schedule carries on."""
    def send(sender: object = None, **_: object) -> None:
        if getattr(sender, "app", None) is not app:
            return
        try:
            app.send_task(MODELS_TASK, queue=app.tierguard_settings.queue)  # type: ignore[attr-defined]
        except Exception as err:
            log.warning("cannot send the model-list read at beat's start: %s", err)

    beat_init.connect(send, weak=False)


UNACKED_MUTEX_EXPIRE_S = 10


def make_celery(settings: Settings) -> Celery:
    app = Celery("tierguard", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        broker_connection_timeout=2,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # A killed worker's unacked jobs come back after visibility_timeout;
            # kombu checks every interval*throttle seconds (default 100 s).
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
            # The restore takes a Redis lock each second; a worker killed while holding it left it
            # for kombu's default 300 s, holding every redelivery up that long. Two restores at
            # once are safe (kombu WATCHes the unacked hash), so a short lock costs nothing.
            "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE_S,
            # One Redis list per queue (tierguard sends no priorities): a worker then moves each
            # message into a list of its own before recording it (pipeline.broker_transport), so a
            # worker killed as a message arrives loses nothing.
            "priority_steps": [0],
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
        },
        worker_hijack_root_logger=False,
        # No ``expires``: Celery makes it absolute with beat's clock and a worker compares it with
        # its own, so a skewed clock drops every beat task. A backlog of sends runs once per
        # period instead (tierguard.pipeline.tasks.beat_due, by Redis's clock).
        beat_schedule={name: {"task": task, "schedule": period, "kwargs": {"beat": True}}
                       for name, task, period in beat_entries(settings)},
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.tierguard_settings = settings  # type: ignore[attr-defined]
    return app
