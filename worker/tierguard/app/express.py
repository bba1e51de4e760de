"""The gateway's express lane: unsampled Messages calls relayed without the ASGI cycle.

Most calls through a gateway are ``POST /v1/messages`` with the category header and a small JSON
body that arrives in one piece, not sampled, routed by their category's plan alone and not checked:
they need their ``model`` rewritten, their bytes relayed and their answer counted.
:class:`ExpressProtocol` (what ``tierguard gateway`` serves) takes such a call from uvicorn's parser
callbacks straight to a kept-alive upstream connection (:class:`~tierguard.app.flight.Flight`): a
plain answer written back in one write, a stream relayed as it comes; no task, no ASGI message, no
future. Any other call — and any the lane cannot take whole at once (its body not in within
``BODY_WAIT_S`` of its head, no idle upstream connection, an error to word) — goes to the ASGI app
as before; one the lane drew for sampling goes there with its draw (scope extension
:data:`SAMPLED`): no call is counted or drawn twice. A request that arrives whole in one chunk
(:mod:`~tierguard.app.wholes`: the head and body written at once, as most clients but ``httpx``'s
write a small request) is read without the parser and uvicorn's cycle at all (an :class:`Own`
cycle in its place); the lane declining it, or drawing it for sampling, the parser reads it as
usual, the lane's decision carried.

The outcome is the ASGI path's: the same bytes upstream (the caller's headers but the category
header, hop-by-hop ones and ``accept-encoding``, sent as ``identity``; the body with its ``model``
rewritten in place), the answer's status, headers (hop-by-hop ones dropped) and body, the same
counts (the call, its tokens, the rate-limit view, a 429's pause, a stream too long to watch), the
same 502 and 504 answers and cut streams within ``TIERGUARD_GATEWAY_DEADLINE`` and
``TIERGUARD_GATEWAY_TIMEOUT``; a caller that leaves closes the upstream connection. Counted in
``/tierguard/stats`` as ``express`` (of which ``express_whole``: read without the parser).
``TIERGUARD_GATEWAY_EXPRESS=false`` turns the lane off.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from tierguard.app import lean_client
from tierguard.app.flight import Flight
from tierguard.app.naming import names_by_user
from tierguard.app.relay import HOP_BY_HOP, heard, uncompressed, upstream_headers
from tierguard.app.upstream import parse_request, with_model
from tierguard.app.wholes import START, length, whole
from tierguard.app.writes import OneWriteProtocol

_UNDECIDED = object()
SAMPLED = "tierguard.sampled"  # scope["extensions"][SAMPLED]: the lane's draw for this call
PATH = b"/v1/messages"
_NOT_EXPRESS = (b"transfer-encoding", b"content-encoding", b"expect")
BODY_WAIT_S = 0.05  # how long a held request's body may take to follow its head (then the ASGI path
# reads the rest, within TIERGUARD_GATEWAY_BODY_TIMEOUT): clients that write the head and the body
# apart (httpx, the Python SDK's) send both at once


class Held(NamedTuple):
    """A request the lane may take once its body is in: uvicorn's cycle, its category."""

    cycle: Any
    name: str


