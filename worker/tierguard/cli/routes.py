"""Commands on routes: status, history, pin, promote, unpin."""

from __future__ import annotations

import typer
from rich.table import Table

from tierguard.cli.apps import app
from tierguard.cli.common import JsonOpt, actor_name, console, emit, env, parse_until, pct, redis_client


@app.command()
def status(as_json: bool = JsonOpt) -> None:
    """Per category: route, samples, agreement, pin, last change."""
    from tierguard.cli.common import redis_client
    from tierguard.ops.status import category_status, headroom

    settings, policy, engine = env()
    cats = category_status(engine, policy)
    models = sorted({m for name in cats for m in policy.category(name).rungs})
    from tierguard.headroom.ratelimits import fingerprint

    key = settings.shadow_api_key
    room = headroom(engine, redis_client(settings), models,
                    scope=fingerprint(key.get_secret_value()) if key else "")
    if as_json:
        emit({"categories": cats, "headroom": room})
        return
    table = Table(title="tierguard status")
    for col in ("category", "route", "samples", "errors", "agreement", "threshold",
                "engine", "state", "last change"):
        table.add_column(col)
    for name, c in cats.items():
        agreement = c["agreement"]
        style = "red" if agreement is not None and agreement < c["threshold"] else ""
        last = c["last_change"]
        state = _notes(c)
        ft = c["flip_threshold"]
        engine = (f"{c['watching']}: {c['statistic']:.0%} of h={ft['h_nats']:.2f}"
                  if c["watching"] != "—" else "—")
        table.add_row(name, c["route"], str(c["samples"]), str(c["errors"]),
                      f"[{style}]{pct(agreement)}[/]" if style else pct(agreement),
                      pct(c["threshold"]), engine, "\n".join(state),
                      f"{last['at'][:19]} {last['from']} → {last['to']}" if last else "")
    console.print(table)
    any_cat = next(iter(cats.values()), None)
    if any_cat:
        ft = any_cat["flip_threshold"]
        console.print(f"[dim]flip threshold h is derived per category: ≤ {ft['false_flip_rate']:.2%} "
                      f"false flips per {ft['per_samples']:,} samples at the healthy level "
                      f"({ft['healthy']:.0%} for the first category)[/]")


def _notes(c: dict) -> list[str]:
    """The status table's "state" lines of one category."""
    state = []
    if c["pinned"]:
        until = f" until {c['pinned_until'][:16]}" if c["pinned_until"] else ""
        state.append(f"[yellow]pinned{until}: {c['pin_reason']}[/]")
    if c["eligible"]:
        state.append("[green]eligible for promotion[/]")
    if c["mode"] == "observe":
        state.append(f"observe mode ({c['would_flip']} would-flips)")
    fp = c["fingerprint"]
    if fp["prompt"] or fp["served_snapshot"]:
        state.append(f"prompt {(fp['prompt'] or '—')[:8]}, {fp['served_snapshot'] or '—'} "
                     f"since {(fp['since'] or '')[:16]}")
    if c["self_agreement"] is not None:
        state.append(f"self-agreement {pct(c['self_agreement'])}")
    if c["shadow_via"] == "batch" or c["batch"]["waiting"] or c["batch"]["open"]:
        b = c["batch"]
        state.append(f"batch shadows: {b['waiting']} waiting, {b['open']} batches open "
                     f"({b['in_batches']} jobs)")
    if len(c["rungs"]) > 2:
        state.append("rungs: " + ", ".join(f"{m} {r['state']}" + (
            f" {pct(r['agreement'])}" if r["agreement"] is not None else "")
            for m, r in c["rungs"].items()))
    state += [f"[red]{w}[/]" for w in c["warnings"]]
    return state


@app.command()
def history(category: str | None = typer.Argument(None), limit: int = 100,
            as_json: bool = JsonOpt) -> None:
    """Route changes, newest first: automatic flips and operator actions; then evidence resets and
    staged rollouts' transitions."""
    from tierguard.ops.status import evidence_resets
    from tierguard.ops.status import history as route_history

    _, _, engine = env()
    rows = route_history(engine, category, limit)
    resets = evidence_resets(engine, category, limit)
    rollouts = evidence_resets(engine, category, limit, kind="rollout")
    if as_json:
        emit({"changes": rows, "resets": resets, "rollouts": rollouts})
        return
    table = Table(title="route changes")
    for col in ("at", "category", "from", "to", "actor", "reason"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["at"][:19], r["category"], r["from"], r["to"], r["actor"], r["reason"])
    console.print(table)
    for title, events in (("evidence resets (a new prompt or snapshot)", resets),
                          ("staged rollouts (started, steps, paused, resumed, aborted, done)", rollouts)):
        if events:
            table = Table(title=title)
            for col in ("at", "category", "what"):
                table.add_column(col)
            for r in events:
                table.add_row(r["at"][:19], r["category"], r["summary"])
            console.print(table)


@app.command()
def pin(category: str, model: str = typer.Argument(..., help="a model name, or candidate/reference"),
        reason: str = typer.Option("", help="why, for the audit trail"),
        actor: str | None = typer.Option(None, help="who (default: the login name)"),
        until: str | None = typer.Option(None, help="ISO 8601 time the pin expires "
                                                    "(default: until unpinned)"),
        as_json: bool = JsonOpt) -> None:
    """Route CATEGORY to MODEL; the automatic logic leaves it alone until unpinned or --until."""
    from tierguard.ops.actions import pin as do_pin

    settings, policy, engine = env()
    expires = parse_until(until)
    change = do_pin(engine, redis_client(settings), policy, category, model, reason=reason,
                    actor=actor_name(actor), until=expires)
    if as_json:
        emit({"category": category, "route": change.to_model, "pinned": True,
              "until": expires.isoformat() if expires else None})
    else:
        console.print(f"{category}: pinned to [bold]{change.to_model}[/] (was {change.from_model})"
                      + (f" until {expires.isoformat(timespec='minutes')}" if expires else ""))


@app.command()
def promote(category: str, reason: str = typer.Option(""), actor: str | None = None,
            force: bool = typer.Option(False, help="promote even if not eligible"),
            to: str | None = typer.Option(None, "--to", help="the rung (model) to serve it; "
                                          "default: one rung cheaper"),
            as_json: bool = JsonOpt) -> None:
    """Serve CATEGORY one rung cheaper (its candidate, for two models); it must be eligible."""
    from tierguard.ops.actions import promote as do_promote

    settings, policy, engine = env()
    change = do_promote(engine, redis_client(settings), policy, category, reason=reason,
                        actor=actor_name(actor), force=force, to=to)
    if as_json:
        emit({"category": category, "route": change.to_model, "pinned": False})
    else:
        console.print(f"{category}: promoted to [bold]{change.to_model}[/] (was {change.from_model})")


@app.command()
def unpin(category: str, reason: str = typer.Option(""), actor: str | None = None,
          as_json: bool = JsonOpt) -> None:
    """Return CATEGORY to the automatic logic (its route stays until the logic moves it)."""
    from tierguard.ops.actions import unpin as do_unpin

    settings, policy, engine = env()
    change = do_unpin(engine, redis_client(settings), policy, category, reason=reason,
                      actor=actor_name(actor))
    if as_json:
        emit({"category": category, "route": change.to_model, "pinned": False})
    else:
        console.print(f"{category}: unpinned, served by [bold]{change.to_model}[/]")
