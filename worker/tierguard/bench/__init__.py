"""Every benchmark behind ``tierguard bench``: figures measured in one run, as ratios and absolutes.

Owns the engine's detection figures (``engine``), the wrapper's hot path (``hotpath``), the
pipeline (``pipeline``), the gateway (``gateway``, with its load generator ``loadgen``), replay
(``replay``), the dashboards' queries (``dashboards``, ``grafana_sql``), headroom
(``headroom``), watching budgets (``watching``), ladders (``ladder``) and a new model's
release (``upgrade``), and the statistics they share (``stats``). Adding a benchmark starts here.

May import: everything below ``cli`` except ``ops`` (benchmarks drive the real parts, started
from ``sim``).
"""
