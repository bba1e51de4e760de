"""What every command module shares: consoles, the ``--json`` option, settings/policy/database."""

from __future__ import annotations

import datetime as dt
import getpass
import json
from typing import Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

JsonOpt = typer.Option(False, "--json", help="Print one JSON object as the last line.")


def env():
    """Settings, policy and a database engine at the schema's head (else SchemaNotReady)."""
    from tierguard.config import get_settings
    from tierguard.policy import load_policy
    from tierguard.store.db import check_schema, make_engine

    settings = get_settings()
    policy = load_policy(settings.policy)
    engine = make_engine(settings.database_url)
    check_schema(engine)
    return settings, policy, engine


def redis_client(settings):
    import redis

    return redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)


def emit(obj: Any) -> None:
    """The ``--json`` output: one JSON object on the last line."""
    print(json.dumps(obj, default=str), flush=True)


def pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"


def actor_name(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:
        return "operator"


def parse_until(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint="--until") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class nothing:
    """A context manager that does nothing (instead of a spinner under ``--json``)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
