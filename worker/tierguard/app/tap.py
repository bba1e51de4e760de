"""The wrapper's eye on the wire: what one request that names a category does on its way out and back.

The SDK wrapper's HTTP client (:mod:`~tierguard.app.transport`) hands every request
here. A request without the category header goes on untouched, at the cost of one
header lookup. One with it (``category=`` is sugar for it; a client's
``default_headers`` or a call's ``extra_headers`` work too) is routed — by the
wrapper's resource before the SDK built it (the header's value then ends with
``;routed=MODEL``), or
here, by setting ``model`` in the request's own bytes — and loses tierguard's
headers before it leaves (but for a SigV4-signed request, whose signature covers them).
Its answer, read by the SDK through public ``httpx2`` streams, is watched as its bytes
pass: a 429 pauses the shadows, the rate-limit headers are kept, a 200 answer of the
Messages API is counted, and a sampled one is handed to the publisher with the
request's body exactly as it was sent. A category with answer checks has its cheap rungs'
answers checked and, when one fails, escalated (:mod:`~tierguard.app.escalation`); a sampled
escalated call is shadowed as the answer the caller got. Nothing here raises into the caller.
"""

from __future__ import annotations

import contextvars
import json
import random
import time
from time import perf_counter
from typing import Any

import httpx2

from tierguard.app import escalation
from tierguard.app.core import Core
from tierguard.app.plans import Marked
from tierguard.app.publisher import ANSWER_HELD_MAX, HELD_WHILE
from tierguard.app.relay import Watch
from tierguard.app.upstream import parse_request, with_model
from tierguard.contract.job import SHAPING_HEADERS
from tierguard.routing.platforms import invoke_path, messages_body

ROUTED = ";routed="  # the wrapper's resources mark the header "CATEGORY;routed=MODEL": routed already
_MESSAGES = "/v1/messages"
_COUNT = "/v1/messages/count_tokens"
EVENT_STREAM = "application/vnd.amazon.eventstream"


_draw = random.random  # (the sampling draw: bound once, it is taken on every call)
MARKED: contextvars.ContextVar[Marked | None] = contextvars.ContextVar("tierguard_marked", default=None)


