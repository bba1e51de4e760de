"""``tierguard bench``: figures measured in one run."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import typer
from rich.table import Table

from tierguard.cli.apps import bench_app
from tierguard.cli.common import JsonOpt, console, emit, nothing


@bench_app.callback()
def _bench() -> None:
    """Benchmarks: figures measured in one run."""
    # A benchmark stopped by SIGTERM (a timeout, an orchestrator) leaves through its ``finally``
    # blocks, which stop the workers, simulators and database servers it started.
    if threading.current_thread() is threading.main_thread():  # (only there can it be set)
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: Any) -> None:
    sys.exit(128 + signum)


@bench_app.command("engine")
def bench_engine(runs: int = typer.Option(2000, min=1000, help="Monte Carlo runs per figure"),
                 as_json: bool = JsonOpt) -> None:
    """Decision engine vs the naive window rule and an oracle CUSUM (false flips, detection delay)."""
    from tierguard.bench.engine import engine_figures

    with console.status("simulating…", spinner="dots") if not as_json else nothing():
        fig = engine_figures(runs)
    if as_json:
        emit(fig)
        return
    table = Table(title=f"decision engine, {runs:,} Monte Carlo runs per figure")
    for col in ("scenario", "goal", "tierguard", "naive window-100", "oracle CUSUM"):
        table.add_column(col)
    for level, goal in ((0.93, "≤ 1 %"), (0.97, "0")):
        f = fig[f"false_flips_{level}"]
        table.add_row(f"false flips at {level}, per 10,000 samples", goal, f"{f['engine']:.1%}",
                      f"{f['window100']:.1%}", "(tuned to 1 %)")
    for post, goal in ((0.85, "≤ 300 / ≤ 550"), (0.88, "≤ 600 / ≤ 1,100")):
        f = fig[f"detect_0.97_to_{post}"]
        cell = {k: f"{v['median']:.0f} / {v['p95']:.0f}" for k, v in f.items()}
        early = f["window100"]["flipped_before_change"]
        table.add_row(f"0.97 → {post} detection, median / p95 samples", goal, cell["engine"],
                      f"{cell['window100']} ({early} flipped before the drop)", cell["oracle"])
    console.print(table)
    d = fig["design"]
    console.print(f"design: k={d['k']} m={d['m']} h={d['h']} (healthy {d['healthy']}, tuned to "
                  f"catch {d['detect']:.2f}, false-flip budget {d['false_flip_rate']:.2%})")


@bench_app.command("promotion")
def bench_promotion(runs: int = typer.Option(200, min=50, help="seeded streams per level"),
                    seed: int = typer.Option(27), as_json: bool = JsonOpt) -> None:
    """Promotion under continuous looking: false promotions at 0.93/0.94, samples to promote."""
    from tierguard.bench.promotion import promotion_figures

    with console.status("feeding seeded streams to the engine…") if not as_json else nothing():
        fig = promotion_figures(runs, seed)
    if as_json:
        emit(fig)
        return
    table = Table(title=f"promotion, {runs} streams per level of up to {fig['samples']:,} samples, "
                        f"promote_threshold {fig['promote_threshold']}, error rate "
                        f"{fig['promote_error_rate']}")
    for col in ("true agreement", "goal", "tierguard (betting test)", "Wilson bound, looked at always"):
        table.add_column(col)
    old = fig["wilson_peeking"]
    for level in ("0.93", "0.94"):
        table.add_row(f"{level}: promoted (false)", "≤ 1 %", f"{fig['false_promotion_rate'][level]:.1%}",
                      f"{old['false_promotion_rate'][level]:.1%}")
    for level, goal in (("0.98", "median < 600"), ("0.965", "≥ 90 % promoted")):
        new, was = fig["samples_to_promote"][level], old["samples_to_promote"][level]
        table.add_row(f"{level}: promoted, median / p95 samples", goal,
                      f"{new['promoted']:.0%}, {new['median']:.0f} / {new['p95']:.0f}",
                      f"{was['promoted']:.0%}, {was['median']:.0f} / {was['p95']:.0f}")
    console.print(table)
    console.print("goals met" if fig["goals_met"] else "[red]goals missed[/]")


@bench_app.command("safety-net")
def bench_safety(seed: int = typer.Option(28), as_json: bool = JsonOpt) -> None:
    """A simulated month of the fleet with broken cheap answers: answer checks and escalation off/on."""
    from tierguard.bench.safety import safety_figures

    with console.status("simulating a month, minute by minute…") if not as_json else nothing():
        fig = safety_figures(seed)
    if as_json:
        emit(fig)
        return
    table = Table(title=f"safety net: {fig['categories']} categories, {fig['days']} days")
    for col in ("set-up", "bad answers to users", "production USD", "escalated share",
                "detection median / max min", "demoted before a step"):
        table.add_column(col)
    for name, s in fig["setups"].items():
        d = s["detection_minutes"]
        table.add_row(name, f"{s['bad_answers_to_users']:,}", f"{s['production_usd']:,.0f}",
                      f"{s['escalated_share']:.2%}", f"{d['median']:g} / {d['max']:g}",
                      str(s["demoted_before_a_step"]))
    console.print(table)
    console.print(f"on costs {fig['cost_vs_off']:.3f} × off (goal ≤ {fig['goals']['cost_vs_off']}); goals "
                  + ("met" if fig["goals_met"] else "[red]missed[/]"))


@bench_app.command("replay")
def bench_replay(samples: int = typer.Option(1_000_000, min=10_000), as_json: bool = JsonOpt) -> None:
    """A month of outcomes backtested end to end: `replay FILE` and `replay --from-db` wall times."""
    from tierguard.bench.replay import replay_figures

    with console.status("writing outcomes and replaying…") if not as_json else nothing():
        fig = replay_figures(samples)
    if as_json:
        emit(fig)
        return
    console.print(f"replay of {fig['samples']:,} outcomes, start-up included (goal ≥ "
                  f"{fig['goal_samples_per_s']:,}/s): file [bold]{fig['file_samples_per_s']:,}/s[/] "
                  f"({fig['file_seconds']} s), database [bold]{fig['db_samples_per_s']:,}/s[/] "
                  f"({fig['db_seconds']} s); {fig['changes']} change(s), the same from both: "
                  f"{fig['same_changes']}")


@bench_app.command("hotpath")
def bench_hotpath(calls: int = typer.Option(5000, min=5000, help="calls each, interleaved"),
                  runs: int = typer.Option(3, min=1, help="runs: each figure's median and spread"),
                  as_json: bool = JsonOpt) -> None:
    """The wrapper vs the bare SDK call on a local zero-latency Messages API (and with Redis down)."""
    from tierguard.bench.hotpath import hotpath_figures

    with console.status("measuring…") if not as_json else nothing():
        fig = hotpath_figures(calls, runs=runs)
    if as_json:
        emit(fig)
        return
    g, lo_hi = fig["goals"], fig["spread"]

    def shown(key: str, spreads: dict = lo_hi, figures: dict = fig, unit: str = " µs") -> str:
        low, high = spreads[key]
        return f"{figures[key]}{unit} ({low}–{high})"

    table = Table(title=f"hot path: {calls:,} calls each, sample rate {fig['sample_rate']:.0%}, "
                        f"median of {runs} run(s) (min–max)")
    for col in ("figure", "measured", "goal"):
        table.add_column(col)
    table.add_row("median ratio wrapper / bare SDK", shown("median_ratio", unit=""), f"≤ {g['median_ratio']}")
    table.add_row("added by tierguard, p50", shown("p50_added_us"), f"≤ {g['p50_added_us']} µs")
    table.add_row("added by tierguard, p99", shown("p99_added_us"), f"≤ {g['p99_added_us']} µs")
    table.add_row("added with Redis down, p50 / p99", f"{shown('redis_down_p50_added_us')} / "
                  f"{shown('redis_down_p99_added_us')}", f"p99 ≤ {g['redis_down_p99_added_us']} µs")
    table.add_row("added to the process's CPU per call (every thread)", shown("cpu_added_us"), "")
    table.add_row("bare SDK call, median", shown("bare_median_us"), "")
    c = fig["checks"]
    table.add_row(f"answer checks on ({c['answer_bytes']:,} B JSON + schema), added p50 / p99",
                  f"{shown('p50_added_us', c['spread'], c)} / {shown('p99_added_us', c['spread'], c)}",
                  f"p50 ≤ {g['checks_p50_added_us']} µs")
    console.print(table)


@bench_app.command("pipeline")
def bench_pipeline(seconds: float = typer.Option(20.0, min=5.0), rate: float = 700.0,
                   workers: int = typer.Option(1, min=1), concurrency: int = 100,
                   runs: int = typer.Option(3, min=1, help="runs, each between two halves of the floor; "
                                                          "medians and min–max reported"),
                   db_outage: float = typer.Option(0.0, min=0.0, help=(
                       "the fault case instead: jobs sent while PostgreSQL is stopped this many "
                       "seconds; shadow calls per job (goal ≤ 1.05)")),
                   as_json: bool = JsonOpt) -> None:
    """End to end on this host: enqueue → 1 s shadow call → compare → PostgreSQL row; the worker's
    CPU per comparison against a bare SDK loop's per call."""
    from tierguard.bench.pipeline import pipeline_figures

    if db_outage:
        return _outage(db_outage, as_json)

    with console.status("running the pipeline…") if not as_json else nothing():
        fig = pipeline_figures(seconds=seconds, rate=rate, workers=workers, concurrency=concurrency,
                               runs=runs)
    if as_json:
        emit(fig)
        return
    spread = fig["spread"]
    console.print(f"{workers} worker process(es): [bold]{fig['comparisons_per_s']}/s[/] comparisons "
                  f"(goal ≥ {fig['goal_comparisons_per_s']}/s), offered {rate:g}/s; in flight max "
                  f"{fig['in_flight_max']}; queue delay p95 {fig['p95_queue_delay_s']} s; shadow call "
                  f"p50/p95 {fig['shadow_call_p50_ms']}/{fig['shadow_call_p95_ms']} ms; "
                  f"{fig['recorded']}/{fig['sent']} recorded, {fig['errors']} errors")
    console.print(f"CPU per comparison {fig['worker_cpu_ms_per_comparison']} ms against the bare SDK "
                  f"loop's {fig['floor_cpu_ms_per_call']} ms: [bold]{fig['cpu_ratio']}×[/] the floor "
                  f"(median of {runs}; {spread['cpu_ratio'][0]}–{spread['cpu_ratio'][1]}; goal ≤ "
                  f"{fig['goal_cpu_ratio']}); {fig['cpu_ratio_tuned_gc_floor']}× the same loop on uvloop "
                  f"with the worker's garbage collector settings "
                  f"({fig['floor_tuned_gc_cpu_ms_per_call']} ms)")


