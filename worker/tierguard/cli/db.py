"""``tierguard db``: the schema."""

from __future__ import annotations

from tierguard.cli.apps import db_app
from tierguard.cli.common import console


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the tables (SQLite or PostgreSQL) to the latest revision."""
    from tierguard.config import get_settings
    from tierguard.db import current_revision, make_engine, upgrade

    settings = get_settings()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    console.print(f"database at revision [bold]{current_revision(engine)}[/]")
