"""Every table tierguard keeps, in one module (the migrations in ``migrations/`` create them).

Routing: ``category`` (one row per category: route, pin, detector state), ``route_change`` (the
audit log of every move). Evidence: ``sample`` (one row per sampled call: a comparison or an
error with its reason). Traffic and rollups: ``traffic`` (production calls per minute),
``rollup`` / ``rollup_error`` (hourly figures for the dashboards). Alerts: ``event`` (what
on-call should hear of, once), ``alert`` (the outbox: one event for one channel). Message
Batches: ``shadow_batch``, ``batch_job``. Rate limits: ``headroom`` (room left per minute).
Sentinels: ``sentinel_baseline`` (accuracy per category, model and snapshot), ``sentinel_run``
(each rung's last run).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlmodel import Column, Field, SQLModel

from tierguard.store.db import utcnow


def _ts(index: bool = False, nullable: bool = False) -> Any:
    """A timezone-aware timestamp column: now by default, or null when ``nullable``."""
    column = Column(sa.DateTime(timezone=True), nullable=nullable, index=index)
    return Field(default=None, sa_column=column) if nullable else Field(default_factory=utcnow,
                                                                        sa_column=column)


class Category(SQLModel, table=True):
    name: str = Field(primary_key=True)
    candidate: str
    reference: str
    routed_model: str
    threshold: float | None = None    # copied from the policy, for dashboards and alert rules
    sample_rate: float | None = None  # copied from the policy
    # The adaptive rate beat last chose, and why (null for fixed sampling; tierguard.routing.rates).
    chosen_rate: float | None = None
    chosen_rate_reason: str | None = None
    pinned: bool = False
    pin_reason: str | None = None
    pinned_by: str | None = None
    pinned_until: dt.datetime | None = Field(
        default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=True))
    detector_state: dict = Field(default_factory=dict, sa_column=Column(sa.JSON, nullable=False))
    # Per rung, the escalation CUSUM over its checked answers (tierguard.engine.escalations).
    escalation_state: dict = Field(default_factory=dict, sa_column=Column(
        sa.JSON, nullable=False, server_default="{}"))
    version: int = 1
    updated_at: dt.datetime = _ts()


class Sample(SQLModel, table=True):
    __table_args__ = (
        sa.Index("ix_sample_category_created_at", "category", "created_at"),
        # The dashboard's drill-down (disagreement reasons) reads only these rows.
        sa.Index("ix_sample_disagreements", "created_at",
                 postgresql_where=sa.text("agree = false AND kind = 'shadow'"),
                 sqlite_where=sa.text("agree = 0 AND kind = 'shadow'")),
    )

    job_id: str = Field(primary_key=True)
    category: str = Field(index=True)
    kind: str = Field(default="shadow", sa_column_kwargs={"server_default": "shadow"})
    served_model: str
    shadow_model: str
    agree: bool | None = None
    score: float | None = None
    comparator: str
    reason: str
    detail: dict = Field(default_factory=dict, sa_column=Column(sa.JSON, nullable=False))
    error: str | None = None
    attempts: int = 1
    primary_latency_ms: float | None = None
    shadow_latency_ms: float | None = None
    primary_input_tokens: int | None = None
    primary_output_tokens: int | None = None
    primary_cost_usd: float | None = None
    shadow_input_tokens: int | None = None
    shadow_output_tokens: int | None = None
    shadow_cost_usd: float | None = None
    shadow_via: str | None = None  # "batch" for a Message Batches shadow (priced at its discount)
    rung: str | None = None  # the model compared with the reference (null before revision 0012)
    # What the evidence was gathered on (null before revision 0013): a hash of what defines the
    # task (tierguard.contract.fingerprint) and the snapshots the API reported in the answers.
    prompt_fingerprint: str | None = None
    served_snapshot: str | None = None
    shadow_snapshot: str | None = None
    judge_model: str | None = None
    judge_input_tokens: int | None = None
    judge_output_tokens: int | None = None
    judge_cost_usd: float | None = None
    request_hash: str
    primary_hash: str
    shadow_hash: str | None = None
    request_excerpt: str | None = None
    primary_excerpt: str | None = None
    shadow_excerpt: str | None = None
    # When production made the call: stable across redelivery, the partition key on PostgreSQL.
    requested_at: dt.datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    created_at: dt.datetime = _ts(index=True)


class RouteChange(SQLModel, table=True):
    __tablename__ = "route_change"

    id: int | None = Field(default=None, primary_key=True)
    category: str = Field(index=True)
    from_model: str
    to_model: str
    rule: str
    reason: str
    agreement: float | None = None
    samples: int | None = None
    numbers: dict = Field(default_factory=dict, sa_column=Column(sa.JSON, nullable=False))
    actor: str = "auto"
    applied: bool = Field(default=True, sa_column_kwargs={"server_default": sa.true()})
    trigger_job_id: str | None = None
    created_at: dt.datetime = _ts(index=True)


def _tokens() -> Any:
    return Field(default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"})


class Traffic(SQLModel, table=True):
    """Production calls per category, served model and minute, folded from Redis by beat."""

    category: str = Field(primary_key=True)
    minute: dt.datetime = Field(sa_column=Column(sa.DateTime(timezone=True), primary_key=True))
    model: str = Field(primary_key=True)
    calls: int = 0
    guarded: int = 0  # sent to the reference because the routed model could not take them
    # What the calls used, measured (every call, not the sampled ones), and its price.
    input_tokens: int = _tokens()
    output_tokens: int = _tokens()
    cache_write_tokens: int = _tokens()
    cache_read_tokens: int = _tokens()
    cost_usd: float | None = None  # priced with the policy in force when folded
    reference_cost_usd: float | None = None  # the same tokens at the category's reference's prices
    # Answers checked against the category's escalate_on, and those that failed, per reason.
    checked: int = _tokens()
    escalated_empty: int = _tokens()
    escalated_refusal: int = _tokens()
    escalated_truncated: int = _tokens()
    escalated_invalid: int = _tokens()
    # The escalated calls among ``calls`` (the answers callers got instead), their tokens and price.
    escalated_calls: int = _tokens()
    escalated_input_tokens: int = _tokens()
    escalated_output_tokens: int = _tokens()
    escalated_cache_write_tokens: int = _tokens()
    escalated_cache_read_tokens: int = _tokens()
    escalated_cost_usd: float | None = None


LATENCY_BUCKETS = 24  # bucket b holds latencies up to 8 ms · 2^(b/2); the last one everything above


class Rollup(SQLModel, table=True):
    """Samples per (grain, category, period, models, kind): what every time-series panel reads.

    ``grain`` is ``1m``, ``5m`` or ``1h``: a panel reads the coarsest that its range still
    shows well, so its cost depends on the periods shown, not on the samples behind them.
    Written in the same transaction as the samples it counts (only rows actually
    inserted), so redelivery never counts twice and a sample is in the period of its
    ``created_at``.
    """

    __table_args__ = (sa.Index("ix_rollup_grain_at", "grain", "at"),)

    grain: str = Field(primary_key=True)
    category: str = Field(primary_key=True)
    at: dt.datetime = Field(sa_column=Column(sa.DateTime(timezone=True), primary_key=True))
    served_model: str = Field(primary_key=True)
    shadow_model: str = Field(primary_key=True)
    kind: str = Field(primary_key=True)
    samples: int = 0
    agreements: int = 0
    disagreements: int = 0
    errors: int = 0
    skipped: int = 0
    primary_input_tokens: int = 0
    primary_output_tokens: int = 0
    primary_cost_usd: float = 0.0
    shadow_input_tokens: int = 0
    shadow_output_tokens: int = 0
    shadow_cost_usd: float = 0.0
    judge_cost_usd: float = 0.0


for _side in ("primary", "shadow"):
    for _b in range(LATENCY_BUCKETS):
        Rollup.__table__.append_column(sa.Column(f"{_side}_lat_{_b:02d}", sa.Integer, nullable=False,
                                                 server_default="0"))


class RollupError(SQLModel, table=True):
    """Errors per (grain, category, period, error kind)."""

    __tablename__ = "rollup_error"
    __table_args__ = (sa.Index("ix_rollup_error_grain_at", "grain", "at"),)

    grain: str = Field(primary_key=True)
    category: str = Field(primary_key=True)
    at: dt.datetime = Field(sa_column=Column(sa.DateTime(timezone=True), primary_key=True))
    error: str = Field(primary_key=True)
    count: int = 0


class Event(SQLModel, table=True):
    """Something on-call should hear about; ``key`` makes it happen once."""

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(sa.String, nullable=False, unique=True))
    kind: str = Field(index=True)
    category: str | None = Field(default=None, index=True)
    severity: str
    summary: str
    details: dict = Field(default_factory=dict, sa_column=Column(sa.JSON, nullable=False))
    route_change_id: int | None = None
    created_at: dt.datetime = _ts(index=True)


class Alert(SQLModel, table=True):
    """Outbox row: one event for one channel, delivered until the channel accepts it."""

    __table_args__ = (sa.UniqueConstraint("event_id", "channel", name="uq_alert_event_channel"),)

    id: int | None = Field(default=None, primary_key=True)
    event_id: int = Field(index=True)
    channel: str
    status: str = Field(default="pending", index=True)  # pending | sending | delivered | failed
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: dt.datetime = _ts()
    lease_until: dt.datetime | None = Field(
        default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=True))
    delivered_at: dt.datetime | None = Field(
        default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=True))
    created_at: dt.datetime = _ts()


class ShadowBatch(SQLModel, table=True):
    __tablename__ = "shadow_batch"

    id: str = Field(primary_key=True)
    category: str = Field(index=True)
    status: str = Field(index=True)
    api_id: str | None = None
    jobs: int = 0
    request_counts: dict = Field(default_factory=dict, sa_column=Column(sa.JSON, nullable=False))
    error: str | None = None
    created_at: dt.datetime = _ts()
    submitted_at: dt.datetime | None = _ts(nullable=True)
    ended_at: dt.datetime | None = _ts(nullable=True)


class BatchJob(SQLModel, table=True):
    __tablename__ = "batch_job"

    job_id: str = Field(primary_key=True)
    category: str = Field(index=True)
    batch_id: str | None = Field(default=None, index=True)
    # The job as the worker received it (sealed again when TIERGUARD_PAYLOAD_KEYS is set).
    payload: dict = Field(sa_column=Column(sa.JSON, nullable=False))
    attempt: int = 1
    queued_at: dt.datetime = _ts(index=True)


class Headroom(SQLModel, table=True):
    __tablename__ = "headroom"

    minute: dt.datetime = Field(sa_column=Column(sa.DateTime(timezone=True), primary_key=True))
    model: str = Field(primary_key=True)
    key: str = Field(default="", primary_key=True)
    requests: float | None = None  # remaining share of each limit, 0..1, as last seen
    input_tokens: float | None = None
    output_tokens: float | None = None
    tokens: float | None = None
    paused: bool = False
    deferred: int = Field(default=0, sa_type=sa.BigInteger)  # running count of deferred shadows


class SentinelBaseline(SQLModel, table=True):
    """A rung's accuracy on its category's sentinels for one snapshot: the first run of that
    snapshot that passed (the first run ever for a model's first snapshot); never rewritten."""

    __tablename__ = "sentinel_baseline"

    category: str = Field(primary_key=True)
    model: str = Field(primary_key=True)
    snapshot: str = Field(primary_key=True)
    cases_hash: str = Field(primary_key=True)  # the sentinel file's cases: an edited file starts anew
    accuracy: float
    cases: int
    created_at: dt.datetime = _ts()


class SentinelRun(SQLModel, table=True):
    """A rung's last sentinel run in its category: what it scored, against which baseline, and
    whether it failed (a failure is announced once, on the run that went from passing to failing)."""

    __tablename__ = "sentinel_run"

    category: str = Field(primary_key=True)
    model: str = Field(primary_key=True)
    run: str
    snapshot: str | None = None
    accuracy: float | None = None  # None: no case was compared (every call or comparison failed)
    baseline: float | None = None
    baseline_snapshot: str | None = None
    cases: int = 0
    compared: int = 0
    failed: bool = False
    at: dt.datetime = _ts()


class Challenge(SQLModel, table=True):
    """A model challenged by an operator (``tierguard challenge``), or a policy challenger stopped
    by one: which categories, at what share of their sampled jobs, since and until when."""

    model: str = Field(primary_key=True)
    categories: list | None = Field(default=None, sa_column=Column(sa.JSON, nullable=True))  # None: all
    rate: float | None = None  # None: each category's challenge_rate
    started_at: dt.datetime = _ts()
    started_by: str = "operator"
    stopped_at: dt.datetime | None = _ts(nullable=True)


class ChallengerState(SQLModel, table=True):
    """A challenger's evidence in one category (tierguard.engine.challengers): its counts against
    the reference and the rung in service, and its promotion-rule state."""

    __tablename__ = "challenger_state"

    category: str = Field(primary_key=True)
    model: str = Field(primary_key=True)
    state: dict = Field(default_factory=dict, sa_column=Column(sa.JSON, nullable=False))
    updated_at: dt.datetime = _ts()


class Rollout(SQLModel, table=True):
    """A category's staged rollout to a new model (tierguard.engine.rollouts): its steps, where it
    stands, and the new model's agreement CUSUM on its share; the latest one per category."""

    category: str = Field(primary_key=True)
    model: str
    base: str  # the model in service it takes the calls from
    steps: list = Field(sa_column=Column(sa.JSON, nullable=False))
    step: int = 0
    step_minutes: float = 60.0
    step_samples: int = 100
    step_started_at: dt.datetime = _ts()
    samples: int = 0  # comparisons of the new model in this step
    status: str = "running"  # running | paused | done | rolled_back | aborted
    reason: str = ""
    state: dict = Field(default_factory=dict, sa_column=Column(sa.JSON, nullable=False))
    started_by: str = "operator"
    created_at: dt.datetime = _ts()
    updated_at: dt.datetime = _ts()
