"""Operator tools: what people run around the loop, not the loop itself.

Owns the demo, the simulated Messages API (:mod:`~tierguard.ops.simulate`),
private Redis/PostgreSQL servers for demos and tests (:mod:`~tierguard.ops.servers`),
benchmarks, the PNG report, read-side status and history, audited operator
actions (pin, unpin, promote) and the replay of recorded comparisons. May import
everything below it (app, pipeline, alerts, engine, compare, core); only the CLI
imports ops.
"""
