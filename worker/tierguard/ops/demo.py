"""``tierguard demo``: the whole loop on the embedded default, in one process tree.

SQLite in ``./tierguard-demo/``, a private Redis, a Celery worker and beat,
simulated models, a local webhook sink standing in for on-call, and
production-like traffic over three categories; the candidate for
``ticket-routing`` degrades partway and tierguard flips it back to the
reference and pages. Every process the demo starts is stopped at the end.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from sqlmodel import select

from tierguard.config import get_settings
from tierguard.errors import TierguardError
from tierguard.ops.status import category_status
from tierguard.policy import load_policy
from tierguard.sim.models import Scenario
from tierguard.sim.server import SimServer
from tierguard.sim.servers import RedisServer
from tierguard.store.db import make_engine, session, upgrade
from tierguard.store.tables import RouteChange, Sample

LABELS = ["POSITIVE", "NEGATIVE", "NEUTRAL"]
QUEUES = ["BILLING", "SHIPPING", "TECHNICAL", "ACCOUNT", "REFUND"]
CATEGORIES = {
    "sentiment": ("sentiment: classify the review as POSITIVE, NEGATIVE or NEUTRAL.",
                  ["The parcel arrived damaged.", "Great value, would buy again!",
                   "It works, I guess.", "Support never answered my emails."]),
    "invoice-extraction": ("invoice-extraction: return vendor, invoice_number, total, currency "
                           "and notes as JSON.",
                           ["Invoice INV-{n} from Acme GmbH, total 1,250.00 EUR",
                            "Rechnung {n}, Globex Ltd, 89.90 GBP"]),
    "ticket-routing": ("ticket-routing: answer with the queue: " + ", ".join(QUEUES) + ".",
                       ["I was charged twice this month.", "Where is my order #{n}?",
                        "The app crashes when I log in.", "Please close my account."]),
}


def scenario(drift_after: int) -> dict[str, Any]:
    return {"seed": 2026, "latency_ms": 20, "categories": {
        "sentiment": {"kind": "label", "labels": LABELS, "agreement": 0.985},
        "invoice-extraction": {"kind": "json", "agreement": 0.99},
        "ticket-routing": {"kind": "label", "labels": QUEUES, "agreement": 0.98,
                           "drift": {"after": drift_after, "agreement": 0.70}}}}


class _Sink(BaseHTTPRequestHandler):
    """The on-call stand-in: a webhook receiver that keeps what it is sent."""

    received: list[dict[str, Any]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            self.received.append(json.loads(body))
        except ValueError:
            pass
        self.send_response(204)
        self.end_headers()


def policy(sample_rate: float, sink_url: str) -> dict[str, Any]:
    return {"models": {"candidate": "claude-haiku-4-5", "reference": "claude-opus-4-7"},
            "alerts": {"channels": [{"type": "webhook", "name": "on-call", "url": sink_url}]},
            "defaults": {"sample_rate": sample_rate, "threshold": 0.90, "min_samples": 50},
            "categories": {
                "sentiment": {"comparator": {"type": "label", "labels": LABELS}},
                "invoice-extraction": {"comparator": {"type": "json", "ignore_keys": ["notes"],
                                                      "abs_tol": 0.01}},
                "ticket-routing": {"comparator": {"type": "label", "labels": QUEUES}}}}


def _bar(value: float | None, threshold: float, width: int = 20) -> str:
    if value is None:
        return "[dim]waiting for samples[/]"
    filled = round(value * width)
    colour = "green" if value >= threshold else "red"
    mark = round(threshold * width)
    cells = ["█" if i < filled else "·" for i in range(width)]
    cells[min(mark, width - 1)] = "|"
    return f"[{colour}]{''.join(cells)} {value:.1%}[/]"


def render(cats: dict[str, dict], changes: list[RouteChange], elapsed: float, calls: int,
           alerts: list[dict[str, Any]]) -> Group:
    table = Table(title=f"tierguard demo — {elapsed:4.0f}s, {calls} production calls",
                  caption="| marks the 90% threshold; agreement ≈ last 200 comparisons; "
                          "CUSUM = evidence of a drop, 100% flips")
    for col in ("category", "served by", "samples", "agreement vs threshold", "CUSUM", "flip"):
        table.add_column(col)
    flips = {c.category: c for c in changes}
    for name, c in cats.items():
        flip = flips.get(name)
        table.add_row(name, c["route"], str(c["samples"]), _bar(c["agreement"], c["threshold"]),
                      f"{c['statistic']:.0%}" if c["watching"].startswith("candidate") else "—",
                      f"[bold red]→ {flip.to_model}[/] ({flip.agreement:.1%} over {flip.samples})"
                      if flip else "")
    lines = [Text.assemble(("alert → on-call ", "bold red"), f"({a['severity']}) {a['summary']}")
             for a in alerts[-3:]] or [Text("no alert sent yet", style="dim")]
    return Group(table, *lines)


def run(seconds: float = 60.0, rate: float = 60.0, sample_rate: float = 0.5,
        folder: Path = Path("tierguard-demo"), as_json: bool = False,
        console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    folder.mkdir(parents=True, exist_ok=True)
    db_path = folder / "tierguard.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    drift_after = int(rate * seconds / 3 * 0.4)  # ticket-routing degrades 40% into the run
    live_view = console.is_terminal and not as_json
    redis = sim = worker = beat = sink = None
    _Sink.received = []
    started = time.monotonic()
    try:
        sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
        threading.Thread(target=sink.serve_forever, daemon=True).start()
        policy_path = folder / "tierguard.yaml"
        policy_path.write_text(yaml.safe_dump(
            policy(sample_rate, f"http://127.0.0.1:{sink.server_address[1]}/hook"), sort_keys=False))
        redis = RedisServer().start()
        sim = SimServer(Scenario.from_dict(scenario(drift_after))).start_background()
        env = {"TIERGUARD_DATABASE_URL": f"sqlite:///{db_path.resolve()}",
               "TIERGUARD_REDIS_URL": redis.url, "TIERGUARD_POLICY": str(policy_path.resolve()),
               "TIERGUARD_ROUTE_TTL": "0.5", "ANTHROPIC_BASE_URL": sim.base_url,
               "ANTHROPIC_API_KEY": os.environ.get("TIERGUARD_DEMO_KEY", "sk-demo-not-a-real-key")}
        os.environ.update(env)
        settings = get_settings()
        engine = make_engine(settings.database_url)
        upgrade(engine)
        log = open(folder / "worker.log", "w")
        worker = subprocess.Popen([sys.executable, "-m", "tierguard", "worker", "-c", "16"],
                                  env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        beat = subprocess.Popen([sys.executable, "-m", "tierguard", "beat"],
                                env={**os.environ, **env}, stdout=open(folder / "beat.log", "w"),
                                stderr=subprocess.STDOUT)
        from tierguard.app.client import ShadowedAnthropic

        client = ShadowedAnthropic(anthropic.Anthropic(max_retries=2), settings=settings)
        pol = load_policy(policy_path)
        calls = _traffic(client, rate, seconds, console, live_view, engine, pol)
        client.tierguard_flush(10)
        _drain(engine, client.tierguard_stats().get("published", 0), timeout=30)
        _wait_for_alerts(engine, timeout=15)
        client.tierguard_close()
        result = summary(engine, pol)
        result["production_calls"] = calls
        result["alerts"] = [{"event": a["event"], "severity": a["severity"], "summary": a["summary"]}
                            for a in _Sink.received]
        report = folder / "report.png"
        try:
            from tierguard.ops.report import gather
            from tierguard.ops.report import render as render_report

            render_report(gather(engine, dt.timedelta(seconds=time.monotonic() - started + 60)),
                          report)
            result["report"] = str(report.resolve())
        except TierguardError as err:  # matplotlib missing: the demo still ends well
            console.print(f"[yellow]no report: {err}[/]")
        result["database"] = str(db_path.resolve())
        result["processes"] = {"worker": worker.pid, "beat": beat.pid, "redis": redis.proc.pid}
    finally:
        for stop in (lambda: worker and _stop_process(worker), lambda: beat and _stop_process(beat),
                     lambda: sim and sim.stop(), lambda: redis and redis.stop(),
                     lambda: sink and (sink.shutdown(), sink.server_close())):
            stop()
    _print_summary(console, result, folder)
    return result


def _wait_for_alerts(engine, timeout: float) -> None:
    """Give the outbox a moment to deliver what the last flips produced."""
    from tierguard.store.tables import Alert

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session(engine) as s:
            if not s.exec(select(Alert).where(Alert.status != "delivered")).first():
                return
        time.sleep(0.2)


def _traffic(client, rate, seconds, console, live_view, engine, pol) -> int:
    names = list(CATEGORIES)
    count = [0]
    rng = random.Random(7)

    def one(i: int) -> None:
        name = names[i % len(names)]
        system, texts = CATEGORIES[name]
        text = rng.choice(texts).format(n=1000 + i) + f" (#{i})"
        client.messages.create(category=name, max_tokens=256, system=system,
                               messages=[{"role": "user", "content": text}])
        count[0] += 1

    start = time.monotonic()
    live = Live(console=console, refresh_per_second=4, transient=False) if live_view else None
    with ThreadPoolExecutor(max_workers=8) as pool:
        if live:
            live.start()
        i = 0
        next_view = 0.0
        next_line = 0.0
        while (elapsed := time.monotonic() - start) < seconds:
            pool.submit(one, i)
            i += 1
            if elapsed >= next_view:
                next_view = elapsed + 0.5
                cats, changes = _snapshot(engine, pol)
                if live:
                    live.update(render(cats, changes, elapsed, count[0], _Sink.received))
                elif elapsed >= next_line:
                    next_line += 10
                    console.print(f"{elapsed:3.0f}s: {count[0]} calls, "
                                  f"{sum(c['samples'] for c in cats.values())} samples, "
                                  f"{len(changes)} flip(s), {len(_Sink.received)} alert(s)")
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
    if live:
        cats, changes = _snapshot(engine, pol)
        live.update(render(cats, changes, time.monotonic() - start, count[0], _Sink.received))
        live.stop()
    return count[0]


def _snapshot(engine, pol):
    with session(engine) as s:
        changes = list(s.exec(select(RouteChange).order_by(RouteChange.id)))
    return category_status(engine, pol), changes


def _drain(engine, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session(engine) as s:
            if len(s.exec(select(Sample.job_id)).all()) >= expected:
                return
        time.sleep(0.2)


def summary(engine, pol) -> dict[str, Any]:
    """The replay-shaped result: route changes with the triggering sample's index, per-category totals."""
    cats = category_status(engine, pol)
    with session(engine) as s:
        order = [j for j in s.exec(select(Sample.job_id).order_by(Sample.created_at))]
        changes = list(s.exec(select(RouteChange).order_by(RouteChange.id)))
    position = {job: i for i, job in enumerate(order)}
    return {"changes": [{"category": c.category, "from": c.from_model, "to": c.to_model,
                         "index": position.get(c.trigger_job_id), "agreement": c.agreement,
                         "reason": c.reason} for c in changes],
            "categories": {n: {"samples": c["samples"], "agreement": c["agreement"],
                               "route": c["route"]} for n, c in cats.items()}}


def _print_summary(console: Console, result: dict[str, Any], folder: Path) -> None:
    console.print()
    if result["changes"]:
        for c in result["changes"]:
            console.print(f"[bold red]FLIP[/] {c['category']}: {c['from']} → {c['to']} — {c['reason']}")
    else:
        console.print("[yellow]no category flipped[/]")
    for a in result.get("alerts", []):
        console.print(f"[bold]alert sent to on-call[/] ({a['severity']}): {a['summary']}")
    for name, c in result["categories"].items():
        agreement = "—" if c["agreement"] is None else f"{c['agreement']:.1%}"
        console.print(f"  {name:<20} served by {c['route']:<18} {c['samples']:>5} samples, "
                      f"agreement {agreement}")
    console.print(f"database: {result.get('database')}")
    if result.get("report"):
        console.print(f"report:   {result['report']}")
    console.print(f"logs:     {(folder / 'worker.log').resolve()}, {(folder / 'beat.log').resolve()}")
    console.print("look around: TIERGUARD_DATABASE_URL=sqlite:///"
                  f"{result.get('database')} tierguard status | history | alerts list")


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
