"""Delivering the alert outbox: claim a due row with a lease, send, settle.

A row is claimed by an atomic UPDATE (only one worker or beat wins), sent
outside any transaction, then marked delivered or rescheduled with backoff. A
crash while sending lets the lease lapse and the row is retried; receivers get
an idempotency key (the event key) to drop such a repeat.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections import Counter

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tierguard.alerts.channels import send
from tierguard.errors import PermanentDelivery, RetryableDelivery
from tierguard.policy import Policy
from tierguard.store.db import session, utcnow
from tierguard.store.tables import Alert, Event

log = logging.getLogger(__name__)
LEASE = dt.timedelta(seconds=120)


def backoff(attempts: int) -> dt.timedelta:
    """5 s, 10 s, 20 s … capped at 5 minutes, jittered."""
    return dt.timedelta(seconds=min(300.0, 5.0 * 2 ** (attempts - 1)) * random.uniform(0.8, 1.2))


def _claim(engine: Engine, now: dt.datetime, limit: int) -> list[int]:
    due = sa.or_(sa.and_(Alert.status == "pending", Alert.next_attempt_at <= now),
                 sa.and_(Alert.status == "sending", Alert.lease_until < now))
    claimed = []
    with session(engine) as s:
        ids = s.execute(sa.select(Alert.id).where(due).order_by(Alert.id).limit(limit)).scalars().all()
        for alert_id in ids:
            done = s.execute(sa.update(Alert).where(Alert.id == alert_id, due).values(
                status="sending", lease_until=now + LEASE, attempts=Alert.attempts + 1))
            if done.rowcount == 1:
                claimed.append(alert_id)
        s.commit()
    return claimed


def _settle(engine: Engine, alert_id: int, **values: object) -> None:
    with session(engine) as s:
        s.execute(sa.update(Alert).where(Alert.id == alert_id).values(lease_until=None, **values))
        s.commit()


def deliver_due(engine: Engine, policy: Policy, limit: int = 50) -> Counter[str]:
    """Send every due alert once; returns counts by result."""
    channels = {c.name: c for c in policy.alerts.channels}
    counts: Counter[str] = Counter()
    give_up = dt.timedelta(hours=policy.alerts.give_up_hours)
    while True:
        now = utcnow()
        claimed = _claim(engine, now, limit)
        if not claimed:
            return counts
        for alert_id in claimed:
            with session(engine) as s:
                alert = s.get(Alert, alert_id)
                event = s.get(Event, alert.event_id)
            channel = channels.get(alert.channel)
            if channel is None:
                _settle(engine, alert_id, status="failed",
                        last_error=f"channel {alert.channel!r} is no longer in the policy")
                counts["failed"] += 1
                continue
            try:
                send(channel, event)
            except PermanentDelivery as err:
                log.error("alert %s to %s failed for good: %s", event.key, channel.name, err)
                _settle(engine, alert_id, status="failed", last_error=str(err))
                counts["failed"] += 1
            except RetryableDelivery as err:
                created = alert.created_at if alert.created_at.tzinfo else \
                    alert.created_at.replace(tzinfo=dt.UTC)
                expired = utcnow() - created > give_up
                log.warning("alert %s to %s: %s (attempt %d%s)", event.key, channel.name, err,
                            alert.attempts, ", giving up" if expired else "")
                _settle(engine, alert_id, status="failed" if expired else "pending",
                        last_error=str(err), next_attempt_at=utcnow() + backoff(alert.attempts))
                counts["failed" if expired else "retry"] += 1
            else:
                _settle(engine, alert_id, status="delivered", delivered_at=utcnow(), last_error=None)
                counts["delivered"] += 1
