"""The database: every table, how to reach it, and what keeps it small.

Owns the engine and session helpers and the dialect switches (``db``), every table in one module
(``tables``), the Message Batches' job queue (``batch_jobs``), the per-minute production traffic
copied from Redis (``traffic``), the hourly rollups (``rollups``), PostgreSQL's sample partitions
(``partitions``), the read-only role for Grafana (``reader``), retention (``maintenance``) and the
Alembic migrations (``migrations/``).

May import: ``contract``, ``policy``, ``errors`` (and sqlalchemy, sqlmodel, alembic, redis).
Nothing here decides anything: the engine's verdicts arrive as values to store.
"""
