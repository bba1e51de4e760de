"""Verdicts where teams look: recorded comparisons and route changes exported over OTLP/HTTP.

Owns turning what a committed transaction recorded (``sample`` rows' values, ``route_change``
rows) into spans named by the OpenTelemetry GenAI semantic conventions (``spans``: a
``gen_ai.evaluation.result`` event per concluded comparison, a ``tierguard.route_change`` span
per route change) and sending them off the recording thread (``exporter``: one bounded queue
and one background thread per process, batched, gzipped protobuf; a full queue or an
unreachable endpoint drops and counts, never waits). Off unless ``TIERGUARD_OTLP_ENDPOINT`` is
set.

May import ``config``, ``metrics`` and ``errors`` only: it takes plain values (and any object
with a route change's attributes), so the worker side (``pipeline``, ``alerts``) imports it,
never the other way round.
"""
