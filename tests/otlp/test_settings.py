"""TIERGUARD_OTLP_* as read from the environment, and what goes on the wire: a local HTTP server
records the requests as a collector would receive them."""

from __future__ import annotations

import gzip
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tierguard.config import get_settings
from tierguard.errors import ConfigError
from tierguard.otlp.exporter import from_settings, parse_headers, traces_url


def test_export_is_off_unless_an_endpoint_is_set(monkeypatch):
    monkeypatch.delenv("TIERGUARD_OTLP_ENDPOINT", raising=False)
    assert from_settings(get_settings()) is None
    monkeypatch.setenv("TIERGUARD_OTLP_ENDPOINT", "")  # compose passes it on empty when unset
    assert from_settings(get_settings()) is None
    monkeypatch.setenv("TIERGUARD_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("TIERGUARD_OTLP_HEADERS", "authorization=Bearer%20abc, x-team = ml")
    monkeypatch.setenv("TIERGUARD_OTLP_SERVICE_NAME", "tierguard-prod")
    exporter = from_settings(get_settings())
    assert exporter is not None and exporter.url == "http://collector:4318/v1/traces"
    assert exporter.headers["authorization"] == "Bearer abc" and exporter.headers["x-team"] == "ml"
    assert exporter.service_name == "tierguard-prod" and exporter.queue_max == 8192


def test_urls_and_headers():
    assert traces_url("https://otel.example:4318/") == "https://otel.example:4318/v1/traces"
    assert traces_url("http://phoenix:6006/v1/traces") == "http://phoenix:6006/v1/traces"
    assert parse_headers("") == {} and parse_headers("a=b=c") == {"a": "b=c"}


@pytest.mark.parametrize("name, value, field", [
    ("TIERGUARD_OTLP_ENDPOINT", "collector:4318", "otlp_endpoint"),
    ("TIERGUARD_OTLP_HEADERS", "authorization: Bearer sekrit", "otlp_headers"),
])
def test_a_bad_setting_is_an_error_naming_the_field_and_never_the_secret(monkeypatch, name, value, field):
    monkeypatch.setenv("TIERGUARD_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        from_settings(get_settings())
    assert field in str(err.value) and "sekrit" not in str(err.value)


class Collector(BaseHTTPRequestHandler):
    received: list[tuple[Any, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Collector.received.append((self.headers, body))  # names case-insensitive
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_one_gzipped_protobuf_request_with_the_headers_and_the_service_name(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TIERGUARD_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("TIERGUARD_OTLP_HEADERS", "authorization=Bearer abc")
    monkeypatch.setenv("TIERGUARD_OTLP_SERVICE_NAME", "tg-wire")
    exporter = from_settings(get_settings())
    rows = [{"job_id": uuid.uuid4().hex, "category": "c", "served_model": "a", "shadow_model": "b"}
            for _ in range(3)]
    exporter.submit(rows)
    assert exporter.flush(10)
    server.shutdown()
    [(headers, body)] = Collector.received
    assert headers["Content-Type"] == "application/x-protobuf" and headers["Content-Encoding"] == "gzip"
    assert headers["authorization"] == "Bearer abc"
    request = ExportTraceServiceRequest.FromString(gzip.decompress(body))
    [resource_spans] = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource == {"service.name": "tg-wire", "openinference.project.name": "tg-wire"}
    [scope] = resource_spans.scope_spans
    assert scope.scope.name == "tierguard"
    assert [s.trace_id.hex() for s in scope.spans] == [r["job_id"] for r in rows]
