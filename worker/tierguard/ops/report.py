"""``tierguard report``: one PNG for people who want a picture without Grafana.

Agreement per category over time with its threshold and the route changes,
the current routes (a ladder's rungs with their states, the challengers with their verdicts),
and shadow spend against the estimated savings.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import select

from tierguard.engine.ladder import rung_state
from tierguard.errors import ConfigError, TierguardError
from tierguard.store.db import session, utcnow
from tierguard.store.tables import Category, RouteChange, Sample

BUCKETS = 60


def parse_since(text: str) -> dt.timedelta:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip())
    if not m:
        raise ConfigError([f"--since: {text!r} is not a duration like 90s, 30m, 24h or 7d"])
    return dt.timedelta(seconds=float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])


def _epoch(engine: Engine, column: Any) -> Any:
    if engine.dialect.name == "sqlite":
        return sa.cast(sa.func.strftime("%s", column), sa.Float)
    return sa.extract("epoch", column)


def gather(engine: Engine, since: dt.timedelta, policy: Any = None) -> dict[str, Any]:
    """The report's data. With ``policy``, spend and savings are the measured ones (``tierguard
    costs``) wherever production's tokens were counted; else estimated from the samples."""
    end = utcnow()
    start = end - since
    width = max(1.0, since.total_seconds() / BUCKETS)
    epoch = _epoch(engine, Sample.created_at)
    bucket = sa.func.floor((epoch - start.timestamp()) / width)
    with session(engine) as s:
        rows = s.execute(
            sa.select(Sample.category, bucket.label("b"), sa.func.count(),
                      sa.func.sum(sa.case((Sample.agree.is_(True), 1), else_=0)))
            .where(Sample.kind == "shadow", Sample.agree.is_not(None), Sample.created_at >= start)
            .group_by(Sample.category, "b").order_by("b")).all()
        cats = {c.name: c for c in s.exec(select(Category))}
        changes = list(s.exec(select(RouteChange).where(RouteChange.applied,
                                                        RouteChange.created_at >= start)
                              .order_by(RouteChange.id)))
        costs = s.execute(
            sa.select(Sample.category, Sample.served_model,
                      sa.func.sum(sa.func.coalesce(Sample.shadow_cost_usd, 0)
                                  + sa.func.coalesce(Sample.judge_cost_usd, 0)),
                      sa.func.sum(Sample.primary_cost_usd))
            .where(Sample.kind == "shadow", Sample.created_at >= start)
            .group_by(Sample.category, Sample.served_model)).all()
    series: dict[str, list[tuple[dt.datetime, float, int]]] = {}
    for name, b, n, agree in rows:
        at = start + dt.timedelta(seconds=(float(b) + 0.5) * width)
        series.setdefault(name, []).append((at, agree / n, n))
    spend: dict[str, dict[str, float]] = {}
    for name, served, shadow_cost, primary_cost in costs:
        cat = cats.get(name)
        rate = (cat.sample_rate if cat and cat.sample_rate else None)
        entry = spend.setdefault(name, {"shadow": 0.0, "savings": 0.0})
        entry["shadow"] += shadow_cost or 0.0
        if cat and served == cat.candidate and rate and shadow_cost and primary_cost:
            entry["savings"] += (shadow_cost - primary_cost) / rate
    challengers: dict[str, dict[str, Any]] = {}
    if policy is not None:
        from tierguard.ops.challengers import by_category, challenger_status
        from tierguard.ops.costs import costs as measured

        challengers = by_category(challenger_status(engine, policy))
        for name, c in measured(engine, policy, start, end)["categories"].items():
            if c["production_usd"] > 0:
                spend[name] = {"shadow": c["shadow_usd"], "savings": c["savings_usd"]}
    return {"start": start, "end": end, "series": series, "categories": cats,
            "changes": changes, "spend": spend, "challengers": challengers}


def plotted_from(data: dict[str, Any]) -> dt.datetime:
    """Where the plotted data starts: the period's start, or its first sample bucket if later."""
    width = (data["end"] - data["start"]) / BUCKETS
    first = min((p[0][0] for p in data["series"].values()), default=None)
    changes = [c.created_at if c.created_at.tzinfo else c.created_at.replace(tzinfo=dt.UTC)
               for c in data["changes"]]
    earliest = min([t for t in [first, *changes] if t is not None], default=None)
    return data["start"] if earliest is None else max(data["start"], earliest - width / 2)


