"""Process settings from the environment, built on demand by :func:`get_settings`."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a tierguard process reads from ``TIERGUARD_*`` variables.

    Model API credentials are not here: the anthropic SDK reads its own
    ``ANTHROPIC_API_KEY`` / ``ANTHROPIC_BASE_URL``.
    """

    model_config = SettingsConfigDict(env_prefix="TIERGUARD_", extra="ignore")

    policy: Path = Path("tierguard.yaml")
    database_url: str = "sqlite:///tierguard.db"
    redis_url: str = "redis://localhost:6379/0"
    # Passwords kept out of the URLs (any characters; encoded into the URL here).
    database_password: SecretStr | None = None
    redis_password: SecretStr | None = None
    reader_password: SecretStr | None = Field(
        None, description="password `db upgrade --create-reader` gives tierguard_reader")
    queue: str = "tierguard"
    policy_reload_s: float = Field(30.0, gt=0, description="seconds between looks at the policy file")
    # Wrapper side.
    route_ttl: float = Field(1.0, gt=0, description="seconds between route refreshes")
    publish_buffer: int = Field(10_000, gt=0, description="shadow jobs held before dropping")
    publish_jobs_per_message: int = Field(50, ge=1, le=1000, description=(
        "shadow jobs the wrapper sends in one broker message at most (fewer: a burst is spread "
        "over more workers; more: less CPU per job on both sides)"))
    publish_gather_s: float = Field(0.1, ge=0, le=5, description=(
        "seconds the wrapper's publisher gathers jobs for one message after the first"))
    exit_flush_s: float = Field(2.0, ge=0, le=60, description=(
        "seconds a process's exit waits for its shadow jobs still queued to be sent"))
    job_inline_max: int = Field(256 * 1024, ge=0, description=(
        "bytes of request and answer a shadow job may carry in its broker message; a larger "
        "job's payload is stored once in Redis (tierguard.contract.job_store)"))
    job_payload_ttl_s: float = Field(86_400, gt=0, description="how long a stored job payload is kept")
    payload_keys: SecretStr | None = Field(
        None, description="Fernet keys, comma-separated, newest first: shadow jobs are sealed")
    job_signing_key: SecretStr | None = Field(
        None, description="HMAC key: shadow jobs are signed whole when not sealed; workers refuse "
                          "unsigned jobs")
    # Gateway.
    upstream_url: str | None = Field(None, description="the Messages API the gateway forwards to")
    category_header: str = Field("x-tierguard-category", min_length=1)
    gateway_max_connections: int = Field(1000, ge=16, description="upstream connections per process")
    gateway_timeout: float = Field(600.0, gt=0, description="seconds to wait for the upstream")
    gateway_max_body: int = Field(32 * 1024 * 1024, gt=0,
                                  description="largest request body in bytes, decoded (else a 413)")
    gateway_header_timeout: float = Field(10.0, gt=0, description=(
        "seconds a caller has to send its request line and headers (else the connection closes)"))
    gateway_body_timeout: float = Field(60.0, gt=0, description=(
        "seconds a caller has to send its whole request body (else a 408)"))
    gateway_max_clients: int = Field(512, ge=1, description=(
        "caller connections per gateway process (beyond: 503); keep under the process's fd limit"))
    gateway_deadline: float = Field(600.0, gt=0, description=(
        "seconds one upstream request may take in all, streamed or not (then it is cut)"))
    gateway_max_json_depth: int = Field(128, ge=8, description=(
        "deepest JSON nesting a request body may have (else a 400)"))
    gateway_client: str = Field("lean", pattern="^(lean|httpx2)$", description=(
        "the gateway's upstream client: lean (app/lean_client: bodies up to 64 KiB, reached "
        "directly), or httpx2 for every request (httpx2 through a proxy and for larger bodies)"))
    gateway_express: bool = Field(True, description=(
        "relay unsampled Messages calls (small body, answers not checked) without the ASGI cycle "
        "(app/express); false: every call takes the ASGI path"))
    stream_assembly_max: int = Field(8 * 1024 * 1024, gt=0, description=(
        "bytes of a sampled stream assembled for its shadow; a longer stream is relayed unshadowed"))
    # Worker side.
    worker_concurrency: int = Field(64, gt=0, description="Celery task threads per process")
    worker_gc_threshold: int = Field(50_000, ge=0, le=1_000_000, description=(
        "a worker's young-generation garbage collection threshold, in allocations (the older "
        "generations after 10 younger collections each, as Python's); 0 keeps Python's own collector (700, "
        "10, 10; nothing frozen)"))
    max_in_flight: int = Field(1024, ge=32, description="shadow calls in flight per process")
    worker_loop: str = Field("uvloop", pattern="^(uvloop|asyncio)$", description=(
        "the event loop of a worker's shadow calls: uvloop (about 12 % less CPU per comparison; "
        "asyncio's own where uvloop is not installed) or asyncio"))
    shadow_timeout: float = Field(45.0, gt=0, description=(
        "seconds per shadow model call (twice this: how long a lost Message Batch create is looked "
        "for before it is sent again)"))
    shadow_api_key: SecretStr | None = Field(
        None, description="the key shadow, judge and batch calls use (else ANTHROPIC_API_KEY)")
    shadow_platform: str = Field("anthropic", description=(
        "where workers call models: anthropic, bedrock (AnthropicBedrock) or vertex (AnthropicVertex)"))
    shadow_max_attempts: int = Field(6, gt=0)
    retry_after_cap: float = Field(30.0, gt=0)
    visibility_timeout: int = Field(60, gt=0)
    metrics_port: int = Field(9464, ge=0, le=65535, description="worker /metrics port (0: off)")
    metrics_host: str = Field("0.0.0.0", description="interface /metrics, /livez and /readyz listen on")
    compare_timeout: float = Field(10.0, gt=0, description=(
        "seconds one comparison may take off the worker's event loop (else comparator_timeout)"))
    # Verdicts exported over OTLP/HTTP (tierguard.otlp); unset: off.
    otlp_endpoint: str | None = Field(None, description=(
        "OTLP/HTTP base URL (``/v1/traces`` is appended unless the URL ends with it) every recorded "
        "comparison and route change is exported to as a span; unset: nothing is exported"))
    otlp_headers: SecretStr | None = Field(None, description=(
        "headers sent with each export, ``key=value`` pairs separated by commas (values "
        "percent-decoded), e.g. ``authorization=Bearer x``; never logged"))
    otlp_service_name: str = Field("tierguard", min_length=1, description=(
        "the spans' service.name (and Phoenix's project, openinference.project.name)"))
    otlp_queue_max: int = Field(8192, gt=0, description="spans waiting for export per process; "
                                "beyond: dropped and counted")
    otlp_timeout: float = Field(5.0, gt=0, description="seconds one export request may take")
    # Beat.
    alert_sweep_seconds: float = Field(15.0, gt=0, description="alert redelivery sweep period")
    monitor_seconds: float = Field(60.0, gt=0, description="monitor-blind / error-rate checks")
    maintain_seconds: float = Field(3600.0, gt=0, description="counters folded, retention applied")
    batch_poll_seconds: float = Field(30.0, gt=0, description="batch shadows sent and collected")
    models_poll_seconds: float = Field(86_400.0, gt=0, description=(
        "the API's model list read (GET /v1/models; also once when beat starts)"))

    @field_validator("shadow_platform")
    @classmethod
    def _platform(cls, v: str) -> str:
        if v not in ("anthropic", "bedrock", "vertex"):
            raise ValueError(f"TIERGUARD_SHADOW_PLATFORM: {v!r} is not anthropic, bedrock or vertex")
        return v

    @field_validator("worker_gc_threshold")
    @classmethod
    def _gc_threshold(cls, v: int) -> int:
        if 0 < v < 700:
            raise ValueError(f"TIERGUARD_WORKER_GC_THRESHOLD: {v} is below Python's own 700 (collections "
                             "would run more often, not less); 0 keeps Python's own")
        return v

    @model_validator(mode="after")
    def _passwords_into_urls(self) -> Settings:
        if self.database_password is not None:
            self.database_url = with_password(self.database_url,
                                              self.database_password.get_secret_value())
        if self.redis_password is not None:
            self.redis_url = with_password(self.redis_url, self.redis_password.get_secret_value())
        return self


ANTHROPIC_API = "https://api.anthropic.com"


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` (percent-encoded, so ``@ : / # %`` are safe) as its password."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0].partition(":")[0] if "@" in parts.netloc else ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: what logs, errors and outputs show."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def upstream_url(settings: Settings) -> str:
    """``TIERGUARD_UPSTREAM_URL``, else this process's ``ANTHROPIC_BASE_URL``, else Anthropic's API."""
    return (settings.upstream_url or os.environ.get("ANTHROPIC_BASE_URL") or ANTHROPIC_API).rstrip("/")


def get_settings(**overrides: object) -> Settings:
    """Read the environment now; keyword arguments win over it."""
    return Settings(**overrides)  # type: ignore[arg-type]
