"""``tierguard demo`` and ``tierguard report``."""

from __future__ import annotations

from pathlib import Path

import typer

from tierguard.cli.apps import app
from tierguard.cli.common import JsonOpt, console, emit, env, err_console


@app.command()
def demo(minutes: float = typer.Option(1.0, help="how long traffic runs"),
         seconds: float | None = typer.Option(None, hidden=True),
         rate: float = typer.Option(60.0, help="production calls per second"),
         sample_rate: float = typer.Option(0.5, help="share of calls shadowed"),
         folder: Path = typer.Option(Path("tierguard-demo"), help="where the database and logs go"),
         as_json: bool = JsonOpt) -> None:
    """Run the whole loop locally (SQLite, private Redis, worker, simulated models) and show a flip."""
    from tierguard.ops.demo import run

    result = run(seconds=seconds or minutes * 60, rate=rate, sample_rate=sample_rate, folder=folder,
                 as_json=as_json, console=err_console if as_json else console)
    if as_json:
        emit(result)


@app.command()
def report(since: str = typer.Option("24h", help="period: 90m, 24h, 7d…"),
           out: Path = typer.Option(Path("report.png"), help="PNG to write"),
           as_json: bool = JsonOpt) -> None:
    """A PNG: agreement over time with thresholds and flips, current routes, spend vs savings."""
    from tierguard.ops.report import gather, parse_since, render, summary

    _, policy, engine = env()
    data = gather(engine, parse_since(since), policy)
    render(data, out)
    result = summary(data, out)
    if as_json:
        emit(result)
    else:
        console.print(f"report written to [bold]{result['out']}[/] ({result['changes']} route "
                      f"change(s); shadow spend ${result['shadow_spend_usd']:.4f}, estimated "
                      f"savings ${result['savings_usd_est']:.4f})")