@bench_app.command("gateway")
def bench_gateway(requests: int = typer.Option(3000, min=20, help="interleaved requests each way"),
                  seconds: float = typer.Option(4.0, min=0.2, help="seconds per load level"),
                  max_connections: int = typer.Option(64, min=1, help="the load's last level (1, 2, 4, …)"),
                  contenders: str = typer.Option("nginx,litellm", help="proxies beside tierguard's gateway "
                                                 "(comma-separated; empty: none)"),
                  as_json: bool = JsonOpt) -> None:
    """The gateway beside a direct call, nginx and LiteLLM's proxy: added latency, requests/s, CPU."""
    from tierguard.bench.gateway import gateway_figures

    levels = tuple(n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= max_connections) or (1,)
    names = tuple(n.strip() for n in contenders.split(",") if n.strip())
    with console.status("measuring…") if not as_json else nothing():
        fig = gateway_figures(requests, levels, seconds, contenders=names)
    if as_json:
        emit(fig)
        return
    _gateway_tables(fig, requests)


def _gateway_tables(fig: dict, requests: int) -> None:
    g, met = fig["goals"], fig["goals_met"]
    table = Table(title=f"gateway: {requests:,} requests each way, interleaved")
    for col in ("contender", "p50 ms", "added p50 ms", "added p99 ms", "added first event ms", "req/s",
                "CPU ms/request"):
        table.add_column(col)
    for name, c in fig["contenders"].items():
        if "unavailable" in c:
            table.add_row(name, f"[dim]unavailable: {c['unavailable']}[/]", "", "", "", "", "")
        else:
            table.add_row(name, f"{c['p50_ms']}", f"{c['added_p50_ms']}", f"{c['added_p99_ms']}",
                          f"{c['ttfe_added_p50_ms']}", f"{c['rps']:,}", f"{c['cpu_ms_per_request']}")
    console.print(table)
    goals = Table(title="tierguard's goals")
    for col in ("goal", "target", "met"):
        goals.add_column(col)
    for key, target in g.items():
        goals.add_row(key, f"{target}", {True: "yes", False: "[red]no[/]", None: "[dim]not measured[/]"}[
            met.get(key)])
    console.print(goals)
    for level in fig["load"]:
        console.print(f"[dim]tierguard, {level['connections']} connections: {level['rps']:,} req/s, "
                      f"p50 {level['p50_ms']} ms, p99 {level['p99_ms']} ms[/]")


