"""``tierguard challenge MODEL | stop MODEL | status``: challengers shadowed beside the ladders."""

from __future__ import annotations

import typer
from rich.table import Table

from tierguard.cli.apps import app
from tierguard.cli.common import JsonOpt, actor_name, console, emit, env, pct

HELP = ("Challenge MODEL: shadow it on a share of the sampled jobs of every category (or those of "
        "--categories), compared with each job's reference answer and with the rung in service.\n\n"
        "`tierguard challenge stop MODEL` stops it everywhere (its evidence is kept); "
        "`tierguard challenge status [--json]` shows every challenger's standing and the "
        "recommendation per category.")


@app.command("challenge", help=HELP)
def challenge(what: str = typer.Argument(..., metavar="MODEL | stop | status"),
              model: str | None = typer.Argument(None, metavar="[MODEL]", help="with stop: the model"),
              categories: str | None = typer.Option(None, help="A,B: only these categories"),
              rate: float | None = typer.Option(None, help="share of sampled jobs (default: each "
                                                "category's challenge_rate)"),
              actor: str | None = typer.Option(None, help="who (default: the login name)"),
              as_json: bool = JsonOpt) -> None:
    from tierguard.errors import ConfigError
    from tierguard.routing import challengers

    _, policy, engine = env()
    if what == "status":
        return _status(engine, policy, as_json)
    if what == "stop":
        if model is None:
            raise ConfigError(["MODEL: `tierguard challenge stop` needs the model to stop"])
        row = challengers.stop(engine, model, actor_name(actor))
        done = {"model": row.model, "stopped": True}
    else:
        if model is not None:
            raise ConfigError([f"{model!r}: give one MODEL (or `stop MODEL`, `status`)"])
        names = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
        row = challengers.start(engine, policy, what, names, rate, actor_name(actor))
        done = {"model": row.model, "categories": row.categories, "rate": row.rate, "stopped": False}
    if as_json:
        emit(done)
    else:
        where = ", ".join(row.categories) if row.categories else "every category"
        share = "each category's challenge_rate" if row.rate is None else f"{row.rate:g}"
        console.print(f"{done['model']}: " + ("stopped" if done["stopped"] else
                                              f"challenged in {where} at {share} of sampled jobs"))
    return None


def _status(engine, policy, as_json: bool) -> None:
    from tierguard.ops.challengers import challenger_status

    found = challenger_status(engine, policy)
    if as_json:
        emit(found)
        return
    table = Table(title="challengers: against the reference and the rung in service")
    for col in ("challenger", "category", "samples", "vs reference", "vs serving", "verdict", "eligible",
                "saving / month"):
        table.add_column(col)
    for model, per_category in found["challengers"].items():
        for name, e in per_category.items():
            saving = "—" if e["saving_usd_month"] is None else f"${e['saving_usd_month']:,.0f}"
            table.add_row(model + ("" if e["active"] else " (stopped)"), name, str(e["samples"]),
                          pct(e["agreement_with_reference"]), pct(e["agreement_with_serving"]),
                          e["verdict"], "yes" if e["eligible"] else "no", saving)
    console.print(table)
    for name, r in found["recommendations"].items():
        console.print(f"{name}: recommended [bold]{r['model']}[/] ({r['why']}); saving over "
                      f"{r['serving']}: " + ("—" if r["saving_usd_month"] is None
                                               else f"${r['saving_usd_month']:,.0f} a month"))
