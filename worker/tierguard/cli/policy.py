"""``tierguard policy check``: validate a policy file without applying it."""

from __future__ import annotations

from pathlib import Path

import typer

from tierguard.cli.apps import policy_app
from tierguard.cli.common import JsonOpt, console, emit, err_console


@policy_app.command("check")
def policy_check(file: Path = typer.Argument(..., help="the policy file to validate"),
                 as_json: bool = JsonOpt) -> None:
    """Validate FILE as running processes would; exit 1 with every problem named by its path."""
    from tierguard.errors import ConfigError
    from tierguard.pipeline.sentinels import missing_files
    from tierguard.policy import load_policy

    if not file.is_file():
        problems = [f"{file}: no such file"]
    else:
        try:
            policy = load_policy(file)
            problems = missing_files(policy)  # sentinel files, relative to the policy file's folder
        except ConfigError as err:
            problems = err.problems
    if as_json:
        emit({"file": str(file), "valid": not problems, "problems": problems,
              **({"categories": sorted(policy.categories)} if not problems else {})})
    elif problems:
        err_console.print(f"[red]{file} is invalid:[/]", highlight=False)
        for p in problems:
            err_console.print(f"  {p}", highlight=False, markup=False)
    else:
        console.print(f"{file}: valid ({len(policy.categories)} categories)")
    if problems:
        raise typer.Exit(1)
