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

from tierguard import moved
from tierguard.app.client import AsyncShadowedAnthropic, ShadowedAnthropic
from tierguard.compare import Comparator, Verdict

__all__ = ["AsyncShadowedAnthropic", "Comparator", "ShadowedAnthropic", "Verdict", "__version__"]
__version__ = "0.1.0"

moved.install()  # old import paths (tierguard.db, tierguard.routes, ...) keep working
