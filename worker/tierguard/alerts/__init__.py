"""What on-call hears: events written in the caller's transaction, and their delivery.

Owns the ``event``/``alert`` outbox rows (:mod:`~tierguard.alerts.events`), leased
exactly-once delivery (:mod:`~tierguard.alerts.outbox`) to the channels
(:mod:`~tierguard.alerts.channels`: webhook, Slack, PagerDuty, Alertmanager,
Grafana annotations via :mod:`~tierguard.alerts.grafana`), and beat's periodic
checks (:mod:`~tierguard.alerts.monitors`). May import the shared core (policy,
db, routes, keys, errors) and ``otlp`` (pin expiries exported after commit); never the
production side, the worker side or ops.
"""
