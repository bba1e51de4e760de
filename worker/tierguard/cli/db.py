"""``tierguard db``: the schema."""

from __future__ import annotations

import typer

from tierguard.cli.apps import app, db_app
from tierguard.cli.common import JsonOpt, console, emit, env, redis_client


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the tables (SQLite or PostgreSQL) to the latest revision."""
    from tierguard.config import get_settings
    from tierguard.db import current_revision, make_engine, upgrade

    settings = get_settings()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    console.print(f"database at revision [bold]{current_revision(engine)}[/]")


@app.command()
def maintain(dry_run: bool = typer.Option(False, "--dry-run", help="say what would be deleted"),
             as_json: bool = JsonOpt) -> None:
    """One pass of everything periodic (beat runs it too): counters, partitions, retention."""
    from tierguard import maintenance

    settings, policy, engine = env()
    result = maintenance.run(engine, redis_client(settings), policy, dry_run=dry_run)
    if as_json:
        emit(result)
        return
    counts = result["would_delete" if dry_run else "deleted"]
    verb = "would delete" if dry_run else "deleted"
    console.print(f"samples before {result['samples_before'][:19]}, rollups before "
                  f"{result['rollups_before'][:19]}: {verb} "
                  + ", ".join(f"{n:,} {table}" for table, n in counts.items())
                  + ("" if dry_run else f"; {result['folded_traffic_rows']:,} traffic rows folded"))
    gone = result["partitions_would_drop" if dry_run else "partitions_dropped"]
    if gone:
        console.print(f"partitions {'it would drop' if dry_run else 'dropped'}: "
                      + ", ".join(f"{p['partition']} ({p['rows']:,} rows)" for p in gone))
    if result["partitions_created"]:
        console.print(f"partitions created: {len(result['partitions_created'])} "
                      f"({result['partitions_created'][0]} … {result['partitions_created'][-1]})")