@bench_app.command("dashboards")
def bench_dashboards(rows: int = typer.Option(5_000_000, min=50_000, help="sample rows over 30 days"),
                     as_json: bool = JsonOpt) -> None:
    """Every dashboard query, 24 hours and 30 days, on a month of history (PostgreSQL)."""
    from tierguard.bench.dashboards import dashboard_figures

    with console.status("loading history and timing the panels…") if not as_json else nothing():
        fig = dashboard_figures(rows)
    if as_json:
        emit(fig)
        return
    table = Table(title=f"dashboard queries on {fig['rows']:,} samples (best of 3)")
    for col in ("panel", "range", "ms"):
        table.add_column(col)
    for q in fig["queries"]:
        table.add_row(q["panel"], q["range"], f"{q['ms']}")
    console.print(table)
    console.print(f"slowest {fig['max_ms']} ms ({fig['slowest']}; goal ≤ {fig['goal_ms']}); at "
                  f"{fig['rows_small']:,} rows that query took {fig['max_ms_small']} ms at most: growth "
                  f"{fig['growth_ratio']} (goal ≤ {fig['goal_growth_ratio']})")


@bench_app.command("watching")
def bench_watching(seed: int = 7, months: int = typer.Option(5, min=1, help="simulated months, pooled"),
                   as_json: bool = JsonOpt) -> None:
    """A simulated month for 20 categories: what watching costs and how fast drifts are caught."""
    from tierguard.bench.watching import watching_figures

    with console.status("simulating a month…") if not as_json else nothing():
        fig = watching_figures(seed, months)
    if as_json:
        emit(fig)
        return
    table = Table(title=f"{fig['months']} simulated months, {fig['categories']} categories, "
                        f"3 drifts each")
    for col in ("set-up", "watching / production spend", "detection median / max (h)", "detected",
                "false flips"):
        table.add_column(col)
    for name, s in fig["setups"].items():
        d = s["detection_hours"]
        table.add_row(name, f"{s['watching_share']:.1%}", f"{d['median']} / {d['max']}", s["detected"],
                      str(s["false_flips"]))
    console.print(table)
    console.print(f"adaptive_batch's median delay is {fig['adaptive_delay_ratio']}× fixed_sync's "
                  f"(goal ≤ {fig['goals']['delay_ratio']}); goal watching share ≤ "
                  f"{fig['goals']['watching_share']:.0%}")


