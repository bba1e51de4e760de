"""Adaptive sampling: how much of a category's traffic to shadow, chosen from its evidence.

Pure: :func:`choose` maps what the detector knows to a rate and the reason for it.
High (``rate_max``) for ``settle_s`` after the evidence was reset (a new prompt or
snapshot: :mod:`tierguard.engine.fingerprints`), while the evidence is thin, just after a route
change, or while
the CUSUM statistic stands above ``warning`` of its flip threshold (a drift is
suspected); low (``rate_min``) once the statistic sits near zero with evidence
behind it. A daily shadow budget caps either. ``sampling: fixed`` keeps the
policy's ``sample_rate`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

WARNING = 0.1          # share of the flip threshold above which a drift is suspected (bench watching)
EVIDENCE_FACTOR = 2    # samples since the last restart, in min_samples, before relaxing


@dataclass(frozen=True)
class SamplingConfig:
    mode: str = "fixed"                  # fixed | adaptive
    fixed_rate: float = 0.05
    rate_min: float = 0.01
    rate_max: float = 0.10
    min_samples: int = 50
    settle_s: float = 3600.0             # after a route change, watch closely this long
    budget_usd_per_day: float | None = None


@dataclass(frozen=True)
class Evidence:
    statistic: float                     # CUSUM statistic / flip threshold (0 … 1)
    samples: int                         # comparisons since the evidence last restarted
    seconds_since_change: float | None   # since the last route change, if any
    calls_per_day: float | None = None   # production calls, measured
    cost_per_sample_usd: float | None = None
    seconds_since_reset: float | None = None  # since the evidence was last reset (fingerprints)
    reset: str = ""                      # what that reset changed


@dataclass(frozen=True)
class Rate:
    rate: float
    reason: str


def choose(config: SamplingConfig, ev: Evidence) -> Rate:
    """The share of calls to shadow, and why."""
    if config.mode != "adaptive":
        return Rate(config.fixed_rate, "fixed sample_rate")
    needed = EVIDENCE_FACTOR * config.min_samples
    if ev.seconds_since_reset is not None and ev.seconds_since_reset < config.settle_s:
        chosen = Rate(config.rate_max, f"evidence reset {ev.seconds_since_reset / 60:.0f} min ago "
                                       f"({ev.reset})")
    elif ev.samples < needed:
        chosen = Rate(config.rate_max, f"evidence thin: {ev.samples} of {needed} samples since the "
                                       "evidence last restarted")
    elif ev.seconds_since_change is not None and ev.seconds_since_change < config.settle_s:
        chosen = Rate(config.rate_max, f"route changed {ev.seconds_since_change / 60:.0f} min ago")
    elif ev.statistic >= WARNING:
        chosen = Rate(config.rate_max, f"drift suspected: CUSUM at {ev.statistic:.2f} of its flip "
                                       f"threshold (warning {WARNING:g})")
    else:
        chosen = Rate(config.rate_min, f"healthy: CUSUM at {ev.statistic:.2f} of its flip threshold "
                                       f"over {ev.samples} samples")
    return _capped(config, ev, chosen)


def _capped(config: SamplingConfig, ev: Evidence, chosen: Rate) -> Rate:
    budget = config.budget_usd_per_day
    if budget is None or not ev.calls_per_day or not ev.cost_per_sample_usd:
        return chosen
    cap = budget / (ev.calls_per_day * ev.cost_per_sample_usd)
    if chosen.rate <= cap:
        return chosen
    return Rate(max(cap, 0.0), f"{chosen.reason}; capped by the budget ${budget:g}/day "
                               f"({ev.calls_per_day:,.0f} calls/day × ${ev.cost_per_sample_usd:.5f} "
                               "per sample)")
