"""``tierguard db``: the schema."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from tierguard.cli.apps import app, db_app
from tierguard.cli.common import JsonOpt, console, emit, env, err_console, redis_client

if TYPE_CHECKING:
    from tierguard.config import Settings

DEFAULT_PASSWORDS = {"change-me", "changeme"}


def _refuse_default_passwords(settings: Settings) -> None:
    from urllib.parse import unquote, urlsplit

    from tierguard.errors import ConfigError

    found = []
    for name, url in (("TIERGUARD_DATABASE_URL", settings.database_url),
                      ("TIERGUARD_REDIS_URL", settings.redis_url)):
        password = urlsplit(url).password
        if password is not None and unquote(password).lower() in DEFAULT_PASSWORDS:
            found.append(f"{name}: the password is the example's placeholder; set a real one")
    reader = settings.reader_password
    if reader is not None and reader.get_secret_value().lower() in DEFAULT_PASSWORDS:
        found.append("TIERGUARD_READER_PASSWORD: the example's placeholder; set a real one")
    import os

    if os.environ.get("GF_SECURITY_ADMIN_PASSWORD", "").lower() in DEFAULT_PASSWORDS:
        found.append("GF_SECURITY_ADMIN_PASSWORD: the example's placeholder; set a real one")
    if found:
        raise ConfigError(found)


@db_app.command("upgrade")
def db_upgrade(
        wait: float = typer.Option(0.0, "--wait", min=0,
                                   help="seconds to keep retrying while the database is unreachable"),
        create_reader: bool = typer.Option(
            False, "--create-reader",
            help="also create/refresh the read-only tierguard_reader role (PostgreSQL; "
                 "password from TIERGUARD_READER_PASSWORD)")) -> None:
    """Create or migrate the tables (SQLite or PostgreSQL) to the latest revision."""
    import time

    import sqlalchemy as sa

    from tierguard.config import get_settings, mask_url
    from tierguard.store.db import current_revision, make_engine, upgrade

    settings = get_settings()
    _refuse_default_passwords(settings)
    engine = make_engine(settings.database_url)
    deadline = time.monotonic() + wait
    while True:
        try:
            with engine.connect():
                break
        except sa.exc.OperationalError as err:
            if time.monotonic() >= deadline:
                reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
                waited = f" after {wait:g} s" if wait else ""
                err_console.print(f"[red]error:[/] cannot reach the database "
                              f"{mask_url(settings.database_url)}{waited}: {reason}", highlight=False)
                raise typer.Exit(1) from None
            time.sleep(1.0)
    upgrade(engine)
    console.print(f"database at revision [bold]{current_revision(engine)}[/]")
    if create_reader:
        from tierguard.store.reader import READER
        from tierguard.store.reader import create_reader as make_reader

        password = settings.reader_password.get_secret_value() if settings.reader_password else ""
        tables = make_reader(engine, password)
        console.print(f"role [bold]{READER}[/]: SELECT on {', '.join(tables)}; nothing else")


@app.command()
def maintain(dry_run: bool = typer.Option(False, "--dry-run", help="say what would be deleted"),
             as_json: bool = JsonOpt) -> None:
    """One pass of everything periodic (beat runs it too): counters, partitions, retention."""
    from tierguard.store import maintenance

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