@bench_app.command("headroom")
def bench_headroom(minutes: float = typer.Option(5.0, min=1, help="scaled minutes of traffic per run"),
                   time_scale: float = typer.Option(10.0, min=1, help="simulated minutes per real one"),
                   as_json: bool = JsonOpt) -> None:
    """Production's 429s with shadows off and on, against a rate-limited simulated Opus."""
    from tierguard.bench.headroom import headroom_figures

    with console.status("production alone, then with shadows…") if not as_json else nothing():
        fig = headroom_figures(minutes=minutes, time_scale=time_scale)
    if as_json:
        emit(fig)
        return
    table = Table(title=f"rate-limit headroom: Opus at {fig['requests_per_minute']} requests/min, "
                        f"production at {fig['production_share_target']:.0%}, {minutes:g} scaled minutes")
    for col in ("figure", "value", "goal"):
        table.add_column(col)
    table.add_row("production 429s, shadows off / on",
                  f"{fig['production_429_shadows_off']} / {fig['production_429_shadows_on']}", "on ≤ off")
    table.add_row("shadows sampled / recorded / skipped", f"{fig['shadow_sampled']} / "
                  f"{fig['shadow_recorded']} / {fig['shadow_skipped']}", "each exactly once")
    table.add_row("deferrals", str(fig["shadow_deferred"]), "")
    table.add_row("shadow share of the limit / room left by production",
                  f"{fig['shadow_share_of_limit']:.0%} / {fig['room_share']:.0%}", "≥ 0.8 × room")
    console.print(table)