class Call:
    """One routed request on its way: what its answer is counted and shadowed as."""

    # Defaults for what most calls never set (assigned per call only when they do).
    sampled = False
    rate: float | None = None  # known from the mark: the answer goes to Tap.answered_whole
    watch: Watch | None = None
    platform = False  # Bedrock's or Vertex's path: the model is in it (never escalated)
    to: str | None = None  # where a failing answer goes (None: not checked)
    failure: Any = None  # the check the answer failed
    first: Any = None  # the answer checked: its JSON, or its assembled stream
    rescued = False  # the caller gets the escalated call's answer

    def __init__(self, core: Core, cat: Any, routed: dict[str, Any], body: bytes | None,
                 shaping: dict[str, str] | httpx2.Headers | None, platform: bool = False):
        self.core, self.cat, self.routed, self.body, self.shaping = core, cat, routed, body, shaping
        self.started = time.perf_counter()
        if platform:
            self.platform = True

    def answered(self, response: httpx2.Response) -> bool:
        """The answer's head arrived: its rate limits read; True if its body is to be watched."""
        try:
            core, cat, model = self.core, self.cat, self.routed.get("model")
            status, headers = response.status_code, response.headers
            if status == 429:
                core.rate_limited(model, headers.get("retry-after"))
            if model:
                core.publisher.saw_headers(model, headers)  # (read on the publisher's thread)
            if status != 200 or self.body is None:  # an error, or a count of tokens: nothing to watch
                return False
            self.sampled = core.sampled(cat, self.routed)
            if cat.escalate_on and not self.platform:  # else no rollout lookup on the call
                self.to = escalation.target(cat, model, core.rolling(cat.name))
            return True
        except Exception:
            self.core._failed("reading an answer's head")
            return False

    def checked(self, sse: bool) -> bool:
        """Whether the answer (``sse``: an event stream) is read whole and checked before the caller
        gets it."""
        return self.to is not None and (not sse or bool(self.cat.buffer_streams))

    def escalation(self, request: httpx2.Request, content: bytes, sse: bool) -> httpx2.Request | None:
        """The answer read whole: the request to send again when it fails its checks, else None."""
        try:
            answer = escalation.answer_of(content, sse, self.core.settings.stream_assembly_max)
            self.first = answer
            self.failure = _verdict(self.core, self.cat, self.routed.get("model"), answer)
            return None if self.failure is None else self.again(request)
        except Exception:
            self.core._failed("checking an answer")
            self.failure = None
            return None

    def again(self, request: httpx2.Request) -> httpx2.Request | None:
        """The request to send again for an answer that failed its checks (None: it cannot be)."""
        try:
            return escalation.request_to(request, request.content, self.to,  # type: ignore[arg-type]
                                         self.core.settings.gateway_max_body)
        except Exception:
            self.core._failed("checking an answer")
            self.failure = None
            return None

    def escalated(self, other: httpx2.Response | None) -> bool:
        """The escalated call's answer arrived (or not): True when the caller gets it."""
        core, reason = self.core, self.failure.reason
        if other is None or other.status_code != 200:
            core.escalation_failed(self.cat, self.routed.get("model"), self.to, reason,
                                   None if other is None else other.status_code)
            return False
        first = self.first if isinstance(self.first, dict) else {}
        core.served(self.cat, self.routed, first.get("usage"))  # the first answer was paid for too
        core.escalated(self.cat, self.routed.get("model"), self.to, reason)
        self.routed, self.rescued = {**self.routed, "model": self.to}, True
        other.headers[escalation.HEADER] = reason
        return True

    def replay(self, content: bytes, sse: bool) -> None:
        """The checked answer is the caller's after all: counted and shadowed as any other."""
        if isinstance(self.first, dict):  # read when checked: not parsed again
            try:
                self._handover(self.first)
            except Exception:
                self.core._failed("handing over an answer")
        elif not sse:
            self.whole(content)

    def streaming(self, response: httpx2.Response) -> None:
        """Its body is read as it comes: watched chunk by chunk (:meth:`feed`, :meth:`ended`)."""
        if response.headers.get("content-encoding", "identity") != "identity":
            self.core.refuse("stream_encoded", "a streamed answer came compressed (%s): relayed, not watched",
                             response.headers.get("content-encoding"))
            return
        kind = response.headers.get("content-type", "")
        frames = kind.startswith(EVENT_STREAM)  # Bedrock's streams
        self.watch = Watch(frames or kind.startswith("text/event-stream"), usage_only=not self.sampled,
                           limit=self.core.settings.stream_assembly_max, frames=frames)
        self.watch.status = 200

    def whole(self, content: bytes) -> None:
        """Its body, read whole: counted (only its usage read, on the publisher's thread, unless
        sampled) and shadowed when sampled."""
        try:
            if self.sampled:
                self._handover(escalation.parsed(content))
            else:
                self.core.publisher.add_answer(self.cat.name, self.routed.get("model", ""), content,
                                               self.rescued)
        except Exception:
            self.core._failed("handing over an answer")

    def feed(self, chunk: bytes) -> None:
        watch = self.watch
        if watch is not None:
            try:
                watch.feed(chunk)
            except Exception:
                self.watch = None
                self.core._failed("watching an answer")
                return
            if watch.message is not None:  # a stream at message_stop: whether or not it is read on
                self.ended()

    def ended(self) -> None:
        """The whole answer went to the caller: counted, and shadowed when sampled."""
        watch, self.watch = self.watch, None
        if watch is None:
            return
        core = self.core
        try:
            if watch.overflowed:
                core.refuse("stream_too_long", "a stream event was longer than TIERGUARD_STREAM_ASSEMBLY_MAX "
                            "(%d): not watched", core.settings.stream_assembly_max)
                return
            self._handover(watch.answer())
        except Exception:
            core._failed("handing over an answer")

    def _handover(self, answer: dict[str, Any] | None) -> None:
        if answer is None:
            return
        core = self.core
        core.served(self.cat, self.routed, answer.get("usage"), self.rescued)
        if self.sampled:
            shaping = self.shaping
            if isinstance(shaping, httpx2.Headers):  # read only now, for the few sampled calls
                shaping = _shaping(shaping)
            core.submit(self.cat, self.routed, answer, self.started, shaping, self.body)


