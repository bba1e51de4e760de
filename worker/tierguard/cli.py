"""The ``tierguard`` command."""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from tierguard.errors import TierguardError

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
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

JsonOpt = typer.Option(False, "--json", help="Print one JSON object as the last line.")


def _env():
    from tierguard.config import get_settings
    from tierguard.db import check_schema, make_engine
    from tierguard.policy import load_policy

    settings = get_settings()
    policy = load_policy(settings.policy)
    engine = make_engine(settings.database_url)
    check_schema(engine)
    return settings, policy, engine


def _redis(settings):
    import redis

    return redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)


def _emit(obj: Any) -> None:
    print(json.dumps(obj, default=str), flush=True)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the tables (SQLite or PostgreSQL) to the latest revision."""
    from tierguard.config import get_settings
    from tierguard.db import current_revision, make_engine, upgrade

    settings = get_settings()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    console.print(f"database at revision [bold]{current_revision(engine)}[/]")


@app.command()
def status(as_json: bool = JsonOpt) -> None:
    """Per category: route, samples, agreement, pin, last change."""
    from tierguard.status import category_status

    _, policy, engine = _env()
    cats = category_status(engine, policy)
    if as_json:
        _emit({"categories": cats})
        return
    table = Table(title="tierguard status")
    for col in ("category", "route", "samples", "errors", "agreement", "threshold",
                "engine", "state", "last change"):
        table.add_column(col)
    for name, c in cats.items():
        agreement = c["agreement"]
        style = "red" if agreement is not None and agreement < c["threshold"] else ""
        last = c["last_change"]
        state = []
        if c["pinned"]:
            until = f" until {c['pinned_until'][:16]}" if c["pinned_until"] else ""
            state.append(f"[yellow]pinned{until}: {c['pin_reason']}[/]")
        if c["eligible"]:
            state.append("[green]eligible for promotion[/]")
        if c["mode"] == "observe":
            state.append(f"observe mode ({c['would_flip']} would-flips)")
        if c["self_agreement"] is not None:
            state.append(f"self-agreement {_pct(c['self_agreement'])}")
        state += [f"[red]{w}[/]" for w in c["warnings"]]
        ft = c["flip_threshold"]
        engine = (f"{c['watching']}: {c['statistic']:.0%} of h={ft['h_nats']:.2f}"
                  if c["watching"] != "—" else "—")
        table.add_row(name, c["route"], str(c["samples"]), str(c["errors"]),
                      f"[{style}]{_pct(agreement)}[/]" if style else _pct(agreement),
                      _pct(c["threshold"]), engine, "\n".join(state),
                      f"{last['at'][:19]} {last['from']} → {last['to']}" if last else "")
    console.print(table)
    any_cat = next(iter(cats.values()), None)
    if any_cat:
        ft = any_cat["flip_threshold"]
        console.print(f"[dim]flip threshold h is derived per category: ≤ {ft['false_flip_rate']:.2%} "
                      f"false flips per {ft['per_samples']:,} samples at the healthy level "
                      f"({ft['healthy']:.0%} for the first category)[/]")


@app.command()
def history(category: str | None = typer.Argument(None), limit: int = 100,
            as_json: bool = JsonOpt) -> None:
    """Route changes, newest first: automatic flips and operator actions."""
    from tierguard.status import history as route_history

    _, _, engine = _env()
    rows = route_history(engine, category, limit)
    if as_json:
        _emit({"changes": rows})
        return
    table = Table(title="route changes")
    for col in ("at", "category", "from", "to", "actor", "reason"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["at"][:19], r["category"], r["from"], r["to"], r["actor"], r["reason"])
    console.print(table)


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:
        return "operator"


@app.command()
def pin(category: str, model: str = typer.Argument(..., help="a model name, or candidate/reference"),
        reason: str = typer.Option("", help="why, for the audit trail"),
        actor: str | None = typer.Option(None, help="who (default: the login name)"),
        as_json: bool = JsonOpt) -> None:
    """Route CATEGORY to MODEL; the automatic logic leaves it alone until unpinned."""
    from tierguard.actions import pin as do_pin

    settings, policy, engine = _env()
    change = do_pin(engine, _redis(settings), policy, category, model, reason=reason,
                    actor=_actor(actor))
    if as_json:
        _emit({"category": category, "route": change.to_model, "pinned": True})
    else:
        console.print(f"{category}: pinned to [bold]{change.to_model}[/] (was {change.from_model})")


def _parse_until(value: str | None):
    import datetime as dt

    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint="--until") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@app.command()
def promote(category: str, reason: str = typer.Option(""), actor: str | None = None,
            force: bool = typer.Option(False, help="promote even if not eligible"),
            as_json: bool = JsonOpt) -> None:
    """Serve CATEGORY by its candidate again (it must be eligible, see status)."""
    from tierguard.actions import promote as do_promote

    settings, policy, engine = _env()
    change = do_promote(engine, _redis(settings), policy, category, reason=reason,
                        actor=_actor(actor), force=force)
    if as_json:
        _emit({"category": category, "route": change.to_model, "pinned": False})
    else:
        console.print(f"{category}: promoted to [bold]{change.to_model}[/] (was {change.from_model})")


@app.command()
def replay(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON lines"),
           policy_file: Path | None = typer.Option(None, "--policy", help="policy to try"),
           db: str = typer.Option("sqlite://", help="database URL (default: in memory)"),
           as_json: bool = JsonOpt) -> None:
    """Backtest a policy: recorded comparisons through the real comparators, engine and storage."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from tierguard.config import get_settings
    from tierguard.db import make_engine, upgrade
    from tierguard.policy import load_policy
    from tierguard.replay import replay as run_replay

    path = policy_file or get_settings().policy
    if policy_file is not None and not policy_file.exists():
        raise typer.BadParameter(f"{policy_file} does not exist", param_hint="--policy")
    pol = load_policy(path)
    engine = make_engine(db)
    upgrade(engine)
    lines = file.read_text().splitlines()
    with Progress(TextColumn("replay"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                  TimeRemainingColumn(), console=err_console,
                  disable=not err_console.is_terminal) as bar:
        task = bar.add_task("replay", total=len(lines))
        result = run_replay(lines, pol, engine, progress=lambda i: bar.update(task, completed=i))
        bar.update(task, completed=len(lines))
    if as_json:
        _emit(result)
        return
    for c in result["changes"]:
        console.print(f"line {c['index']}: [bold]{c['category']}[/] {c['from']} → {c['to']} "
                      f"({c['rule']}): {c['reason']}")
    for c in result["would_change"]:
        console.print(f"line {c['index']}: {c['category']} would change {c['from']} → {c['to']} "
                      "(observe mode)")
    table = Table(title=f"replay of {file.name}")
    for col in ("category", "samples", "agreement", "final route"):
        table.add_column(col)
    for name, c in result["categories"].items():
        table.add_row(name, f"{c['samples']:,}", _pct(c["agreement"]), c["route"])
    console.print(table)


@app.command()
def unpin(category: str, reason: str = typer.Option(""), actor: str | None = None,
          as_json: bool = JsonOpt) -> None:
    """Return CATEGORY to the automatic logic (its route stays until the logic moves it)."""
    from tierguard.actions import unpin as do_unpin

    settings, policy, engine = _env()
    change = do_unpin(engine, _redis(settings), policy, category, reason=reason,
                      actor=_actor(actor))
    if as_json:
        _emit({"category": category, "route": change.to_model, "pinned": False})
    else:
        console.print(f"{category}: unpinned, served by [bold]{change.to_model}[/]")


@app.command()
def worker(concurrency: int | None = typer.Option(None, "--concurrency", "-c",
                                                    help="shadow calls in flight per process"),
           pool: str = typer.Option("threads", help="threads (default) or another Celery pool"),
           loglevel: str = "INFO") -> None:
    """Run a Celery worker that executes shadow jobs (threads pool, at-least-once)."""
    from tierguard.celery_app import make_celery
    from tierguard.routes import ensure_categories, sync_to_redis

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    settings, policy, engine = _env()
    ensure_categories(engine, policy)
    r = _redis(settings)

    def sync_routes() -> None:  # repairs Redis after a missed post-commit update
        stop = threading.Event()
        while not stop.wait(5.0):
            try:
                sync_to_redis(engine, r)
            except Exception as err:
                logging.getLogger("tierguard.routes").warning("route sync failed: %s", err)

    threading.Thread(target=sync_routes, name="tierguard-route-sync", daemon=True).start()
    celery = make_celery(settings)
    n = concurrency or settings.worker_concurrency
    celery.worker_main(["worker", "-P", pool, "-c", str(n), "-Q", settings.queue,
                        "-l", loglevel, "-n", f"tierguard-{os.getpid()}@%h",
                        "--without-gossip", "--without-mingle"])


@app.command()
def demo(minutes: float = typer.Option(1.0, help="how long traffic runs"),
         seconds: float | None = typer.Option(None, hidden=True),
         rate: float = typer.Option(60.0, help="production calls per second"),
         sample_rate: float = typer.Option(0.5, help="share of calls shadowed"),
         folder: Path = typer.Option(Path("tierguard-demo"), help="where the database and logs go"),
         as_json: bool = JsonOpt) -> None:
    """Run the whole loop locally (SQLite, private Redis, worker, simulated models) and show a flip."""
    from tierguard.demo import run

    result = run(seconds=seconds or minutes * 60, rate=rate, sample_rate=sample_rate, folder=folder,
                 as_json=as_json, console=err_console if as_json else console)
    if as_json:
        _emit(result)


@app.command()
def report(since: str = typer.Option("24h", help="period: 90m, 24h, 7d…"),
           out: Path = typer.Option(Path("report.png"), help="PNG to write"),
           as_json: bool = JsonOpt) -> None:
    """A PNG: agreement over time with thresholds and flips, current routes, spend vs savings."""
    from tierguard.report import gather, parse_since, render, summary

    _, _, engine = _env()
    data = gather(engine, parse_since(since))
    render(data, out)
    result = summary(data, out)
    if as_json:
        _emit(result)
    else:
        console.print(f"report written to [bold]{result['out']}[/] ({result['changes']} route "
                      f"change(s); shadow spend ${result['shadow_spend_usd']:.4f}, estimated "
                      f"savings ${result['savings_usd_est']:.4f})")


@bench_app.command("engine")
def bench_engine(runs: int = typer.Option(2000, min=1000, help="Monte Carlo runs per figure"),
                 as_json: bool = JsonOpt) -> None:
    """Decision engine vs the naive window rule and an oracle CUSUM (false flips, detection delay)."""
    from tierguard.bench import engine_figures

    with console.status("simulating…", spinner="dots") if not as_json else _nothing():
        fig = engine_figures(runs)
    if as_json:
        _emit(fig)
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


@bench_app.command("replay")
def bench_replay(samples: int = typer.Option(200_000, min=1000), as_json: bool = JsonOpt) -> None:
    """Pre-judged samples per second through replay (comparators, engine, in-memory storage)."""
    from tierguard.bench import replay_figures

    fig = replay_figures(samples)
    if as_json:
        _emit(fig)
        return
    console.print(f"replay: {fig['samples']:,} samples in {fig['seconds']} s = "
                  f"[bold]{fig['samples_per_s']:,}/s[/] (goal ≥ {fig['goal_samples_per_s']:,}/s)")


@bench_app.command("hotpath")
def bench_hotpath(calls: int = typer.Option(5000, min=5000, help="calls each, interleaved"),
                  as_json: bool = JsonOpt) -> None:
    """The wrapper vs the bare SDK call on a local zero-latency Messages API (and with Redis down)."""
    from tierguard.bench import hotpath_figures

    with console.status("measuring…") if not as_json else _nothing():
        fig = hotpath_figures(calls)
    if as_json:
        _emit(fig)
        return
    g = fig["goals"]
    table = Table(title=f"hot path: {calls:,} calls each, sample rate {fig['sample_rate']:.0%}")
    for col in ("figure", "measured", "goal"):
        table.add_column(col)
    table.add_row("median ratio wrapper / bare SDK", f"{fig['median_ratio']:.4f}", f"≤ {g['median_ratio']}")
    table.add_row("added by tierguard, p50 / p99", f"{fig['p50_added_us']} / {fig['p99_added_us']} µs",
                  f"p99 ≤ {g['p99_added_us']} µs")
    table.add_row("added with Redis down, p50 / p99",
                  f"{fig['redis_down_p50_added_us']} / {fig['redis_down_p99_added_us']} µs",
                  f"p99 ≤ {g['redis_down_p99_added_us']} µs")
    table.add_row("bare SDK call, median", f"{fig['bare_median_us']} µs", "")
    console.print(table)


@bench_app.command("pipeline")
def bench_pipeline(seconds: float = typer.Option(20.0, min=5.0), rate: float = 700.0,
                   workers: int = typer.Option(1, min=1), concurrency: int = 100,
                   as_json: bool = JsonOpt) -> None:
    """End to end on this host: enqueue → 1 s shadow call → compare → PostgreSQL row."""
    from tierguard.bench import pipeline_figures

    with console.status("running the pipeline…") if not as_json else _nothing():
        fig = pipeline_figures(seconds=seconds, rate=rate, workers=workers, concurrency=concurrency)
    if as_json:
        _emit(fig)
        return
    console.print(f"{workers} worker process(es): [bold]{fig['comparisons_per_s']}/s[/] comparisons "
                  f"(goal ≥ {fig['goal_comparisons_per_s']}/s), offered {rate:g}/s; in flight max "
                  f"{fig['in_flight_max']}; queue delay p95 {fig['p95_queue_delay_s']} s; shadow call "
                  f"p50/p95 {fig['shadow_call_p50_ms']}/{fig['shadow_call_p95_ms']} ms; "
                  f"{fig['recorded']}/{fig['sent']} recorded, {fig['errors']} errors")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@app.command()
def ping(timeout: float = typer.Option(5.0, help="seconds to wait for replies"),
         local: bool = typer.Option(True, help="only count workers on this host (k8s probes)"),
         as_json: bool = JsonOpt) -> None:
    """Ask the workers over the broker whether they are alive; exit 1 if none answers."""
    import socket

    from tierguard.celery_app import make_celery
    from tierguard.config import get_settings

    replies = make_celery(get_settings()).control.ping(timeout=timeout) or []
    names = [name for reply in replies for name in reply]
    if local:
        names = [n for n in names if n.endswith("@" + socket.gethostname())]
    if as_json:
        _emit({"workers": names})
    else:
        console.print("\n".join(names) or "[red]no worker answered[/]")
    if not names:
        raise typer.Exit(1)


@app.command()
def beat(loglevel: str = "INFO") -> None:
    """Run Celery beat (exactly one per deployment): alert redelivery and the periodic checks."""
    import tempfile

    from tierguard.celery_app import make_celery

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings, _, _ = _env()
    schedule = Path(tempfile.gettempdir()) / f"tierguard-beat-{os.getpid()}"
    make_celery(settings).start(["beat", "-l", loglevel, "-s", str(schedule)])


@alerts_app.command("test")
def alerts_test(channel: str | None = typer.Option(None, help="a channel name or 0-based index"),
                as_json: bool = JsonOpt) -> None:
    """Send a test alert to every channel (or one) now, and say what each answered."""
    from tierguard.channels import DeliveryError, send
    from tierguard.config import get_settings
    from tierguard.db import Event, utcnow
    from tierguard.events import dashboard_link
    from tierguard.policy import load_policy

    policy = load_policy(get_settings().policy)
    channels = policy.alerts.channels
    if channel is not None:
        channels = [c for i, c in enumerate(channels) if channel in (c.name, str(i))]
        if not channels:
            names = ", ".join(c.name or "" for c in policy.alerts.channels) or "none configured"
            raise TierguardError(f"no alert channel {channel!r} (channels: {names})")
    if not channels:
        raise TierguardError("no alert channels in the policy (alerts: [...])")
    event = Event(key=f"test:{utcnow().isoformat()}", kind="test", category=None, severity="info",
                  summary="tierguard test alert: this channel is wired correctly",
                  details={"numbers": {}, "did": "Nothing; this is a test.",
                           "actions": ["none needed"], "dashboard": dashboard_link(policy, None)},
                  created_at=utcnow())
    results = {}
    for ch in channels:
        try:
            send(ch, event)
            results[ch.name] = "delivered"
        except DeliveryError as err:
            results[ch.name] = f"failed: {err}"
    if as_json:
        _emit({"channels": results})
    else:
        for name, result in results.items():
            colour = "green" if result == "delivered" else "red"
            console.print(f"{name}: [{colour}]{result}[/]")
    if any(r != "delivered" for r in results.values()):
        raise typer.Exit(1)


@alerts_app.command("list")
def alerts_list(limit: int = 50, as_json: bool = JsonOpt) -> None:
    """Recent events and the state of their alerts per channel."""
    import sqlalchemy as sa

    from tierguard.db import Alert, Event, session

    _, _, engine = _env()
    with session(engine) as s:
        events = s.execute(sa.select(Event).order_by(Event.id.desc()).limit(limit)).scalars().all()
        alerts = s.execute(sa.select(Alert).where(Alert.event_id.in_([e.id for e in events]))).scalars().all()
    by_event: dict[int, list] = {}
    for a in alerts:
        by_event.setdefault(a.event_id, []).append(a)
    rows = [{"id": e.id, "kind": e.kind, "category": e.category, "severity": e.severity,
             "summary": e.summary, "at": e.created_at.isoformat(),
             "alerts": {a.channel: {"status": a.status, "attempts": a.attempts,
                                    "last_error": a.last_error} for a in by_event.get(e.id, [])}}
            for e in events]
    if as_json:
        _emit({"events": rows})
        return
    table = Table(title="events and alerts")
    for col in ("at", "event", "category", "summary", "alerts"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["at"][:19], f"{r['kind']} ({r['severity']})", r["category"] or "",
                      r["summary"], "\n".join(f"{c}: {a['status']} ×{a['attempts']}"
                                               for c, a in r["alerts"].items()))
    console.print(table)


@grafana_app.command("push")
def grafana_push(dashboard: Path | None = typer.Option(None, help="dashboard JSON"),
                 as_json: bool = JsonOpt) -> None:
    """Create the tierguard folder and upsert the dashboard (GRAFANA_URL, GRAFANA_TOKEN)."""
    from tierguard.grafana import push

    result = push(path=dashboard)
    if as_json:
        _emit(result)
    else:
        console.print(f"dashboard {result['uid']} pushed (version {result['version']}): {result['url']}")


@sim_app.command("serve")
def simulate_serve(port: int = 8765, host: str = "127.0.0.1",
                   scenario: Path | None = typer.Option(None, help="scenario YAML")) -> None:
    """Serve simulated models on HOST:PORT (POST /v1/messages, streaming included)."""
    from tierguard.simulate import Scenario, SimServer

    sc = Scenario.load(scenario) if scenario else Scenario()
    server = SimServer(sc, host, port)
    console.print(f"simulated Messages API on http://{host}:{server.server_address[1]} "
                  f"(set ANTHROPIC_BASE_URL to it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()


def main() -> None:
    try:
        app()
    except TierguardError as err:
        err_console.print(f"[red]error:[/] {err}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
