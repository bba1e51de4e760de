"""Recorded comparisons and route changes as OTLP spans (protobuf), named by the OpenTelemetry
GenAI semantic conventions.

A ``sample`` row becomes a client span ``chat {shadow model}`` — the shadow call — with
``gen_ai.*`` attributes, ``tierguard.*`` ones, and, when the comparison concluded, a
``gen_ai.evaluation.result`` event named ``tierguard.agreement``. A row that ended as an error
has error status and no evaluation (errors are never disagreements); a job skipped for limits
is not an error. A route change becomes a span ``tierguard.route_change`` carrying an event of
that name, in the trace (and under the span) of the comparison that triggered it. The trace id
is the job id (a uuid4's 16 bytes), so a job's noise twin and probe share its trace. No prompt
or answer text is exported.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

EVALUATION_EVENT = "gen_ai.evaluation.result"
EVALUATION_NAME = "tierguard.agreement"
ROUTE_CHANGE = "tierguard.route_change"
PROVIDER = "anthropic"
MAX_TEXT = 2000  # characters of a reason kept in a span


def trace_id(job_id: str) -> bytes:
    """16 bytes: the job id (uuid4 hex) itself, else its digest; ``JOB:noise`` shares JOB's."""
    base = job_id.partition(":")[0]
    try:
        raw = bytes.fromhex(base)
    except ValueError:
        raw = b""
    return raw if len(raw) == 16 and any(raw) else hashlib.sha256(base.encode()).digest()[:16]


def span_id(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()[:8]


def nanos(at: dt.datetime | None) -> int:
    at = at or dt.datetime.now(dt.UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return int(at.timestamp() * 1e9)


def value(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    return AnyValue(string_value=str(v)[:MAX_TEXT])


def attributes(pairs: Mapping[str, Any]) -> list[KeyValue]:
    """Key-values of ``pairs``, leaving out those that are None."""
    return [KeyValue(key=k, value=value(v)) for k, v in pairs.items() if v is not None]


def sample_span(row: Mapping[str, Any]) -> Span:
    """A recorded comparison (a ``sample`` row's values) as the shadow call's span."""
    end = nanos(row.get("created_at"))
    latency_ms = row.get("shadow_latency_ms") or 0
    span = Span(trace_id=trace_id(row["job_id"]), span_id=span_id(row["job_id"]),
                name=f"chat {row['shadow_model']}", kind=Span.SpanKind.SPAN_KIND_CLIENT,
                start_time_unix_nano=end - int(latency_ms * 1e6), end_time_unix_nano=end,
                attributes=attributes(_sample_attributes(row)))
    error = row.get("error")
    if error and error != "skipped":
        span.status.CopyFrom(Status(code=Status.StatusCode.STATUS_CODE_ERROR,
                                    message=f"{error}: {row.get('reason') or ''}"[:MAX_TEXT]))
    if row.get("agree") is not None:
        span.events.add(time_unix_nano=end, name=EVALUATION_EVENT,
                        attributes=attributes(evaluation(row)))
    return span


def _sample_attributes(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": PROVIDER, "gen_ai.system": PROVIDER,
        "gen_ai.request.model": row["shadow_model"],
        "gen_ai.response.model": row.get("shadow_snapshot"),  # the snapshot the API named
        "gen_ai.usage.input_tokens": row.get("shadow_input_tokens"),
        "gen_ai.usage.output_tokens": row.get("shadow_output_tokens"),
        "error.type": row.get("error"),
        "tierguard.job_id": row["job_id"], "tierguard.category": row["category"],
        "tierguard.kind": row.get("kind"), "tierguard.served_model": row["served_model"],
        "tierguard.shadow_model": row["shadow_model"], "tierguard.rung": row.get("rung"),
        "tierguard.comparator": row.get("comparator"), "tierguard.agreement": row.get("agree"),
        "tierguard.score": _float(row.get("score")), "tierguard.attempts": row.get("attempts"),
        "tierguard.shadow_via": row.get("shadow_via"),
        "tierguard.served.input_tokens": row.get("primary_input_tokens"),
        "tierguard.served.output_tokens": row.get("primary_output_tokens"),
        "tierguard.served.latency_ms": _float(row.get("primary_latency_ms")),
        "tierguard.shadow.latency_ms": _float(row.get("shadow_latency_ms")),
        "tierguard.shadow.cost_usd": _float(row.get("shadow_cost_usd")),
        "tierguard.judge_model": row.get("judge_model"),
        "tierguard.prompt_fingerprint": row.get("prompt_fingerprint"),
        "tierguard.served_snapshot": row.get("served_snapshot"),
    }


def evaluation(row: Mapping[str, Any]) -> dict[str, Any]:
    """The ``gen_ai.evaluation.result`` event's attributes for a concluded comparison."""
    agree = bool(row["agree"])
    score = _float(row.get("score"))
    return {"gen_ai.evaluation.name": EVALUATION_NAME,
            "gen_ai.evaluation.score.value": score if score is not None else float(agree),
            "gen_ai.evaluation.score.label": "agree" if agree else "disagree",
            "gen_ai.evaluation.explanation": row.get("reason") or None,
            "gen_ai.request.model": row["shadow_model"], "tierguard.category": row["category"]}


def route_change_fields(change: Any) -> dict[str, Any]:
    """What a ``route_change`` row (or any object with its attributes) says, as plain values."""
    names = ("id", "category", "from_model", "to_model", "rule", "reason", "agreement", "samples",
             "actor", "applied", "trigger_job_id", "created_at")
    return {name: getattr(change, name, None) for name in names}


def route_change_span(change: Mapping[str, Any]) -> Span:
    """A route change (:func:`route_change_fields`) as a span of its own with one event."""
    at = nanos(change.get("created_at"))
    trigger = change.get("trigger_job_id")
    details = {"tierguard.category": change["category"], "tierguard.route.from": change["from_model"],
               "tierguard.route.to": change["to_model"], "tierguard.route.rule": change["rule"],
               "tierguard.route.reason": change.get("reason")}
    # A random span id: the row's id repeats across databases (another deployment, a test) and
    # a backend keeps one span per id.
    span = Span(trace_id=trace_id(trigger) if trigger else os.urandom(16), span_id=os.urandom(8),
                parent_span_id=span_id(trigger) if trigger else b"", name=ROUTE_CHANGE,
                kind=Span.SpanKind.SPAN_KIND_INTERNAL, start_time_unix_nano=at, end_time_unix_nano=at,
                attributes=attributes({
                    **details, "tierguard.route.applied": change.get("applied"),
                    "tierguard.route.actor": change.get("actor"),
                    "tierguard.route.agreement": _float(change.get("agreement")),
                    "tierguard.route.samples": change.get("samples"),
                    "tierguard.trigger_job_id": trigger}))
    span.events.add(time_unix_nano=at, name=ROUTE_CHANGE, attributes=attributes(details))
    return span


def export_request(spans: Iterable[Span], service_name: str, version: str = "") -> bytes:
    """One ``ExportTraceServiceRequest`` holding ``spans``, serialized. Phoenix files them under
    the project ``openinference.project.name`` names (the service name)."""
    resource = Resource(attributes=attributes({"service.name": service_name,
                                               "openinference.project.name": service_name}))
    scope = ScopeSpans(scope=InstrumentationScope(name="tierguard", version=version), spans=list(spans))
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(resource=resource,
                                                                      scope_spans=[scope])])
    return request.SerializeToString()


def _float(v: Any) -> float | None:
    return None if v is None else float(v)