class Lane:
    """One gateway's express lane (its core, upstream pool and settings)."""

    def __init__(self, gateway: Any):
        s = gateway.settings
        self.core, self.pool, self.settings = gateway.core, gateway.upstream.lean, s
        self.header, self.base_url = gateway.header, gateway.upstream.base_url
        self.max_body = min(s.gateway_max_body, lean_client.MAX_BODY)

    def category(self, parser: Any, url: bytes, headers: list[tuple[bytes, bytes]]) -> str | None:
        """The category of a request whose head the lane can take (else None)."""
        if url != PATH or parser.get_method() != b"POST" or parser.get_http_version() != "1.1" \
                or self.core.policy.gateway_tenants:
            return None
        name, size = None, None
        for key, value in headers:
            if key == self.header:
                name = value.decode("latin-1").strip()
            elif key == b"content-length":
                size = length(value)  # (None: the ASGI path's)
            elif key in _NOT_EXPRESS:
                return None
        return name if name and size is not None and size <= self.max_body else None

    def take(self, body: bytes, name: str, headers: list[tuple[bytes, bytes]]
             ) -> tuple[Any, bytes, bool] | bool | None:
        """(the call's plan, the request's bytes, streamed) when the lane sends it; else None (the
        ASGI path, nothing counted) or True (the ASGI path, counted and drawn for sampling).
        Never raises (into the server's callbacks)."""
        try:
            return self._take(body, name, headers)
        except Exception:
            self.core._failed("the gateway's express lane")
            return None

    def _take(self, body: bytes, name: str, headers: list[tuple[bytes, bytes]]
              ) -> tuple[Any, bytes, bool] | bool | None:
        if not self.pool.idle or names_by_user(body):
            return None
        s = self.settings
        try:
            parsed = parse_request(body, [], s.gateway_max_body, s.gateway_max_json_depth)
        except Exception:  # too deep, unreadable: the ASGI path words it
            return None
        request = parsed.request
        if type(request) is not dict:
            return None
        streamed = request.get("stream") is True
        plan = self.core.planned(name, request)
        if plan is None or plan.mark is None or (
                plan.mark.to is not None and not (streamed and not plan.cat.buffer_streams)):
            return None  # (a checked answer: the ASGI path reads it whole and escalates it)
        if self.core.sampled(plan.cat, {"model": plan.model}):
            return True
        if request.get("model") != plan.model:
            body = with_model(parsed, plan.model)
        sent = uncompressed(upstream_headers(headers, self.header)[0])  # (as the ASGI path sends them)
        head = self.pool.request_head("POST", "/v1/messages", sent, len(body))
        head += body
        return plan, bytes(head), streamed

    def counted(self, plan: Any, flight: Flight, body: bytes | None) -> None:
        """A relayed answer (``body``: a plain one's, None if it did not come whole; a stream's was
        watched) counted as the ASGI path counts it (never raises)."""
        core, model, watch = self.core, plan.model, flight.watch
        try:
            heard(core, model, flight.status_code, flight.head, watch is not None and watch.overflowed,
                  self.settings.stream_assembly_max)
            if watch is None:
                if flight.status_code == 200 and body is not None:
                    core.publisher.add_answer(plan.cat.name, model, body)
                return
            answer = watch.answer() if watch.status == 200 else None
            if answer is not None:
                core.served(plan.cat, {"model": model}, answer.get("usage"))
        except Exception:
            core._failed("counting an answer")


class _Unawaited:
    def set(self) -> None:
        """(no one waits on a request read whole: nothing to wake)"""


class Own:
    """The cycle of a request read whole (:mod:`~tierguard.app.wholes`): what the lane, the protocol
    and uvicorn's connection handling read of uvicorn's ``RequestResponseCycle``."""

    message_event = _Unawaited()

    def __init__(self, default_headers: list[tuple[bytes, bytes]], on_response: Any):
        self.default_headers, self.on_response = default_headers, on_response
        self.keep_alive, self.disconnected = True, False
        self.response_started = self.response_complete = False


