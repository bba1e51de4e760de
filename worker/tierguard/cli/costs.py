"""``tierguard costs``: production spend, the cost of watching, the candidate's saving."""

from __future__ import annotations

import typer
from rich.table import Table

from tierguard.cli.apps import app
from tierguard.cli.common import JsonOpt, console, emit, env


@app.command()
def costs(since: str = typer.Option("7d", help="how far back (90m, 24h, 30d)"),
          as_json: bool = JsonOpt) -> None:
    """Measured production spend, shadow spend and the candidate's saving, per category."""
    from tierguard.ops.costs import costs as figures
    from tierguard.ops.report import parse_since
    from tierguard.store.db import utcnow

    _, policy, engine = env()
    now = utcnow()
    result = figures(engine, policy, now - parse_since(since), now)
    if as_json:
        emit(result)
        return
    table = Table(title=f"costs since {result['since'][:16]} ({result['days']:g} days), USD")
    for col in ("category", "production (escalated)",
                "shadow (sync / batch / noise / probe / sentinel / challenger / judge)", "watching", "saving",
                "30-day projection (prod. / shadow / saving)"):
        table.add_column(col)
    rows = [*result["categories"].items(), ("total", result["total"])]
    for name, c in rows:
        share = "—" if c["watching_share"] is None else f"{c['watching_share']:.1%}"
        p = c["projection_30d"]
        table.add_row(name, f"{c['production_usd']:,.2f} ({c['escalated_usd']:,.2f})",
                      f"{c['shadow_usd']:,.2f} ({c['sync_usd']:,.2f} / {c['batch_usd']:,.2f} / "
                      f"{c['noise_usd']:,.2f} / {c['probe_usd']:,.2f} / {c['sentinel_usd']:,.2f} / "
                      f"{c['challenger_usd']:,.2f} / "
                      f"{c['judge_usd']:,.2f})", share, f"{c['savings_usd']:,.2f}",
                      f"{p['production_usd']:,.0f} / {p['shadow_usd']:,.0f} / {p['savings_usd']:,.0f}")
    console.print(table)
    if result["total"]["calls_without_usage"]:
        console.print(f"[yellow]{result['total']['calls_without_usage']:,} production calls have no "
                      "token counts (counted by a wrapper older than this release): not in the spend")
