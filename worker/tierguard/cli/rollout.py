"""``tierguard rollout CATEGORY MODEL | status | pause | resume | abort``: staged rollouts."""

from __future__ import annotations

import typer
from rich.table import Table

from tierguard.cli.apps import app
from tierguard.cli.common import JsonOpt, actor_name, console, emit, env, redis_client

ACTIONS = ("pause", "resume", "abort")
HELP = ("Roll CATEGORY out to MODEL (a rung below its reference, or a priced model such as a "
        "challenger) in weighted steps: each step sends that share "
        "of the calls routed to the model in service to MODEL, and advances once it has lasted "
        "--step-minutes and gathered --step-samples comparisons of MODEL with the reference; MODEL's "
        "own agreement CUSUM on its share rolls it back at once (audited, paged, rule rollout); the "
        "last step (100) makes MODEL the route (a model off the ladder: once the policy lists it).\n\n"
        "`tierguard rollout status [CATEGORY] [--json]`, `tierguard rollout pause|resume|abort CATEGORY`.")


@app.command("rollout", help=HELP)
def rollout(what: str = typer.Argument(..., metavar="CATEGORY | status | pause | resume | abort"),
            second: str | None = typer.Argument(None, metavar="[MODEL | CATEGORY]"),
            steps: str = typer.Option("5,25,50,100", help="percent of the calls at each step"),
            step_minutes: float = typer.Option(60.0, help="the least a step lasts (0 allowed)"),
            step_samples: int = typer.Option(100, help="the fewest comparisons of MODEL a step needs"),
            actor: str | None = typer.Option(None, help="who (default: the login name)"),
            as_json: bool = JsonOpt) -> None:
    from tierguard.errors import ConfigError
    from tierguard.ops import rollouts

    settings, policy, engine = env()
    if what == "status":
        return _status(rollouts.status(engine, policy, second), as_json)
    if second is None:
        raise ConfigError([f"{'CATEGORY' if what in ACTIONS else 'MODEL'}: missing (see --help)"])
    r = redis_client(settings)
    if what in ACTIONS:
        rollouts.act(engine, r, policy, second, what, actor_name(actor))
        category = second
    else:
        rollouts.start(engine, r, policy, what, second, steps, step_minutes, step_samples,
                       actor_name(actor))
        category = what
    return _status(rollouts.status(engine, policy, category), as_json)


def _status(found: dict, as_json: bool) -> None:
    if as_json:
        emit(found)
        return
    table = Table(title="staged rollouts")
    for col in ("category", "from → to", "status", "step", "share", "comparisons", "CUSUM", "why"):
        table.add_column(col)
    for name, x in found["rollouts"].items():
        table.add_row(name, f"{x['base']} → {x['model']}", x["status"], f"{x['step']}/{len(x['steps'])}",
                      f"{x['weight']:.0%}", f"{x['samples']}/{x['step_samples']}", f"{x['statistic']:.0%}",
                      x["reason"])
    console.print(table)