def _state(cat: Any) -> str:
    if cat.pinned:
        return "pinned" + (f" until {cat.pinned_until:%m-%d %H:%M}" if cat.pinned_until else "")
    state = (cat.detector_state or {})
    rungs = _rungs(cat)
    if rungs:  # a ladder: every rung below the reference with its state
        return ", ".join(f"{m.removeprefix('claude-')} {s}" for m, s in rungs.items())
    serving = {cat.candidate: "candidate", cat.reference: "reference"}.get(cat.routed_model, "other")
    return serving + (", eligible" if state.get("eligible") else "")


def _challenged(data: dict[str, Any], name: str) -> str:
    """A category's challengers and their verdicts, for the routes table ('' when none)."""
    found = (data.get("challengers", {}).get(name) or {}).get("challengers") or {}
    return "".join(f"; {m.removeprefix('claude-')} {e['verdict']}" + (" (eligible)" if e["eligible"] else "")
                   for m, e in found.items())


def _rungs(cat: Any) -> dict[str, str]:
    """A ladder category's rungs below the reference and their states (none for two models)."""
    states = (cat.detector_state or {}).get("rungs") or {}
    return {model: rung_state(states, cat.routed_model, model) for model in states}


def render(data: dict[str, Any], out: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TierguardError("the report needs matplotlib: pip install 'tierguard[report]'") from None
    fig = plt.figure(figsize=(13, 8.5), dpi=110)
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2], hspace=0.35, wspace=0.25)
    ax = fig.add_subplot(grid[0, :])
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, points) in enumerate(sorted(data["series"].items())):
        colour = colours[i % len(colours)]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=name, color=colour, lw=1.8)
        cat = data["categories"].get(name)
        if cat and cat.threshold is not None:
            ax.axhline(cat.threshold, color=colour, ls="--", lw=0.9, alpha=0.7)
    for change in data["changes"]:
        at = change.created_at if change.created_at.tzinfo else change.created_at.replace(tzinfo=dt.UTC)
        ax.axvline(at, color="red", lw=1.2, alpha=0.8)
        ax.annotate(f"{change.category}\n→ {change.to_model}", (at, 0.02), xycoords=("data", "axes fraction"),
                    rotation=90, fontsize=8, color="red", ha="right", va="bottom")
    ax.set_ylim(0, 1.02)
    shown_from = plotted_from(data)
    ax.set_xlim(shown_from, data["end"])
    ax.set_ylabel("agreement (candidate vs reference)")
    ax.set_title("Agreement per category (dashed: threshold, red: route changes)")
    if data["series"]:
        ax.legend(loc="lower left", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no samples in this period", transform=ax.transAxes, ha="center")
    bars = fig.add_subplot(grid[1, 0])
    names = sorted(data["spend"])
    xs = range(len(names))
    bars.bar([x - 0.2 for x in xs], [data["spend"][n]["shadow"] for n in names], 0.4,
             label="shadow spend")
    bars.bar([x + 0.2 for x in xs], [data["spend"][n]["savings"] for n in names], 0.4,
             label="savings from the candidate (est.)")
    bars.set_xticks(list(xs), names, fontsize=8, rotation=15)
    bars.set_ylabel("USD")
    bars.set_title("Shadow spend vs estimated savings")
    bars.legend(fontsize=8)
    table_ax = fig.add_subplot(grid[1, 1])
    table_ax.axis("off")
    rows = [[c.name, c.routed_model, _state(c) + _challenged(data, c.name)]
            for c in sorted(data["categories"].values(), key=lambda c: c.name)]
    if rows:
        table = table_ax.table(cellText=rows, colLabels=["category", "served by", "state"], loc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        table.scale(1, 1.4)
    table_ax.set_title("Current routes")
    fig.suptitle(f"tierguard report, {shown_from:%Y-%m-%d %H:%M} – {data['end']:%Y-%m-%d %H:%M} UTC")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def summary(data: dict[str, Any], out: Path) -> dict[str, Any]:
    return {"out": str(out.resolve()),
            "categories": {n: {"route": c.routed_model, "pinned": c.pinned,
                               **({"rungs": _rungs(c)} if _rungs(c) else {})}
                           for n, c in sorted(data["categories"].items())},
            "changes": len(data["changes"]),
            "from": plotted_from(data).isoformat(), "to": data["end"].isoformat(),
            "challengers": {n: {m: e["verdict"] for m, e in (v.get("challengers") or {}).items()}
                            for n, v in data.get("challengers", {}).items()},
            "shadow_spend_usd": round(sum(v["shadow"] for v in data["spend"].values()), 6),
            "savings_usd_est": round(sum(v["savings"] for v in data["spend"].values()), 6)}