@bench_app.command("ladder")
def bench_ladder(seed: int = typer.Option(11), as_json: bool = JsonOpt) -> None:
    """A simulated month of 30 categories: a Haiku/Sonnet/Opus ladder against two tiers."""
    from tierguard.bench.ladder import ladder_figures

    with console.status("simulating a month, three set-ups…") if not as_json else nothing():
        fig = ladder_figures(seed)
    if as_json:
        emit(fig)
        return
    table = Table(title=f"ladder vs two tiers: {fig['categories']} categories, {fig['days']} days, "
                        f"{fig['sample_rate']:.0%} shadowed")
    for col in ("set-up", "production USD (vs all-Opus)", "vs two_tier", "watching share",
                "detection median / max h", "false flips", "hours below threshold"):
        table.add_column(col)
    for name, s in fig["setups"].items():
        d = s["detection_hours"]
        table.add_row(name, f"{s['production_usd']:,.0f} ({s['vs_all_reference']:.0%})",
                      f"{s.get('cost_vs_two_tier', 1.0):.3f}", f"{s['watching_share']:.1%}",
                      f"{d['median']} / {d['max']}", str(s["false_flips"]),
                      f"{s['hours_below_threshold']:,.0f}")
    console.print(table)
    console.print(f"goals: ladders ≤ {fig['goals']['cost_vs_two_tier']} × two_tier's production cost, "
                  f"median detection ≤ {fig['goals']['delay_vs_two_tier']} × two_tier's, no more false "
                  "flips or hours below threshold")


@bench_app.command("upgrade")
def bench_upgrade(seed: int = typer.Option(29), days: int = typer.Option(90, min=2, help="simulated days"),
                  release_day: int = typer.Option(30, min=1, help="the day the new model is released"),
                  as_json: bool = JsonOpt) -> None:
    """A simulated quarter: a new cheap model released on day 30, switched to at once or challenged."""
    from tierguard.bench.upgrade import upgrade_figures

    if release_day >= days:
        raise typer.BadParameter(f"{release_day} is not before --days {days}", param_hint="--release-day")
    with console.status("simulating a quarter, hour by hour…") if not as_json else nothing():
        fig = upgrade_figures(seed, days, release_day)
    if as_json:
        emit(fig)
        return
    table = Table(title=f"a new model ({fig['new_model']}) on day {fig['release_day']}: {fig['categories']} "
                        f"categories, {fig['days']} days, it holds in {len(fig['holds_in'])}")
    for col in ("set-up", "production USD", "bad calls served", "days to first saving", "rollbacks",
                "watching USD", "on the new model", "flap-guard pins"):
        table.add_column(col)
    for name, s in fig["setups"].items():
        first = s["days_to_first_saving"]
        table.add_row(name, f"{s['production_usd']:,.0f}", f"{s['bad_calls_served']:,}",
                      "never" if first is None else f"{first:g}", str(s["rollbacks"]),
                      f"{s['watching_usd']:,.0f}", str(s["categories_on_new"]), str(s["flap_guard_pins"]))
    console.print(table)
    g, met = fig["goals"], fig["goals_met"]
    console.print(f"challenger: bad calls {fig['bad_calls_vs_manual']:g} × manual's (goal ≤ "
                  f"{g['bad_calls_vs_manual']}), spend {fig['cost_vs_manual']:.3f} × (goal ≤ "
                  f"{g['cost_vs_manual']}; {fig['cost_vs_manual_no_flap_guard']:.3f} × without the flap "
                  f"guard), first saving within {g['days_to_first_saving']} days: goals "
                  + ("met" if all(met.values()) else "[red]missed: " + ", ".join(k for k, v in met.items()
                                                                                   if not v) + "[/]"))


def _outage(seconds: float, as_json: bool) -> None:
    from tierguard.bench.outage import outage_figures

    with console.status(f"PostgreSQL down for {seconds:g} s…") if not as_json else nothing():
        fig = outage_figures(outage_s=seconds)
    if as_json:
        emit(fig)
        return
    console.print(f"a {seconds:g} s database outage: [bold]{fig['calls_per_job']}[/] shadow calls per "
                  f"job (goal ≤ {fig['goal_calls_per_job']}); {fig['recorded']}/{fig['jobs']} recorded")