class ExpressProtocol(OneWriteProtocol):
    """The gateway's protocol: the door, one write per answer, and the express lane."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.boundary = True  # the parser is between requests (a whole one may pass it by)
        self.decided: Any = _UNDECIDED  # the lane's decision on a request read whole, then parsed
        self.holding: str | None = None  # the category of a head the lane may take (while uvicorn
        self.held: Held | None = None  # makes its cycle); the request whose body is awaited
        self.flight: Flight | None = None
        self.held_timer: Any = None

    def on_headers_complete(self) -> None:
        lane = getattr(self.app, "lane", None)
        if lane is not None and self.held is None and (self.cycle is None or self.cycle.response_complete):
            self.holding = lane.category(self.parser, self.url, self.headers)
        try:
            super().on_headers_complete()
        finally:
            self.holding = None

    def dress(self, cycle: Any) -> None:
        if self.held is None or self.held.cycle is not cycle:  # (a held one is dressed if it goes on)
            super().dress(cycle)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if self.holding is not None and app is self.app:
            self.held = Held(cycle, self.holding)
            return
        super()._start_asgi_task(cycle, app)

    def data_received(self, data: bytes) -> None:
        if self.boundary and data.startswith(START) and self._whole(data):
            return
        super().data_received(data)
        if self.held is not None and self.held_timer is None:  # its body comes apart from its head
            self.held_timer = self.loop.call_later(BODY_WAIT_S, self._to_app, None)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.boundary = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.boundary = True
        held = self.held
        if held is None or held.cycle is not self.cycle:
            return
        self._stop_waiting()
        lane = self.app.lane
        if lane is None:  # the gateway is shutting down: the ASGI path answers
            return self._to_app(None)
        if self.decided is not _UNDECIDED:  # read whole before the parser: the lane's decision
            return self._to_app(self.decided)
        taken = lane.take(bytes(held.cycle.body), held.name, self.headers)
        if taken is None or taken is True:
            return self._to_app(taken)
        if self._send(lane, taken, held.cycle):
            self.held = None
        else:
            self._to_app(False)  # counted and drawn already

    def _send(self, lane: Lane, taken: tuple[Any, bytes, bool], cycle: Any) -> bool:
        """``taken`` sent upstream on an idle connection for ``cycle``; False when none is idle (the
        kept ones too old, KEEPALIVE_S, or no place free) or the write failed."""
        conn = lane.pool.take_idle()
        if conn is None:
            return False
        flight = None
        try:
            flight = conn.response = Flight(conn, self, lane, taken[0], taken[2], cycle)
            conn.transport.write(taken[1])
        except Exception:  # never into the server's callbacks: the ASGI path serves it
            lane.core._failed("the gateway's express lane")
            if flight is not None:
                flight.over = True
                flight.timer.cancel()
            conn.response = None
            conn.close()
            return False
        self.flight = flight
        lane.core.counts["express"] += 1
        return True

    def _whole(self, data: bytes) -> bool:
        """A whole express request in ``data`` taken past uvicorn's parser (True); False when the
        parser is to read ``data`` (nothing done). A request the lane declines or draws for
        sampling is parsed as usual, the lane's decision carried (never drawn twice)."""
        lane, cycle = getattr(self.app, "lane", None), self.cycle
        if (lane is None or not lane.pool.idle or self.held is not None or self.flight is not None
                or self.pipeline or (cycle is not None and not cycle.response_complete)
                or self.limit_concurrency or lane.core.policy.gateway_tenants
                or self.transport.is_closing()):  # (no idle upstream connection: the lane declines)
            return False
        request = whole(data, lane.header, lane.max_body)
        if request is None:
            return False
        self._unset_keepalive_if_required()
        self.stop_timer()
        self.door.waiting.pop(self, None)
        taken = lane.take(request.body, request.name, request.headers)
        if taken is not None and taken is not True:
            own = Own(self.server_state.default_headers, self.on_response_complete)
            if self._send(lane, taken, own):
                self.cycle = own
                lane.core.counts["express_whole"] += 1
                return True
            taken = False  # counted and drawn already
        self.decided = taken
        try:
            super().data_received(data)
        finally:
            self.decided = _UNDECIDED
        return True

    def _to_app(self, sampled: bool | None) -> None:
        """The held request to the ASGI app (with the lane's draw, when it drew one)."""
        self._stop_waiting()
        held, self.held = self.held, None
        if held is None:
            return
        super().dress(held.cycle)
        if sampled is not None:
            held.cycle.scope.setdefault("extensions", {})[SAMPLED] = sampled
        super()._start_asgi_task(held.cycle, self.app)

    def _stop_waiting(self) -> None:
        if self.held_timer is not None:
            self.held_timer.cancel()
            self.held_timer = None

    def head(self, cycle: Any, status: int, raw: list[tuple[bytes, bytes]],
             length: int | None) -> tuple[bytes, bytes]:
        """``cycle``'s answer's head as uvicorn writes the ASGI path's (upstream's ``raw`` headers,
        names lower-cased, hop-by-hop ones dropped) and its framing: ``length`` (the upstream's
        ``content-length``, else ``length`` given), ``chunked``, or ``none`` (204, 304). The express
        call's ``cycle`` is its own: a request pipelined behind it is the protocol's ``cycle``."""
        parts = [STATUS_LINE[status],  # (100–999: app/writes; the lean client refuses others)
                 *(b"%s: %s\r\n" % h for h in cycle.default_headers)]
        framing = b"none" if status in (204, 304) else None
        for name, value in raw:
            if name not in HOP_BY_HOP:
                if name == b"content-length":
                    framing = b"length"
                parts.append(b"%s: %s\r\n" % (name, value))
        if framing is None:
            framing = b"length" if length is not None else b"chunked"
            parts.append(b"content-length: %d\r\n" % length if length is not None
                         else b"transfer-encoding: chunked\r\n")
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts), framing

    def write(self, cycle: Any, data: bytes) -> None:
        if not cycle.disconnected and not self.transport.is_closing():
            self.transport.write(data)

    def answer(self, cycle: Any, status: int, raw: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Write a whole answer in one write and end the call's cycle."""
        self.write(cycle, self.head(cycle, status, raw, len(body))[0] + body)
        self.finish(cycle)

    def finish(self, cycle: Any) -> None:
        """The express call's answer is written: its cycle ends as uvicorn ends one."""
        self.flight = None
        cycle.response_started = cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.flight is not None:
            self.flight.pause(True)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.flight is not None:
            self.flight.pause(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        if self.held is not None:  # its body never came whole: nothing went upstream
            self.held = None
            lane = getattr(self.app, "lane", None)
            if lane is not None:
                lane.core.left()
        if self.flight is not None:
            flight, self.flight = self.flight, None
            flight.caller_left()
        super().connection_lost(exc)
