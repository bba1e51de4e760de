"""``tierguard gateway``: Anthropic's API for any app, routed and shadowed by category.

A plain ASGI app (served by uvicorn). ``POST /v1/messages`` with the category
header gets its ``model`` from the category's route and is sampled through the
same :class:`~tierguard.app.core.Core` as the SDK wrapper; so is the OpenAI-compatible
``POST /v1/chat/completions``, routed and shadowed as its Messages equivalent
(:mod:`~tierguard.app.openai_compat`; one without is served as sent, ``untranslatable``).
Everything else passes through unchanged. The caller's own credentials and headers go upstream;
the gateway stores none and logs none. Responses (status, headers other than hop-by-hop ones,
body) are relayed as they arrive, streams event by event; a sampled streamed answer is assembled
on the side and shadowed once it reaches ``message_stop``. A caller that leaves mid-stream
cancels the upstream request. A category with answer checks has its cheap rungs' answers read
whole first and escalated when they fail (:mod:`~tierguard.app.escalating`).

Request bodies are read up to ``TIERGUARD_GATEWAY_MAX_BODY`` (a larger one, or a ``Content-Length``
announcing one, is an Anthropic-shaped 413 and nothing goes upstream); a caller that leaves
mid-body sends nothing upstream. A routed body goes upstream byte for byte as the caller sent it
but for the value of its top-level ``model`` (rewritten in place, or inserted first when absent);
when the route keeps the caller's model the bytes are untouched. A ``gzip``/``deflate`` body is
decoded (the limit applies to the decoded size too), routed and shadowed, and goes upstream
decoded, without ``content-encoding`` (see :mod:`~tierguard.app.upstream`). Bodies above
``OFF_LOOP`` bytes (and every encoded one) are decoded, parsed, routed and rewritten on a worker
thread, so the event loop keeps serving while one is read. Other paths keep the API's larger
limits where it has them (batches, files).

Bounded (issue 25): the request head must come within ``TIERGUARD_GATEWAY_HEADER_TIMEOUT``
and a process holds at most ``TIERGUARD_GATEWAY_MAX_CLIENTS`` callers (see
:mod:`~tierguard.app.admission`); the body within ``TIERGUARD_GATEWAY_BODY_TIMEOUT`` (else a
408, nothing upstream); a routed body nested deeper than ``TIERGUARD_GATEWAY_MAX_JSON_DEPTH``
is a 400 before it is parsed. Each upstream request has ``TIERGUARD_GATEWAY_DEADLINE`` in all,
streamed answers included: past it, a 504 before the answer's headers, a cut answer after
(see :mod:`~tierguard.app.relay`). A caller that leaves before the answer's headers cancels
the upstream request and is not shadowed. Every refusal is counted in ``/tierguard/stats``
and logged once.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from typing import Any

from tierguard import metrics
from tierguard.app import admission, escalating, escalation
from tierguard.app.admission import error_body
from tierguard.app.core import Core
from tierguard.app.deadline import Deadline
from tierguard.app.express import SAMPLED, Lane
from tierguard.app.forwarding import Forwarding
from tierguard.app.naming import body_category, names_by_user, path_category
from tierguard.app.openai_compat import Untranslatable, messages_request
from tierguard.app.platform_gateway import invoke_path, route_platform_call
from tierguard.app.relay import (
    HOP_BY_HOP,
    CallerLeft,
    ChatWatch,
    Watch,
    caller_key,
    caller_scope,
    content_codings,
    declared,
    heard,
    maybe_off_loop,
    read_body,
    request_target,
    respond,
    shaping,
    uncompressed,
    upstream_headers,
)
from tierguard.app.upstream import OFF_LOOP, TooDeep, TooLarge, Upstream, parse_request, with_model
from tierguard.config import Settings, get_settings, mask_url, upstream_url

log = logging.getLogger(__name__)

# Paths whose API limit is above the Messages API's: they keep their own (bytes), and get time for
# their bodies in proportion (TIERGUARD_GATEWAY_BODY_TIMEOUT per 32 MiB).
_LARGER_LIMITS = (("/v1/messages/batches", 256_000_000), ("/v1/files", 500_000_000))
_MESSAGES_LIMIT = 32 * 1024 * 1024
CHAT_PATH = "/v1/chat/completions"  # OpenAI-compatible: routed and shadowed as its Messages equivalent
__all__ = ["Gateway", "create_app", "error_body", "HOP_BY_HOP"]


class Gateway(Forwarding):
    """The ASGI app. ``core`` (policy, routes, publisher) is made at startup unless given."""

    def __init__(self, settings: Settings | None = None, core: Core | None = None):
        self.settings = settings or get_settings()
        self.core = core
        self.upstream: Upstream | None = None
        self.header = self.settings.category_header.lower().encode()
        self.door = admission.configure(self.settings)
        self.lane: Lane | None = None  # the express lane (app/express), once started

    async def startup(self) -> None:
        s = self.settings
        admission.raise_fd_limit(s.gateway_max_clients + s.gateway_max_connections + admission.FD_MARGIN)
        if self.core is None:
            self.core = await asyncio.to_thread(Core, s)
        self.core.check_fork()  # its refresher keeps /readyz honest before any request
        self.upstream = Upstream(upstream_url(s), s.gateway_max_connections, s.gateway_timeout,
                                 s.gateway_client)
        if self.upstream.proxy:
            log.info("upstream through the proxy %s", mask_url(self.upstream.proxy))
        if s.gateway_express and self.upstream.lean is not None:
            self.lane = Lane(self)
        gc.collect()  # what start-up made (modules, SDK types) is kept out of every later collection,
        gc.freeze()  # so a large body's objects do not make the collector walk them all on the loop

    async def shutdown(self) -> None:
        self.lane = None
        if self.upstream is not None:
            await self.upstream.aclose()
        if self.core is not None:
            await asyncio.to_thread(self.core.close)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            if scope["method"] == "GET" and scope["path"] in ("/healthz", "/readyz", "/tierguard/stats",
                                                              "/metrics"):
                await self._local(scope["path"], send)
            else:
                await self._http(scope, receive, send)

    async def _http(self, scope: dict, receive: Any, send: Any) -> None:
        core = self.core
        assert core is not None
        method, (path, named) = scope["method"], path_category(scope["path"])
        try:
            target = request_target(scope)
        except ValueError as err:
            return await self._refuse(send, "bad_target", 400, "invalid_request_error", str(err))
        limit = self._limit(method, path)
        wait = self.settings.gateway_body_timeout * max(1.0, limit / _MESSAGES_LIMIT)
        try:
            with Deadline.after(wait):
                body = await read_body(receive, limit, declared(scope["headers"]))
        except TooLarge:
            return await self._too_large(send, limit)
        except CallerLeft:  # nothing reaches the upstream: the request was never whole
            core.left()
            return None
        except TimeoutError:
            return await self._refuse(send, "body_timeout", 408, "timeout_error", close=True,
                                      why=f"the request body did not arrive within {wait:g} s "
                                          f"(TIERGUARD_GATEWAY_BODY_TIMEOUT)")
        headers, category = upstream_headers(scope["headers"], self.header)
        category = category or named  # the header wins over a /c/CATEGORY/ path prefix
        if method == "POST" and path == "/v1/messages" and names_by_user(body):  # stripped, always
            by_user, body = await maybe_off_loop(len(body) > OFF_LOOP, body_category, body)
            category = category or by_user
        if method == "POST" and path in ("/v1/messages", CHAT_PATH):
            if category and not core.tenant_refuses(category, caller_key(headers)):
                return await self._messages(scope, category, target, headers, body, receive, send,
                                            chat=path == CHAT_PATH)
            if not category:
                core.uncategorized()
        if method == "POST" and (invoke := invoke_path(path)) is not None:  # Bedrock's or Vertex's
            return await self._platform(scope, invoke, category, target, headers, body, receive, send)
        await self._relay(scope, method, target, headers, body, receive, send)
        return None

    def _limit(self, method: str, path: str) -> int:
        limit = self.settings.gateway_max_body
        for prefix, larger in _LARGER_LIMITS:
            if method == "POST" and path.startswith(prefix):
                return max(limit, larger)
        return limit

    async def _too_large(self, send: Any, limit: int) -> None:
        self.core.counts["too_large"] += 1  # type: ignore[union-attr]
        metrics.REFUSED.labels("too_large").inc()
        await respond(send, 413, error_body(f"request body is larger than the gateway's limit of "
                                            f"{limit} bytes (TIERGUARD_GATEWAY_MAX_BODY)",
                                            "request_too_large"))

    async def _refuse(self, send: Any, kind: str, status: int, error: str, why: str,
                      close: bool = False) -> None:
        """Answer a refused request with the API's error shape; counted, logged once."""
        self.core.refuse(kind, "%s", why)  # type: ignore[union-attr]
        await respond(send, status, error_body(why, error), close=close)

    async def _messages(self, scope: dict, name: str, target: str, headers: list, body: bytes,
                        receive: Any, send: Any, chat: bool = False) -> None:
        core = self.core
        assert core is not None
        codings = content_codings(headers)
        try:
            cat, routed, forwarded = await maybe_off_loop(
                len(body) > OFF_LOOP or bool(codings), self._route_body, name, body, codings, chat)
        except Untranslatable as err:  # served as sent: unrouted, unshadowed
            core.refuse("untranslatable", "an OpenAI-compatible request has no Messages equivalent "
                        "(%s): served as sent, not routed nor shadowed", err)
            await self._relay(scope, "POST", target, headers, body, receive, send)
            return None
        except TooLarge:
            return await self._too_large(send, self.settings.gateway_max_body)
        except TooDeep as err:
            return await self._refuse(send, "json_too_deep", 400, "invalid_request_error",
                                      f"the request body's JSON nests deeper than the gateway's limit "
                                      f"of {err.limit} levels (TIERGUARD_GATEWAY_MAX_JSON_DEPTH)")
        except (ValueError, RecursionError):  # let the API say what is wrong with it
            core.uncategorized("unreadable_body")
            await self._relay(scope, "POST", target, headers, body, receive, send)
            return None
        if cat is None:
            await self._relay(scope, "POST", target, headers, body, receive, send)
            return None
        # Every answer is read on the side (its usage: production's tokens, measured; the whole
        # answer when sampled): ask for it uncompressed. The body goes decoded.
        headers = uncompressed(headers, decoded=bool(codings))
        await self._routed(scope, cat, routed, target, headers, forwarded, receive, send, chat)
        return None

    async def _platform(self, scope: dict, invoke: Any, name: str | None, target: str, headers: list,
                        body: bytes, receive: Any, send: Any) -> None:
        """A Bedrock or Vertex Messages call, routed by the model in its path (app/platform_gateway)."""
        via = await maybe_off_loop(len(body) > OFF_LOOP, route_platform_call, self.core, invoke, name,
                                    target, headers, body)
        if via is None:
            await self._relay(scope, "POST", target, headers, body, receive, send)
        else:
            await self._routed(scope, via.cat, via.routed, via.target, via.headers, body, receive, send,
                              via=via)

    def _route_body(self, name: str, body: bytes, codings: list[str],
                    chat: bool = False) -> tuple[Any, dict, bytes]:
        """(category, routed request, the bytes to send) for a Messages body (TooLarge, TooDeep or
        ValueError if it cannot be read); the caller's bytes unless the route changes ``model``.
        With ``chat`` the routed request is the chat body's Messages equivalent (Untranslatable)."""
        s = self.settings
        parsed = parse_request(body, codings, s.gateway_max_body, s.gateway_max_json_depth)
        request = messages_request(parsed.request) if chat else parsed.request
        cat, routed = self.core.route(name, request)  # type: ignore[union-attr]
        if cat is None or ("model" in parsed.request and routed.get("model") == parsed.request["model"]):
            return cat, routed, parsed.raw
        return cat, routed, with_model(parsed, routed["model"])

    async def _routed(self, scope: dict, cat: Any, routed: dict, target: str, headers: list,
                      body: bytes, receive: Any, send: Any, chat: bool = False, via: Any = None) -> None:
        """Send a routed request (``chat``: as ``routed``, its Messages equivalent; ``via``: a platform
        call's route); count its answer, and shadow it when sampled."""
        core = self.core
        assert core is not None
        drawn = (scope.get("extensions") or {}).get(SAMPLED)  # by the express lane, counted there
        sampled = core.sampled(cat, routed) if drawn is None else drawn
        started = time.perf_counter()
        streamed, limit = routed.get("stream") is True, self.settings.stream_assembly_max
        watch = ChatWatch(streamed, not sampled, limit) if chat else \
            Watch(streamed, not sampled, limit, frames=via is not None and via.frames)
        checked = not (via or (streamed and not cat.buffer_streams))
        to = escalation.target(cat, routed["model"], core.rolling(cat.name)) if checked else None
        if to is None:
            done = await self._relay(scope, "POST", target, headers, body, receive, send, watch)
        else:  # checked: read whole, escalated when it fails (app/escalating)
            done, routed = await escalating.checked_relay(self, scope, cat, routed, to, target, headers,
                                                          body, receive, send, watch, chat)
        scope_key = caller_scope(core.policy, headers)  # with tenants: each key's limits are its own
        heard(core, routed.get("model"), watch.status, watch.headers, watch.overflowed, limit, scope_key)
        if (done or streamed) and watch.status == 200:  # a stream: complete once its end event went out
            answer = watch.answer()
            if answer is not None:
                core.served(cat, routed, answer.get("usage"), to is not None and routed.get("model") == to)
                if sampled:
                    job_headers, job_body = (via.job_headers, None) if via else (shaping(headers), body)
                    core.submit(cat, routed, answer, started, headers=job_headers,
                                body=None if chat else job_body)

    async def _local(self, path: str, send: Any) -> None:
        core = self.core
        if path == "/healthz":
            return await respond(send, 200, b'{"status":"ok"}')
        if path == "/readyz":
            ready = core is not None and core.routes.loaded
            return await respond(send, 200 if ready else 503, json.dumps(
                {"status": "ready" if ready else "route table not loaded yet"}).encode())
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

            body = generate_latest(REGISTRY)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode()),
                                    (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        stats = {**(core.stats() if core else {}), **self.door.counts}
        await respond(send, 200, json.dumps(stats).encode())

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as err:
                    await send({"type": "lifespan.startup.failed", "message": str(err)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app() -> Gateway:
    """The app uvicorn serves (``--factory``): settings from the environment."""
    return Gateway(get_settings())
