"""Operator commands: what people run around the loop, not the loop itself.

Owns the demo (:mod:`~tierguard.ops.demo`), read-side status and history
(``status``), audited operator actions: pin, unpin, promote (``actions``), the PNG
report (``report``), measured costs (``costs``), offline evaluation and onboarding
(``evaluate``, ``opportunities``, ``judge_check``, ``jsonl``) and the replay of
recorded comparisons (``replay``). May import everything below ``cli`` except
``bench`` (app, pipeline, alerts, routing, headroom, store, policy, contract,
engine, compare, and ``sim`` for the demo); only the CLI imports ops.
"""
