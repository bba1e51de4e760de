"""The simulated Messages API over HTTP (a stdlib ``ThreadingHTTPServer``).

The API (as the ``anthropic`` SDK calls it; errors are ``{"type": "error", "error": {...}}``):

- ``POST /v1/messages`` (streamed or not), ``POST /v1/messages/count_tokens``, ``GET /v1/models``
  (paged, ``sim.catalog``);
  Bedrock's and Vertex's Messages paths, streamed as each streams (``sim.platforms``).
- ``POST /v1/chat/completions`` (OpenAI-compatible, streamed or not; ``sim/chat``): the same answers.
- Message Batches (``ops.sim_batches``): ``POST /v1/messages/batches`` ``{"requests":
  [{"custom_id", "params"}]}``; ``GET /v1/messages/batches`` (``limit``, ``after_id``,
  ``before_id``); ``GET /v1/messages/batches/{id}``; ``POST /v1/messages/batches/{id}/cancel``;
  ``DELETE /v1/messages/batches/{id}`` (ended batches); ``GET /v1/messages/batches/{id}/results``
  (JSON lines; ``results_url`` points there, built from the request's ``Host``).
- Rate limits (``ops.sim_buckets``): a model with buckets for the caller's key (``X-Api-Key``
  or ``Authorization: Bearer``) answers 429 ``rate_limit_error`` with ``retry-after`` and
  ``retry-after-ms`` when a bucket is short, and every answer carries the
  ``anthropic-ratelimit-*`` headers. Batches and count_tokens take nothing from them.

Test controls:

- ``POST /_sim/fail`` ``{"status", "count", "delay", "retry_after", "judge"}``: fail the next calls
  (``retry_after``: seconds, or a string sent as the header's value).
- ``POST /_sim/ratelimit`` ``{"model", "limit", "remaining", "reset_in"}``: fixed headers for a
  model without buckets.
- ``POST /_sim/batches`` ``{"delay_s", "cancel_delay_s", "error_rate", "errored", "error_type":
  "api_error"|"overloaded_error", "expired"}`` (all optional): timing of batches created after;
  the next ``errored``/``expired`` batch requests processed end so.
- ``POST /_sim/buckets`` ``{"model", "requests_per_minute", "input_tokens_per_minute",
  "output_tokens_per_minute", "time_scale", "key"}`` or ``{"model", "key"?, "clear": true}``:
  set (full again) or drop a model's buckets, or one key's override.
- ``POST /_sim/script`` ``{"snapshots": {MODEL: NAME}, "categories": {CAT: {"agreement", "broken",
  "models": {MODEL: {"agreement", "broken"}}}}, "models": [MODEL]}`` (all optional; ``models``: listed
  by ``GET /v1/models`` from now on): from now on, answers report
  ``NAME`` as their ``model`` (a new snapshot behind the alias) and a category's candidates (or a
  listed model, the reference included) answer right with that probability (``sim.models``);
  ``broken: {rate, kinds}`` (``null``: none) makes that share of their answers ``invalid``,
  ``refusal``, ``truncated`` or ``empty`` (``sim.broken``), streamed or not alike.
- ``GET /_sim/stats``: ``requests``, ``candidate_calls``, ``in_flight``, ``in_flight_max``,
  ``streams``, ``recent_headers``, ``batches`` (``created``, ``ended``, ``canceled``,
  ``requests``, ``results``), ``served`` and ``rate_limited`` per model, and ``by_key``
  (``{fingerprint: {model: {"served", "rate_limited"}}}``).
- ``GET /_sim/requests``: the latest ``/v1/messages`` (and chat) requests as received, oldest first:
  ``{"requests": [{"headers": {anthropic-beta, content-encoding, x-tierguard-*}, "body": TEXT,
  "path", "auth" (the credential's scheme), "platform", "model_id"}]}`` (Bedrock's and Vertex's
  paths too: ``sim.platforms``).
  Bodies are checked as the API checks them: unknown keys, beta fields without an
  ``anthropic-beta`` header and non-numeric sampling parameters are a 400 naming the field.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tierguard.contract.messages import content_text
from tierguard.sim import catalog
from tierguard.sim.batches import BatchError, BatchStore
from tierguard.sim.buckets import BucketStore, fingerprint
from tierguard.sim.chat import CHAT_PATH, as_messages, chat_problem, chunks, completion
from tierguard.sim.models import Scenario, Simulator
from tierguard.sim.platforms import TOKEN_PATH, PlatformCall, encoded_stream, oauth_token, platform_call

BATCH_PATH = re.compile(r"^/v1/messages/batches(?:/([^/]+)(?:/(results|cancel))?)?$")
FAMILY_WORDS = {"requests": "requests", "input-tokens": "input tokens", "output-tokens": "output tokens"}

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               529: "overloaded_error"}


def message_body(model: str, text: str, input_tokens: int, content: list[dict[str, Any]] | None = None,
                 stop_reason: str | None = None) -> dict[str, Any]:
    content = content if content is not None else [{"type": "text", "text": text}]
    tool = any(b.get("type") == "tool_use" for b in content)
    size = len(json.dumps(content)) if tool else len(text)
    return {"id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
            "model": model, "content": content,
            "stop_reason": stop_reason or ("tool_use" if tool else "end_turn"),
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": max(1, size // 4)}}


def input_tokens(body: dict[str, Any]) -> int:
    chars = len(json.dumps(body.get("messages"))) + len(content_text(body.get("system", "")))
    return max(1, chars // 4)


# The Messages API's body keys; BETA_KEYS only with an ``anthropic-beta`` header, others refused.
BODY_KEYS = {"model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature",
             "top_k", "top_p", "tools", "tool_choice", "metadata", "thinking", "service_tier",
             "output_config", "inference_geo", "cache_control", "container", "diagnostics", "speed",
             "user_profile_id", "workspace_id"}
BETA_KEYS = {"context_management", "mcp_servers", "output_format"}
_NUMBERS = {"temperature": float, "top_p": float, "top_k": int}


def request_problem(body: Any, betas: str | None = None) -> str | None:
    """Why a Messages API body cannot be answered, or None (as the API says it, field first)."""
    if not isinstance(body, dict) or not body.get("model") or not body.get("messages") \
            or not body.get("max_tokens"):
        return "model, messages and max_tokens are required"
    for key in body:
        if key in BETA_KEYS and not betas:
            return f"{key}: this field needs a beta (the anthropic-beta header)"
        if key not in BODY_KEYS and key not in BETA_KEYS:
            return f"{key}: Extra inputs are not permitted"
    for key, kind in _NUMBERS.items():
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or (kind is int and not isinstance(value, int))):
            return f"{key}: Input should be a valid {'integer' if kind is int else 'number'}"
    return None


def is_judging(body: dict[str, Any]) -> bool:
    return any(isinstance(t, dict) and t.get("name") == "tierguard_verdict" for t in body.get("tools") or [])


def build_message(sim: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    """The Message that ``POST /v1/messages`` answers ``body`` with (also each batch request)."""
    if is_judging(body):
        return message_body(sim.snapshot(body["model"]), "", input_tokens(body), content=sim.judge(body))
    reply = sim.reply(body)[1]
    return message_body(sim.snapshot(body["model"]), reply.text, input_tokens(body), reply.content,
                        reply.stop_reason)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: SimServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("request-id", "req_" + uuid.uuid4().hex[:16])
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, events: list[bytes], pause_s: float, headers: dict[str, str] | None = None,
                ctype: str = "text/event-stream") -> None:
        """Chunked, one write per event, as the API streams; a client that leaves aborts it."""
        sim = self.server.sim
        self.send_response(200)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", "req_" + uuid.uuid4().hex[:16])
        self.end_headers()
        try:
            for event in events:
                if pause_s:
                    time.sleep(pause_s)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:  # broken pipe, reset: the caller went away mid-stream
            self.close_connection = True
            with sim.lock:
                sim.streams["aborted"] += 1
            return
        with sim.lock:
            sim.streams["completed"] += 1

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _error(self, status: int, message: str, retry_after: float | str | None = None,
               headers: dict[str, str] | None = None) -> None:
        headers = dict(headers or {})
        if retry_after is not None:  # (a string goes as it is: an HTTP date, or one unreadable)
            headers["retry-after"] = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
        self._json(status, {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"),
                                                        "message": message}}, headers)

    def _base_url(self) -> str:
        host = self.headers.get("Host")
        return f"http://{host}" if host else self.server.base_url

    def _api_key(self) -> str:
        auth = self.headers.get("Authorization") or ""
        return self.headers.get("X-Api-Key") or (auth[7:] if auth.lower().startswith("bearer ") else "")

    def _body_bytes(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        self.raw_body = self.rfile.read(n) or b"{}"
        return self.raw_body

    def _body(self) -> Any:
        return json.loads(self._body_bytes())

    def do_GET(self) -> None:  # noqa: N802
        sim = self.server.sim
        if self.path == "/_sim/stats":
            batches = self.server.batches.stats()  # may answer due batch requests: before sim.lock
            with sim.lock:
                stats = {"requests": [{"model": m, "category": c, "count": n}
                                      for (m, c), n in sorted(sim.requests.items())],
                         "candidate_calls": dict(sim.candidate_calls),
                         "in_flight": sim.in_flight, "in_flight_max": sim.in_flight_max,
                         "streams": dict(sim.streams),
                         "recent_headers": list(sim.recent_headers)}
            return self._json(200, {**stats, "batches": batches, **self.server.buckets.stats()})
        if self.path == "/_sim/requests":
            with sim.lock:
                return self._json(200, {"requests": list(sim.recent_requests)})
        url = urlsplit(self.path)
        if found := BATCH_PATH.match(url.path):
            return self._batch_call("GET", found, dict(parse_qsl(url.query)))
        if url.path == "/v1/models":  # sim.catalog: the models it knows, paged
            try:
                return self._json(200, catalog.page(sim.listed(), dict(parse_qsl(url.query))))
            except catalog.PageError as err:
                return self._error(400, str(err))
        self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        sim = self.server.sim
        if self.path == TOKEN_PATH:  # Google's OAuth refresh (a form body): any request gets a token
            self._body_bytes()
            return self._json(200, oauth_token())
        try:
            body = self._body()
        except ValueError:
            return self._error(400, "body is not JSON")
        if self.path == "/_sim/ratelimit":  # {"model", "limit", "remaining", "reset_in"}: its headers
            with sim.lock:
                sim.ratelimits[body["model"]] = (int(body["limit"]), int(body["remaining"]),
                                                 float(body.get("reset_in", 60)))
            return self._json(200, {"models": sorted(sim.ratelimits)})
        if self.path == "/_sim/fail":  # {"status", "count", "delay", "retry_after", "judge": only judges}
            queue = sim.forced_judge if body.get("judge") else sim.forced
            with sim.lock:
                for _ in range(int(body.get("count", 1))):
                    queue.append((int(body.get("status", 500)), float(body.get("delay", 0)),
                                  body.get("retry_after")))
            return self._json(200, {"queued": len(queue)})
        if self.path == "/_sim/script":
            try:
                return self._json(200, sim.script(body))
            except (ValueError, TypeError, AttributeError, KeyError) as err:
                return self._error(400, f"script: {err}")
        if self.path in ("/_sim/batches", "/_sim/buckets"):
            try:
                if self.path == "/_sim/batches":
                    return self._json(200, self.server.batches.script(body))
                return self._json(200, self.server.buckets.configure(body))
            except BatchError as err:
                return self._error(err.status, err.message)
            except (ValueError, TypeError, AttributeError) as err:
                return self._error(400, str(err))
        path = urlsplit(self.path).path
        if found := BATCH_PATH.match(path):
            return self._batch_call("POST", found, body)
        if call := platform_call(path, body):  # Bedrock's and Vertex's paths name the model
            return self._messages(call.body, call)
        if path == "/v1/messages/count_tokens":
            return self._json(200, {"input_tokens": input_tokens(body)})
        if path not in ("/v1/messages", CHAT_PATH):
            return self._error(404, f"no route {self.path}")
        self._messages(body, chat=path == CHAT_PATH)

    def do_DELETE(self) -> None:  # noqa: N802
        try:
            self._body()  # read whatever was sent, to keep the connection usable
        except ValueError:
            pass
        if found := BATCH_PATH.match(urlsplit(self.path).path):
            return self._batch_call("DELETE", found, None)
        self._error(404, f"no route {self.path}")

    def _batch_call(self, method: str, found: re.Match[str], arg: Any) -> None:
        batches, base = self.server.batches, self._base_url()
        batch_id, action = found.groups()
        route = (method, bool(batch_id), action)
        try:
            if route == ("GET", True, "results"):
                binary = "binary" in (self.headers.get("Accept") or "")
                return self._send(200, batches.results(batch_id),
                                  "application/binary" if binary else "application/x-jsonl")
            if route == ("GET", True, None):
                return self._json(200, batches.retrieve(batch_id, base))
            if route == ("GET", False, None):
                return self._json(200, batches.list(arg, base))
            if route == ("POST", False, None):
                return self._json(200, batches.create(arg, base))
            if route == ("POST", True, "cancel"):
                return self._json(200, batches.cancel(batch_id, base))
            if route == ("DELETE", True, None):
                return self._json(200, batches.delete(batch_id))
        except BatchError as err:
            return self._error(err.status, err.message)
        self._error(405, f"{method} {self.path} is not supported")

    def _messages(self, body: Any, call: PlatformCall | None = None, chat: bool = False) -> None:
        sim, buckets = self.server.sim, self.server.buckets
        headers = {k.lower(): v for k, v in self.headers.items()}
        with sim.lock:
            sim.recent_headers.append(headers)
            sim.recent_requests.append({"headers": {k: v for k, v in headers.items() if k in (
                "anthropic-beta", "content-encoding") or k.startswith("x-tierguard")},
                "body": self.raw_body.decode("utf-8", "replace"), "path": urlsplit(self.path).path,
                # the credential's scheme only (AWS4-HMAC-SHA256, Bearer), never the credential
                "auth": (headers.get("authorization") or "").partition(" ")[0],
                "platform": call.platform if call else "anthropic",
                "model_id": call.model_id if call else (body if isinstance(body, dict) else {}).get("model")})
        asked = body  # a chat request is answered as its Messages reading (sim/chat)
        if chat and (problem := chat_problem(body)):
            return self._error(400, problem)
        body = as_messages(body) if chat else body
        if problem := request_problem(body, headers.get("anthropic-beta")):
            return self._error(400, problem)
        model, key = body["model"], fingerprint(self._api_key())
        gate = buckets.admit(key, model, input_tokens(body))
        if gate and gate.retry_after is not None:
            wait, fam = gate.retry_after, gate.family
            limit = gate.headers[f"anthropic-ratelimit-{fam}-limit"]
            return self._error(429, f"This request would exceed the rate limit for {model} of {limit} "
                                    f"{FAMILY_WORDS[fam]} per minute; retry after {wait:.3g} s",
                               headers={**gate.headers, "retry-after": str(max(1, math.ceil(wait))),
                                        "retry-after-ms": str(max(1, math.ceil(wait * 1000)))})
        failure = sim.next_failure(judge=is_judging(body))
        with sim.lock:
            sim.in_flight += 1
            sim.in_flight_max = max(sim.in_flight_max, sim.in_flight)
        try:
            if sim.scenario.latency_ms:
                time.sleep(sim.scenario.latency_ms / 1000)
        finally:
            with sim.lock:
                sim.in_flight -= 1
        if failure:
            status, delay, retry_after = failure
            time.sleep(delay)
            if status:
                return self._error(status, "simulated failure", retry_after, gate.headers if gate else None)
        msg = build_message(sim, body)
        if call is not None:  # answered as the model the id spells, named as the caller named it
            msg["model"] = call.model_id
        if gate:
            limits = buckets.finish(key, model, msg["usage"]["output_tokens"])
        else:
            limits = sim.ratelimit_headers(model)
        buckets.note_served(key, model)
        if chat:
            pause = sim.scenario.stream_event_ms / 1000
            return self._stream(chunks(msg, asked), pause, limits) if asked.get("stream") else \
                self._json(200, completion(msg), limits)
        if body.get("stream"):
            ctype, events = encoded_stream(msg, call)
            return self._stream(events, sim.scenario.stream_event_ms / 1000, limits, ctype)
        self._json(200, msg, limits)


class SimServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, scenario: Scenario, host: str = "127.0.0.1", port: int = 0):
        self.sim = Simulator(scenario)
        self.batches = BatchStore(scenario, answer=self._answer_batch_request)
        self.buckets = BucketStore(scenario.rate_limits, scenario.time_scale)
        super().__init__((host, port), _Handler)

    def _answer_batch_request(self, params: dict[str, Any]) -> dict[str, Any]:
        if problem := request_problem(params):
            raise ValueError(problem)
        return build_message(self.sim, params)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start_background(self) -> SimServer:
        threading.Thread(target=self.serve_forever, name="tierguard-sim", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
