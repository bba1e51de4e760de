"""``tierguard replay``: backtest a policy on recorded comparisons."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from tierguard.cli.apps import app
from tierguard.cli.common import JsonOpt, console, emit, err_console, pct


@app.command()
def replay(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON lines"),
           policy_file: Path | None = typer.Option(None, "--policy", help="policy to try"),
           db: str = typer.Option("sqlite://", help="database URL (default: in memory)"),
           as_json: bool = JsonOpt) -> None:
    """Backtest a policy: recorded comparisons through the real comparators, engine and storage."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from tierguard.config import get_settings
    from tierguard.db import make_engine, upgrade
    from tierguard.ops.replay import replay as run_replay
    from tierguard.policy import load_policy

    path = policy_file or get_settings().policy
    if policy_file is not None and not policy_file.exists():
        raise typer.BadParameter(f"{policy_file} does not exist", param_hint="--policy")
    pol = load_policy(path)
    engine = make_engine(db)
    upgrade(engine)
    lines = file.read_text().splitlines()
    with Progress(TextColumn("replay"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                  TimeRemainingColumn(), console=err_console,
                  disable=not err_console.is_terminal) as bar:
        task = bar.add_task("replay", total=len(lines))
        result = run_replay(lines, pol, engine, progress=lambda i: bar.update(task, completed=i))
        bar.update(task, completed=len(lines))
    if as_json:
        emit(result)
        return
    for c in result["changes"]:
        console.print(f"line {c['index']}: [bold]{c['category']}[/] {c['from']} → {c['to']} "
                      f"({c['rule']}): {c['reason']}")
    for c in result["would_change"]:
        console.print(f"line {c['index']}: {c['category']} would change {c['from']} → {c['to']} "
                      "(observe mode)")
    table = Table(title=f"replay of {file.name}")
    for col in ("category", "samples", "agreement", "final route"):
        table.add_column(col)
    for name, c in result["categories"].items():
        table.add_row(name, f"{c['samples']:,}", pct(c["agreement"]), c["route"])
    console.print(table)
