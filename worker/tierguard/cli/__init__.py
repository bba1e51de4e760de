"""The ``tierguard`` command: one module per command group, each registering on :data:`app`.

Owns argument parsing and output (Rich for people, ``--json`` for scripts); the
work is done by the packages below it, imported inside each command so that
``tierguard --help`` stays fast.
"""

from __future__ import annotations

import sys

from tierguard.cli import (  # noqa: F401  (each registers its commands)
    alerts,
    bench,
    challenge,
    costs,
    db,
    demo,
    onboard,
    policy,
    replay,
    rollout,
    routes,
    sentinels,
    services,
    simulate,
)
from tierguard.cli.apps import app
from tierguard.cli.common import err_console
from tierguard.errors import TierguardError

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except TierguardError as err:
        err_console.print(f"[red]error:[/] {err}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
