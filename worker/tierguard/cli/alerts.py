"""``tierguard alerts`` and ``tierguard grafana``: channels, the outbox, the dashboard."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from tierguard.cli.apps import alerts_app, grafana_app
from tierguard.cli.common import JsonOpt, console, emit, env
from tierguard.errors import TierguardError


@alerts_app.command("test")
def alerts_test(channel: str | None = typer.Option(None, help="a channel name or 0-based index"),
                as_json: bool = JsonOpt) -> None:
    """Send a test alert to every channel (or one) now, and say what each answered."""
    from tierguard.alerts.channels import send
    from tierguard.alerts.events import dashboard_link
    from tierguard.config import get_settings
    from tierguard.errors import DeliveryError
    from tierguard.policy import load_policy
    from tierguard.store.db import utcnow
    from tierguard.store.tables import Event

    policy = load_policy(get_settings().policy)
    channels = policy.alerts.channels
    if channel is not None:
        channels = [c for i, c in enumerate(channels) if channel in (c.name, str(i))]
        if not channels:
            names = ", ".join(c.name or "" for c in policy.alerts.channels) or "none configured"
            raise TierguardError(f"no alert channel {channel!r} (channels: {names})")
    if not channels:
        raise TierguardError("no alert channels in the policy (alerts: [...])")
    event = Event(key=f"test:{utcnow().isoformat()}", kind="test", category=None, severity="info",
                  summary="tierguard test alert: this channel is wired correctly",
                  details={"numbers": {}, "did": "Nothing; this is a test.",
                           "actions": ["none needed"], "dashboard": dashboard_link(policy, None)},
                  created_at=utcnow())
    results = {}
    for ch in channels:
        try:
            send(ch, event)
            results[ch.name] = "delivered"
        except DeliveryError as err:
            results[ch.name] = f"failed: {err}"
    if as_json:
        emit({"channels": results})
    else:
        for name, result in results.items():
            colour = "green" if result == "delivered" else "red"
            console.print(f"{name}: [{colour}]{result}[/]")
    if any(r != "delivered" for r in results.values()):
        raise typer.Exit(1)


@alerts_app.command("list")
def alerts_list(limit: int = 50, as_json: bool = JsonOpt) -> None:
    """Recent events and the state of their alerts per channel."""
    import sqlalchemy as sa

    from tierguard.store.db import session
    from tierguard.store.tables import Alert, Event

    _, _, engine = env()
    with session(engine) as s:
        events = s.execute(sa.select(Event).order_by(Event.id.desc()).limit(limit)).scalars().all()
        alerts = s.execute(sa.select(Alert).where(Alert.event_id.in_([e.id for e in events]))).scalars().all()
    by_event: dict[int, list] = {}
    for a in alerts:
        by_event.setdefault(a.event_id, []).append(a)
    rows = [{"id": e.id, "kind": e.kind, "category": e.category, "severity": e.severity,
             "summary": e.summary, "at": e.created_at.isoformat(),
             "alerts": {a.channel: {"status": a.status, "attempts": a.attempts,
                                    "last_error": a.last_error} for a in by_event.get(e.id, [])}}
            for e in events]
    if as_json:
        emit({"events": rows})
        return
    table = Table(title="events and alerts")
    for col in ("at", "event", "category", "summary", "alerts"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["at"][:19], f"{r['kind']} ({r['severity']})", r["category"] or "",
                      r["summary"], "\n".join(f"{c}: {a['status']} ×{a['attempts']}"
                                               for c, a in r["alerts"].items()))
    console.print(table)


@grafana_app.command("push")
def grafana_push(dashboard: Path | None = typer.Option(None, help="dashboard JSON"),
                 as_json: bool = JsonOpt) -> None:
    """Create the tierguard folder and upsert the dashboard (GRAFANA_URL, GRAFANA_TOKEN)."""
    from tierguard.alerts.grafana import push

    result = push(path=dashboard)
    if as_json:
        emit(result)
    elif result["provisioned"]:
        console.print(f"dashboard {result['uid']} is provisioned from a file in this Grafana "
                      f"(deploy/grafana/provisioning): it follows that file; nothing pushed")
    else:
        console.print(f"dashboard {result['uid']} pushed (version {result['version']}): {result['url']}")
