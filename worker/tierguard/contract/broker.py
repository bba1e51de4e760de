"""The Celery app both sides share: broker settings and the task names (the message contract).

Built from settings on demand (never at import). The production side only sends
by name; :func:`tierguard.pipeline.tasks.worker_app` registers the tasks that
consume them.
"""

from __future__ import annotations

from celery import Celery

from tierguard.config import Settings

SHADOW_TASK = "tierguard.pipeline.shadow"
BATCH_TASK = "tierguard.shadow_batch"
DELIVER_TASK = "tierguard.deliver_alerts"
MONITOR_TASK = "tierguard.monitor"
MAINTAIN_TASK = "tierguard.maintain"
BATCHES_TASK = "tierguard.batches"


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
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
        },
        worker_hijack_root_logger=False,
        beat_schedule={
            "deliver-alerts": {"task": DELIVER_TASK, "schedule": settings.alert_sweep_seconds,
                               "options": {"expires": settings.alert_sweep_seconds}},
            "monitor": {"task": MONITOR_TASK, "schedule": settings.monitor_seconds,
                        "options": {"expires": settings.monitor_seconds}},
            "batches": {"task": BATCHES_TASK, "schedule": settings.batch_poll_seconds,
                        "options": {"expires": settings.batch_poll_seconds}},
            "maintain": {"task": MAINTAIN_TASK, "schedule": settings.maintain_seconds,
                         "options": {"expires": settings.maintain_seconds}},
        },
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.tierguard_settings = settings  # type: ignore[attr-defined]
    return app
