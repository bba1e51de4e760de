"""The Typer apps every command module registers on (``tierguard`` and its groups)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Shadow-traffic quality monitor for LLM model tiering.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
sim_app = typer.Typer(no_args_is_help=True, help="Simulated models (Messages API).")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: figures measured in one run.")
alerts_app = typer.Typer(no_args_is_help=True, help="Alert channels and the outbox.")
grafana_app = typer.Typer(no_args_is_help=True, help="Grafana dashboard and annotations.")
app.add_typer(db_app, name="db")
app.add_typer(sim_app, name="simulate")
app.add_typer(bench_app, name="bench")
app.add_typer(alerts_app, name="alerts")
app.add_typer(grafana_app, name="grafana")
judge_app = typer.Typer(no_args_is_help=True, help="The judge comparator: check it against human labels.")
app.add_typer(judge_app, name="judge")
policy_app = typer.Typer(no_args_is_help=True, help="The policy file.")
app.add_typer(policy_app, name="policy")
sentinels_app = typer.Typer(no_args_is_help=True, help="Known answers run against every rung (the "
                            "reference included).")
app.add_typer(sentinels_app, name="sentinels")
