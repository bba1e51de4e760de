"""Alert channels: webhook, Slack, PagerDuty Events v2, Alertmanager, Grafana annotations.

A channel turns an event into the receiver's documented payload and sends it;
it raises :class:`RetryableDelivery` (try again later) or
:class:`PermanentDelivery` (the receiver rejects this payload). Secrets come
from the environment at send time and never appear in errors or logs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tierguard.alerts.grafana import annotate
from tierguard.errors import PermanentDelivery, RetryableDelivery
from tierguard.policy import Channel
from tierguard.store.tables import Event

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
PD_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}


def _secret(name: str | None, what: str) -> str:
    value = os.environ.get(name or "")
    if not value:
        raise RetryableDelivery(f"environment variable {name} ({what}) is not set")
    return value


def post_json(url: str, body: Any, headers: dict[str, str], timeout: float, label: str) -> bytes:
    """POST JSON; map failures to retryable/permanent without echoing the URL (it may hold a secret)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        status = err.code
        if status in (408, 425, 429) or status >= 500:
            raise RetryableDelivery(f"{label} answered {status}") from None
        raise PermanentDelivery(f"{label} rejected the alert with {status}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise RetryableDelivery(f"{label} unreachable ({type(reason).__name__})") from None


def _text(event: Event) -> str:
    d = event.details or {}
    lines = [event.summary, ""]
    if d.get("did"):
        lines.append(f"What tierguard did: {d['did']}")
    if d.get("actions"):
        lines.append("What you can do:")
        lines += [f"  {a}" for a in d["actions"]]
    if d.get("dashboard"):
        lines.append(f"Dashboard: {d['dashboard']}")
    return "\n".join(lines)


def event_json(event: Event) -> dict[str, Any]:
    return {"id": event.key, "event": event.kind, "severity": event.severity,
            "category": event.category, "summary": event.summary, "details": event.details,
            "created_at": event.created_at.isoformat(), "source": "tierguard"}


def send_webhook(ch: Channel, event: Event) -> None:
    body = json.dumps(event_json(event), sort_keys=True).encode()
    ts = str(int(time.time()))
    headers = {"Idempotency-Key": f"{event.key}/{ch.name}", "X-Tierguard-Timestamp": ts,
               "X-Tierguard-Event": event.kind}
    if ch.secret_env:
        key = _secret(ch.secret_env, "webhook signing secret").encode()
        mac = hmac.new(key, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers["X-Tierguard-Signature"] = f"sha256={mac}"
    post_json(ch.url or "", body, headers, ch.timeout, f"webhook {ch.name}")


def verify_webhook(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver runs: recompute the signature over ``timestamp.body``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"sha256={mac}", signature)


def slack_message(event: Event) -> dict[str, Any]:
    d = event.details or {}
    n = d.get("numbers") or {}
    emoji = {"critical": ":rotating_light:", "warning": ":warning:"}.get(event.severity,
                                                                       ":information_source:")
    fields = [f"*Category*\n{event.category or '—'}", f"*Severity*\n{event.severity}"]
    if n.get("agreement") is not None:
        fields.append(f"*Agreement*\n{n['agreement']:.1%}")
    if n.get("samples") is not None:
        fields.append(f"*Samples*\n{n['samples']}")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"tierguard: {event.kind}"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} {event.summary}"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    if d.get("did"):
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": f"*What tierguard did*\n{d['did']}"}})
    if d.get("actions"):
        code = "\n".join(d["actions"])
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": f"*What you can do*\n```{code}```"}})
    if d.get("dashboard"):
        blocks.append({"type": "actions", "elements": [{
            "type": "button", "text": {"type": "plain_text", "text": "Open dashboard"},
            "url": d["dashboard"]}]})
    return {"text": event.summary, "blocks": blocks}


def send_slack(ch: Channel, event: Event) -> None:
    url = _secret(ch.webhook_url_env, "Slack webhook URL")
    post_json(url, slack_message(event), {}, ch.timeout, f"slack {ch.name}")


def pagerduty_event(event: Event, routing_key: str) -> dict[str, Any]:
    """Events API v2: one incident per category and concern (a model's own events without a
    category, such as ``model_retiring``: per model); promotion resolves the demotion."""
    concern = "quality" if event.kind in ("demoted", "promoted", "flap_guard") else event.kind
    model = ((event.details or {}).get("numbers") or {}).get("model")
    if event.category is None and isinstance(model, str):
        concern = f"{concern}/{model}"
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "resolve" if event.kind == "promoted" else "trigger",
        "dedup_key": f"tierguard/{event.category or 'all'}/{concern}",
    }
    if body["event_action"] == "trigger":
        body["payload"] = {
            "summary": event.summary[:1024], "source": "tierguard",
            "severity": PD_SEVERITY[event.severity], "component": event.category or "tierguard",
            "group": "tierguard", "class": event.kind, "timestamp": event.created_at.isoformat(),
            "custom_details": event.details}
        if (event.details or {}).get("dashboard"):
            body["links"] = [{"href": event.details["dashboard"], "text": "tierguard dashboard"}]
    return body


def send_pagerduty(ch: Channel, event: Event) -> None:
    key = _secret(ch.routing_key_env, "PagerDuty routing key")
    post_json(ch.url or PAGERDUTY_URL, pagerduty_event(event, key), {}, ch.timeout,
              f"pagerduty {ch.name}")


def alertmanager_alerts(event: Event) -> list[dict[str, Any]]:
    """POST /api/v2/alerts body; a promotion ends the category's demotion alert."""
    now = event.created_at.isoformat()
    name = "TierguardDemoted" if event.kind == "promoted" else \
        "Tierguard" + "".join(p.title() for p in event.kind.split("_"))
    alert: dict[str, Any] = {
        "labels": {"alertname": name, "service": "tierguard", "severity": event.severity,
                   "category": event.category or "all"},
        "annotations": {"summary": event.summary, "description": _text(event)},
        "startsAt": now,
    }
    if event.kind == "promoted":
        alert["endsAt"] = now
    if (event.details or {}).get("dashboard"):
        alert["generatorURL"] = event.details["dashboard"]
    return [alert]


def send_alertmanager(ch: Channel, event: Event) -> None:
    url = (ch.url or "").rstrip("/") + "/api/v2/alerts"
    post_json(url, alertmanager_alerts(event), {}, ch.timeout, f"alertmanager {ch.name}")




SENDERS: dict[str, Callable[[Channel, Event], None]] = {
    "webhook": send_webhook, "slack": send_slack, "pagerduty": send_pagerduty,
    "alertmanager": send_alertmanager, "grafana": annotate,
}


def send(ch: Channel, event: Event) -> None:
    SENDERS[ch.type](ch, event)
