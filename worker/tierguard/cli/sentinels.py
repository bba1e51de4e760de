"""``tierguard sentinels run``: a category's known answers through every rung, now."""

from __future__ import annotations

import typer
from rich.table import Table

from tierguard.cli.apps import sentinels_app
from tierguard.cli.common import JsonOpt, console, emit, env, pct, redis_client

KEYS = ("accuracy", "baseline", "snapshot", "cases", "failed")


HELP = ("Run the sentinels now, whether due or not, and settle each rung against its baseline.\n\n"
        "Exit code: 0 when every rung is within its tolerance; 1 when any rung failed (its "
        "sentinel_failed event is raised only on the run where it starts failing); 2 when a run cannot "
        "start (no sentinels, a bad file, Redis away, a run of the category under way).")


@sentinels_app.command("run", help=HELP)
def run(category: str | None = typer.Argument(None, help="one category (default: every category "
                                              "with sentinels)"),
        concurrency: int = typer.Option(8, min=1, max=256, help="calls in flight"),
        as_json: bool = JsonOpt) -> None:
    """Known answers through every rung of CATEGORY (or every category with sentinels)."""
    from tierguard.errors import SentinelError
    from tierguard.pipeline.sentinels import run_locked, shadow_clients, shadow_room

    settings, policy, engine = env()
    names = [category] if category else [n for n in sorted(policy.categories)
                                         if policy.category(n).sentinels is not None]
    if not names:
        raise SentinelError("no category of the policy has sentinels (categories.NAME.sentinels)")
    import redis

    r = redis_client(settings)
    client = shadow_clients(settings, lambda: policy)
    room = shadow_room(settings, policy, r)
    out: dict[str, dict] = {}
    for name in names:
        try:
            found = run_locked(r, engine, policy, name, attempts=settings.shadow_max_attempts,
                               concurrency=concurrency, client=client, room=room)
        except redis.RedisError as err:
            raise SentinelError(f"{name}: cannot take the run's lock in Redis "
                                f"({type(err).__name__})") from None
        if found is None:
            raise SentinelError(f"{name}: a run of its sentinels is under way (lock "
                                f"tierguard:lock:sentinels:{name}); try again when it ends")
        out[name] = found
    failed = any(r["failed"] for rungs in out.values() for r in rungs.values())
    if as_json:
        emit({"categories": {n: {m: {k: r[k] for k in (*KEYS, "compared", "baseline_snapshot")}
                                 for m, r in rungs.items()} for n, rungs in out.items()}})
    else:
        _table(policy, out)
    if failed:
        raise typer.Exit(1)


def _table(policy, out: dict[str, dict]) -> None:
    table = Table(title="sentinels: accuracy on known answers against each rung's baseline")
    for col in ("category", "model", "snapshot", "cases", "accuracy", "baseline", ""):
        table.add_column(col, no_wrap=col != "")
    for name, rungs in out.items():
        reference = policy.category(name).reference
        for model, r in rungs.items():
            status = "[red]FAILED[/]" if r["failed"] else "ok"
            table.add_row(name, model + (" (reference)" if model == reference else ""), r["snapshot"],
                          f"{r['compared']}/{r['cases']}", pct(r["accuracy"]),
                          pct(r["baseline"]) + ("" if r["baseline_snapshot"] in (None, r["snapshot"])
                                                else f" on {r['baseline_snapshot']}"), status)
    console.print(table)
    for name, rungs in out.items():
        for model, r in rungs.items():
            if r["failed"]:
                console.print(f"[red]{name} / {model}:[/] {r['reason']}", highlight=False)
