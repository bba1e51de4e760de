"""tierguard: shadow-traffic quality monitor for LLM model tiering.

The package by role (``docs/architecture.md`` draws it whole):

- ``app/``: the production side (the SDK wrapper, the publisher);
- ``pipeline/``: the worker side (Celery tasks, model calls, comparison, recording);
- ``engine/``: pure decision logic; ``compare/``: the comparators;
- ``alerts/``: events, the outbox and its channels, monitors, Grafana;
- ``ops/``: operator tools (demo, simulator, benchmarks, report, status, replay);
- ``cli/``: the ``tierguard`` command;
- the shared core at the top: settings, errors, policy, tables, routes, the job format.
"""

from tierguard.app.client import AsyncShadowedAnthropic, ShadowedAnthropic
from tierguard.compare import Comparator, Verdict

__all__ = ["AsyncShadowedAnthropic", "Comparator", "ShadowedAnthropic", "Verdict", "__version__"]
__version__ = "0.1.0"
