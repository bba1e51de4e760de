"""tierguard: shadow-traffic quality monitor for LLM model tiering.

The package by room (``docs/architecture.md`` draws it whole), from the bottom up:

- ``errors``, ``config``, ``metrics``: one error tree, the settings, the Prometheus metrics;
- ``engine/``: pure decision logic; ``compare/``: the comparators (``comparators``: its old path);
- ``contract/``: what both sides agree on (the job, its seal and payload store, Redis keys, broker);
- ``policy/``: the policy file, its sections, model limits, live reload;
- ``store/``: the database (every table, rollups, partitions, traffic, retention, migrations);
- ``routing/``: routes and sample rates; ``headroom/``: rate limits, pauses, caps, deferral;
- ``alerts/``: events, the outbox and its channels, monitors, Grafana;
- ``app/``: the production side (the SDK wrapper, the gateway, the publisher);
- ``pipeline/``: the worker side (Celery tasks, model calls, comparison, recording);
- ``sim/``: the stand-in for Anthropic's API and private servers; ``bench/``: benchmarks;
- ``ops/``: operator commands; ``cli/``: the ``tierguard`` command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tierguard import moved

if TYPE_CHECKING:
    from tierguard.app.client import AsyncShadowedAnthropic, ShadowedAnthropic
    from tierguard.compare import Comparator, Verdict

__all__ = ["AsyncShadowedAnthropic", "Comparator", "ShadowedAnthropic", "Verdict", "__version__"]
__version__ = "0.1.0"

# The public names load on first use, so the ``tierguard`` command (and a worker's
# start) does not pay for the anthropic SDK's import unless it calls Claude.
_LAZY = {"AsyncShadowedAnthropic": "tierguard.app.client", "ShadowedAnthropic": "tierguard.app.client",
         "Comparator": "tierguard.compare", "Verdict": "tierguard.compare"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tierguard' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


moved.install()  # old import paths (tierguard.db, tierguard.routes, ...) keep working
