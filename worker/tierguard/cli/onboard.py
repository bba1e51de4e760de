"""Onboarding a category: ``evaluate``, ``opportunities`` and ``judge check``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from tierguard.cli.apps import app, judge_app
from tierguard.cli.common import JsonOpt, console, emit, env, err_console, pct, redis_client


def _money(v: float | None) -> str:
    return "—" if v is None else f"${v:,.2f}"


@app.command()
def evaluate(cases: Path = typer.Argument(..., exists=True, dir_okay=False,
                                          help="JSON lines: Messages API bodies without model"),
             category: str = typer.Option(..., help="the category the cases belong to"),
             concurrency: int = typer.Option(8, min=1, max=256, help="cases in flight"),
             calls_per_day: float | None = typer.Option(
                 None, min=0, help="volume for the saving (default: the category's recorded volume)"),
             apply: bool = typer.Option(False, "--apply",
                                        help="route the category to its candidate when recommended"),
             as_json: bool = JsonOpt) -> None:
    """Run held-out cases through both models, score the match rate, recommend a route."""
    from tierguard.ops.evaluate import evaluate as run
    from tierguard.ops.evaluate import read_cases
    from tierguard.ops.opportunities import apply_recommendation
    from tierguard.ops.opportunities import calls_per_day as volume

    settings, policy, engine = env()
    lines = read_cases(cases.read_text().splitlines())
    recorded = volume(engine, category).get(category)
    with Progress(TextColumn("evaluate"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  console=err_console, disable=not err_console.is_terminal) as bar:
        task = bar.add_task("cases", total=len(lines))
        result = run(engine, policy, category, lines, concurrency=concurrency,
                     attempts=settings.shadow_max_attempts, calls_per_day=calls_per_day,
                     recorded_calls_per_day=recorded,
                     progress=lambda n: bar.update(task, completed=n))
    change = apply_recommendation(engine, redis_client(settings), policy, result) if apply else None
    result["applied"] = change is not None
    if as_json:
        emit(result)
        return
    console.print(f"[bold]{category}[/]: {result['compared']}/{result['cases']} cases compared "
                  f"({result['errors']} errors), agreement {pct(result['agreement'])}, Wilson 95% "
                  f"[{pct(result['wilson_low'])}, {pct(result['wilson_high'])}]"
                  + (f" for the candidate {result['candidate']}" if len(result["rungs"]) > 2 else ""))
    table = Table(title=f"{category}: every rung against the reference {result['reference']}")
    table.add_column("rung", min_width=max(map(len, result["rungs"])), no_wrap=True)
    for col in ("n", "agreement", "Wilson 95%", "cost", ""):
        table.add_column(col, no_wrap=True)
    for model, rung in result["rungs"].items():
        table.add_row(model, str(rung["compared"]), pct(rung["agreement"]),
                      f"{pct(rung['wilson_low'])}–{pct(rung['wilson_high'])}",
                      "—" if rung["cost_usd"] is None else f"${rung['cost_usd']:,.4f}",
                      ", ".join(n for n, on in (("reference", model == result["reference"]),
                                                ("recommended", model == result["recommended_model"]))
                                if on))
    console.print(table)
    console.print(f"recommendation: [bold]{result['recommendation']}[/] ({result['recommended_model']}; "
                  f"promote threshold {pct(result['promote_threshold'])}); projected monthly saving "
                  f"{_money(result['projected_monthly_savings_usd'])}")
    if change is not None:
        console.print(f"applied: {category} now served by [bold]{change.to_model}[/] (audited)")


@app.command()
def opportunities(as_json: bool = JsonOpt) -> None:
    """Categories by production volume: route, agreement, eligibility, monthly saving."""
    from tierguard.ops.challengers import by_category, challenger_status
    from tierguard.ops.opportunities import opportunities as gather

    _, policy, engine = env()
    rows = gather(engine, policy)
    challenged = by_category(challenger_status(engine, policy))
    for r in rows:  # each category's challengers and the recommendation, when any has evidence
        r.update(challenged.get(r["category"], {}))
    if as_json:
        emit({"categories": rows})
        return
    table = Table(title="opportunities (volume over the last 7 days)")
    for col in ("category", "calls/day", "route", "agreement", "evaluation", "eligible",
                "monthly saving"):
        table.add_column(col)
    for r in rows:
        route = "caller's model" if r["follows_caller"] else r["route"]
        name = r["category"] + ("" if r["listed"] else " (unlisted)")
        table.add_row(name, f"{r['calls_per_day']:,.0f}", route, pct(r["agreement"]),
                      f"{pct(r['evaluation_agreement'])} ({r['evaluation_cases']})",
                      "yes" if r["eligible"] else "", _money(r["projected_monthly_savings_usd"]))
    console.print(table)
    for r in rows:
        if r.get("recommendation"):
            rec = r["recommendation"]
            console.print(f"{r['category']}: recommended {rec['model']} ({rec['why']}), "
                          f"{_money(rec['saving_usd_month'])} a month over {rec['serving']}")


@judge_app.command("check")
def judge_check(pairs: Path = typer.Argument(..., exists=True, dir_okay=False,
                                             help="JSON lines: request, reference, candidate, label"),
                category: str | None = typer.Option(None, help="use this category's judge settings"),
                concurrency: int = typer.Option(8, min=1, max=256),
                as_json: bool = JsonOpt) -> None:
    """The judge's agreement with human labels, Cohen's kappa and the confusion table."""
    from tierguard.compare.judge import VERDICTS, Judge
    from tierguard.config import get_settings
    from tierguard.ops.judge_check import check, read_pairs
    from tierguard.policy import load_policy

    policy = load_policy(get_settings().policy)
    judge, model = Judge(), policy.models.reference
    if category is not None:
        cat = policy.category(category)
        if cat.judge_model is None or not isinstance(cat.compare, Judge):
            raise typer.BadParameter(f"{category} does not use the judge comparator",
                                     param_hint="--category")
        judge, model = cat.compare, cat.judge_model
    result = check(read_pairs(pairs.read_text().splitlines()), judge, model, concurrency=concurrency)
    if as_json:
        emit(result)
        return
    console.print(f"judge {model}: {result['judged']}/{result['pairs']} pairs judged "
                  f"({result['errors']} errors); agreement {pct(result['agreement'])}, kappa "
                  f"{result['kappa']}")
    table = Table(title="confusion: human label (rows) vs judge verdict")
    table.add_column("label")
    for v in VERDICTS:
        table.add_column(v)
    for label, row in result["confusion"].items():
        table.add_row(label, *(str(row.get(v, 0)) for v in VERDICTS))
    console.print(table)
    for why in result["first_errors"]:
        console.print(f"[red]{why}[/]")
