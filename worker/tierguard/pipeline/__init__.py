"""The worker side: take shadow jobs off the broker, call the other model, compare, record, decide.

Owns the Celery tasks (:mod:`~tierguard.pipeline.tasks`, thin: deserialize, call
plain functions, decide retries), the one flow a message of jobs takes
(:mod:`~tierguard.pipeline.flow`), the worker's context (``context``), model calls
with retryable/permanent errors (``calls``), one event loop per process holding a
message's calls in flight (``fanout``), what a result is made of (``shadow``), the
judge's calls (``judging``), the worker's values (``results``: Result, JudgeUsage,
Outcome), sample rows (``samples``), recording: samples, detector updates and route
changes in one transaction (``recorder``) through a per-process writer
(``writer``), yielding to rate limits (``yielding``), Message Batches
(``message_batches``: the only meaning of "batch" in names here, besides the
``shadow_batch`` task, a message of many jobs), sentinels: known answers run against every rung
on beat's schedule (``sentinels``) and their baselines per snapshot (``baselines``), the API's model
list (``listed_models``) and beat's retirement check (``retirements``), and the health endpoint
(``health``).

May import ``contract``, ``policy``, ``engine``, ``compare``, ``store``,
``routing``, ``headroom`` and ``alerts`` (events are written with the change that
caused them), and ``otlp`` (what a transaction recorded, exported after its commit); never the
production side, ops, sim or bench.
"""
