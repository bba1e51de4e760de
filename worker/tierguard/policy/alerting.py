"""The policy's ``alerts`` key: channels (where alerts go), severities and the monitors' limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tierguard.policy.base import Strict, unit

EVENT_KINDS = ("demoted", "promoted", "eligible", "pin_expired", "flap_guard", "monitor_blind",
               "error_rate", "noise_floor", "policy_invalid", "shadows_paused", "sentinel_failed", "test",
               "evidence_reset", "rollout", "model_retiring", "model_retired")
Severity = Literal["info", "warning", "critical"]
SEVERITIES: dict[str, str] = {
    "demoted": "critical", "flap_guard": "critical", "monitor_blind": "warning",
    "error_rate": "warning", "noise_floor": "warning", "eligible": "info", "promoted": "info",
    "pin_expired": "info", "policy_invalid": "warning", "shadows_paused": "warning", "test": "info",
    "sentinel_failed": "warning", "evidence_reset": "info", "rollout": "info",
    "model_retiring": "warning", "model_retired": "warning"}
_REQUIRED = {"webhook": "url", "slack": "webhook_url_env", "pagerduty": "routing_key_env",
             "alertmanager": "url"}


class Channel(Strict):
    """Where alerts go. Secrets are named by environment variable, never written here."""

    type: Literal["webhook", "slack", "pagerduty", "alertmanager", "grafana"]
    name: str | None = None
    url: str | None = None
    url_env: str | None = None          # grafana: default GRAFANA_URL
    secret_env: str | None = None       # webhook: HMAC-SHA256 key
    webhook_url_env: str | None = None  # slack
    routing_key_env: str | None = None  # pagerduty
    token_env: str | None = None        # grafana: default GRAFANA_TOKEN
    dashboard_uid: str = "tierguard"
    events: list[str] | None = None     # default: every event (grafana: route changes)
    min_severity: Severity = "info"
    timeout: float = Field(10.0, gt=0, le=120)

    @field_validator("events")
    @classmethod
    def _known_events(cls, v: list[str] | None) -> list[str] | None:
        for kind in v or []:
            if kind not in EVENT_KINDS:
                raise ValueError(f"unknown event {kind!r} (one of {', '.join(EVENT_KINDS)})")
        return v

    @model_validator(mode="after")
    def _required(self) -> Channel:
        need = _REQUIRED.get(self.type)
        if need and not getattr(self, need):
            raise ValueError(f"{need}: required for a {self.type} channel")
        return self

    def wants(self, kind: str, severity: str) -> bool:
        order = ["info", "warning", "critical"]
        if order.index(severity) < order.index(self.min_severity):
            return False
        events = self.events
        if events is None and self.type == "grafana":
            events = ["demoted", "promoted", "flap_guard", "pin_expired", "test"]
        return events is None or kind in events


class Alerting(Strict):
    channels: list[Channel] = []
    severities: dict[str, Severity] = {}
    dashboard_url: str | None = None
    blind_minutes: float = Field(15, gt=0)
    error_rate_limit: float = 0.2
    error_window_minutes: float = Field(15, gt=0)
    give_up_hours: float = Field(48, gt=0)

    _unit_fields = field_validator("error_rate_limit")(unit)

    @field_validator("severities")
    @classmethod
    def _known(cls, v: dict[str, str]) -> dict[str, str]:
        for kind in v:
            if kind not in EVENT_KINDS:
                raise ValueError(f"unknown event {kind!r} (one of {', '.join(EVENT_KINDS)})")
        return v

    @model_validator(mode="after")
    def _names(self) -> Alerting:
        seen: dict[str, int] = {}
        named = []
        for ch in self.channels:
            name = ch.name or ch.type
            seen[name] = seen.get(name, 0) + 1
            if ch.name and seen[name] > 1:
                raise ValueError(f"channels: name {name!r} is used twice")
            named.append(ch if ch.name else ch.model_copy(
                update={"name": name if seen[name] == 1 else f"{name}-{seen[name]}"}))
        object.__setattr__(self, "channels", named)
        return self

    def severity(self, kind: str) -> str:
        return self.severities.get(kind) or SEVERITIES[kind]