def _verdict(core: Any, cat: Any, model: str | None, answer: dict[str, Any] | None) -> Any:
    """``answer``'s failure of its category's checks (None: it passed, or there is none to check),
    counted as checked."""
    failure = None if answer is None else escalation.failure(cat, answer)
    if answer is not None:
        core.checked(cat, model, None if failure is None else failure.reason)
    return failure


class Tap:
    """Per client: routes and watches the requests that name a category (see the module)."""

    def __init__(self, core: Core):
        self.core = core
        self.header = core.settings.category_header.lower()

    def answered_whole(self, mark: Marked, request: httpx2.Request, response: httpx2.Response,
                       started: float) -> tuple[Call, httpx2.Request | None] | None:
        """Most calls, in one go: the answer, read whole, of a request the resources marked
        ``quick`` (the rate known, nothing to strip; the transport checks). A 200 answer its category
        does not check is held for the publisher's thread to :meth:`settle` (the caller's thread
        only appends it: reading, drawing, counting and releasing it happen there), while few wait
        and it is small; else settled now. An answer that fails its checks: (its :class:`Call`, the
        request to send again) for the transport."""
        held = self.core.publisher.held
        try:
            if held is not None and mark.to is None and response.status_code == 200 \
                    and len(held) < HELD_WHILE \
                    and len(response.content) + len(request.content) <= ANSWER_HELD_MAX:
                held.append((self, mark, request, response, started, perf_counter()))
                return None
        except Exception:  # (a body not read: settled now, where what fails is counted)
            pass
        return self.settle(mark, request, response, started)

    def settle(self, mark: Marked, request: httpx2.Request, response: httpx2.Response, started: float,
               answered: float | None = None) -> tuple[Call, httpx2.Request | None] | None:
        """A quick call's answer: its rate limits read, checked when its category checks answers,
        the call counted with its tokens (read on the publisher's thread), or, when sampled, shadowed
        (``started``: when it was sent; ``answered``: when its answer was read, for a call settled
        later); see :meth:`answered_whole`."""
        try:
            core, model = self.core, mark.model
            if response.status_code != 200:
                headers = response.headers
                if response.status_code == 429:
                    core.rate_limited(model, headers.get("retry-after"))
                core.publisher.saw_headers(model, headers)
                return None
            answer = None
            if mark.to is not None:
                answer = escalation.parsed(response.content)
                failure = _verdict(core, mark.cat, model, answer)
                if failure is not None:
                    return self._failed_check(mark, request, response, started, answer, failure)
            if _draw() >= mark.rate:  # type: ignore[operator]
                core.publisher.add_call(mark.cat.name, model, response.content, response.headers)
                return None
            core.publisher.saw_headers(model, response.headers)
            core.publisher.count(mark.cat.name, model)
            call = Call(core, mark.cat, {"model": model}, request.content, request.headers)
            waited = 0.0 if answered is None else perf_counter() - answered  # (held: not its latency)
            call.sampled, call.started = True, started + waited
            call._handover(answer if answer is not None else escalation.parsed(response.content))
        except Exception:
            core._failed("watching an answer")
        return None

    def _failed_check(self, mark: Marked, request: httpx2.Request, response: httpx2.Response, started: float,
                answer: dict[str, Any], failure: Any) -> tuple[Call, httpx2.Request | None]:
        """A quick call's answer that failed its checks: counted and drawn as :meth:`Call.answered`
        would, its :class:`Call` and the request to send again."""
        core, model = self.core, mark.model
        core.publisher.saw_headers(model, response.headers)
        core.publisher.count(mark.cat.name, model)
        call = Call(core, mark.cat, {"model": model}, request.content, request.headers)
        call.sampled, call.started, call.to = _draw() < mark.rate, started, mark.to  # type: ignore[operator]
        call.first, call.failure = answer, failure
        return call, call.again(request)

    def begin(self, request: httpx2.Request) -> tuple[httpx2.Request, Call | None]:
        """The request to send (tierguard's headers gone, routed) and its :class:`Call`, or None
        for a request tierguard leaves alone."""
        mark = MARKED.get()
        if mark is not None and mark.core is self.core:
            return request, self._marked(request, mark)
        headers = request.headers
        value = headers.get(self.header)
        if value is None:
            return request, None
        try:
            name, _, routed = value.partition(ROUTED)
            path = request.url.path
            invoke = None if path.endswith((_MESSAGES, _COUNT)) else invoke_path(path)
            if not headers.get("authorization", "").startswith("AWS4-"):
                del headers[self.header]  # (a SigV4 signature covers it: then it stays)
            if request.method != "POST" or (invoke is None and not path.endswith((_MESSAGES, _COUNT))):
                return request, None
            self.core.check_fork()
            cat = self.core.categories.get(name) if routed else None
            if cat is None:  # named by the header alone (or a mark tierguard did not make)
                if invoke is not None:  # a platform's request is routed before it is signed, or not
                    self.core.uncategorized("platform_header_only")
                    return request, None
                return self._route(name, request, path.endswith(_COUNT))
            if path.endswith(_COUNT):
                return request, Call(self.core, cat, {"model": routed}, None, None)
            if invoke is not None:  # the job is the Messages API request it stands for
                body, shaping = _as_messages(invoke.platform, request.content, _shaping(headers))
                return request, Call(self.core, cat, {"model": routed}, body, shaping, platform=True)
            return request, Call(self.core, cat, {"model": routed}, request.content, headers)
        except Exception:
            self.core._failed("routing a request")
            return request, None

    def _marked(self, request: httpx2.Request, mark: Marked) -> Call | None:
        """The :class:`Call` of a request the resources routed and marked (:data:`MARKED`): the one
        request the SDK sends for the call (again, if it retries)."""
        try:
            if request.method != "POST":
                return None
            headers = request.headers
            if mark.strip and self.header in headers and \
                    not headers.get("authorization", "").startswith("AWS4-"):
                del headers[self.header]
            if mark.count:
                return Call(self.core, mark.cat, {"model": mark.model}, None, None)
            call = Call(self.core, mark.cat, {"model": mark.model}, request.content, headers)
            if mark.to is None:  # (else checked on the full path)
                call.rate = mark.rate
            return call
        except Exception:
            self.core._failed("routing a request")
            return None

    def _route(self, name: str, request: httpx2.Request, count: bool) -> tuple[httpx2.Request, Call | None]:
        """Route a request the wrapper's resources did not (a category named by header only)."""
        s = self.core.settings
        parsed = parse_request(request.content, [], s.gateway_max_body, s.gateway_max_json_depth)
        cat, routed = self.core.route(name, parsed.request)
        if cat is None:
            return request, None
        body = parsed.raw
        if routed.get("model") != parsed.request.get("model"):
            body = with_model(parsed, routed["model"])
            request = _with_body(request, body)
        return request, (None if count else Call(self.core, cat, routed, body, _shaping(request.headers)))


def _as_messages(platform: str, body: bytes, shaping: dict[str, str] | None
                 ) -> tuple[bytes, dict[str, str] | None]:
    """A platform request body as the Messages API body and shaping headers a shadow sends."""
    request, betas = messages_body(platform, json.loads(body))
    return json.dumps(request, ensure_ascii=False).encode(), ({**(shaping or {}), **betas} or None)


def _with_body(request: httpx2.Request, body: bytes) -> httpx2.Request:
    headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
    return httpx2.Request(request.method, request.url, headers=headers, content=body,
                          extensions=request.extensions)


def _shaping(headers: httpx2.Headers) -> dict[str, str] | None:
    """The request-shaping headers it was sent with (its betas), never credentials."""
    found = {name: headers[name] for name in SHAPING_HEADERS if name in headers}
    return found or None
