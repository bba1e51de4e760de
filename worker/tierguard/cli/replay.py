"""``tierguard replay``: backtest a policy on recorded comparisons (a JSONL file or the database)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from tierguard.cli.apps import app
from tierguard.cli.common import JsonOpt, console, emit, err_console, pct


@app.command()
def replay(file: Path | None = typer.Argument(None, exists=True, dir_okay=False,
                                              help="JSON lines (or --from-db)"),
           policy_file: Path | None = typer.Option(None, "--policy", help="policy to try"),
           db: str = typer.Option("sqlite://", help="database URL for a file's replay (default: in "
                                                    "memory; a real one also keeps the samples)"),
           from_db: bool = typer.Option(False, "--from-db",
                                        help="replay the outcomes recorded in TIERGUARD_DATABASE_URL"),
           since: str | None = typer.Option(None, help="with --from-db: how far back (90m, 24h, 30d)"),
           category: list[str] = typer.Option([], help="with --from-db: only these (repeatable)"),
           as_json: bool = JsonOpt) -> None:
    """Backtest a policy: recorded comparisons through the real comparators and engine."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from tierguard.config import get_settings
    from tierguard.ops.replay import from_db as run_from_db
    from tierguard.ops.replay import replay as run_replay
    from tierguard.ops.report import parse_since
    from tierguard.policy import load_policy
    from tierguard.store.db import check_schema, make_engine, upgrade, utcnow

    if (file is None) == (not from_db):
        raise typer.BadParameter("give a FILE or --from-db (one of them)")
    settings = get_settings()
    if policy_file is not None and not policy_file.exists():
        raise typer.BadParameter(f"{policy_file} does not exist", param_hint="--policy")
    pol = load_policy(policy_file or settings.policy)
    with Progress(TextColumn("replay"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                  TimeRemainingColumn(), console=err_console,
                  disable=not err_console.is_terminal) as bar:
        task = bar.add_task("replay", total=None)
        if from_db:
            source = make_engine(settings.database_url)
            check_schema(source)
            start = utcnow() - parse_since(since) if since else None
            result = run_from_db(source, pol, start, category or None,
                                 progress=lambda i: bar.update(task, completed=i))
        else:
            engine = make_engine(db)
            upgrade(engine)
            lines = file.read_text().splitlines()  # type: ignore[union-attr]
            bar.update(task, total=len(lines))
            result = run_replay(lines, pol, engine, store=db != "sqlite://",
                                progress=lambda i: bar.update(task, completed=i))
    if as_json:
        emit(result)
        return
    where = "sample" if from_db else "line"
    for c in result["changes"]:
        console.print(f"{where} {c['index']}: [bold]{c['category']}[/] {c['from']} → {c['to']} "
                      f"({c['rule']}): {c['reason']}")
    for c in result["would_change"]:
        console.print(f"{where} {c['index']}: {c['category']} would change {c['from']} → {c['to']} "
                      "(observe mode)")
    for c in result["evidence_resets"]:
        console.print(f"{where} {c['index']}: {c['category']} evidence restarts: {c['what']}")
    for c in result.get("actual", []):
        console.print(f"[dim]actually, {c['at'][:19]}: {c['category']} {c['from']} → {c['to']} "
                      f"({c['rule']}, {c['actor']})[/]")
    table = Table(title=f"replay of {'the database' if from_db else file.name}")  # type: ignore[union-attr]
    for col in ("category", "samples", "agreement", "final route"):
        table.add_column(col)
    for name, c in result["categories"].items():
        table.add_row(name, f"{c['samples']:,}", pct(c["agreement"]), c["route"])
    console.print(table)
