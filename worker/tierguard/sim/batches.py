"""The simulated Message Batches API, independent of HTTP.

A batch's requests come due one by one, evenly over its processing delay (request ``i`` of
``n`` at ``created + delay·(i+1)/n``), and are answered lazily — on the next call that
looks at any batch — in due order across batches, by the same logic as ``POST /v1/messages``.
``request_counts`` stays all ``processing`` until the batch ends, as the API documents.
A cancel puts the batch in ``canceling`` for ``cancel_delay_s``; it then ends with every
request not yet answered ``canceled``. Scripted outcomes (``script``) are taken by the next
requests processed, whichever batch they belong to.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tierguard.sim.models import Scenario

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_REQUESTS = 100_000
EXPIRY = dt.timedelta(hours=24)
BATCH_ERROR_TYPES = ("api_error", "overloaded_error")


class BatchError(Exception):
    """An HTTP error answer: ``status`` and a message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _error_result(kind: str, message: str) -> dict[str, Any]:
    return {"type": "errored", "error": {"type": "error", "error": {"type": kind, "message": message}}}


@dataclass
class _Batch:
    id: str
    seq: int
    created: float
    delay: float
    requests: list[tuple[str, dict[str, Any]]]
    results: list[dict[str, Any]] = field(default_factory=list)  # results[i] for i < len(results)
    cancel_at: float | None = None
    cancel_end: float | None = None
    ended: float | None = None

    def due(self, i: int) -> float:
        return self.created + self.delay * (i + 1) / len(self.requests)

    def status(self) -> str:
        if self.ended is not None:
            return "ended"
        return "canceling" if self.cancel_at is not None else "in_progress"

    def to_dict(self, base_url: str) -> dict[str, Any]:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if self.ended is None:
            counts["processing"] = len(self.requests)
        else:
            counts.update(Counter(r["type"] for r in self.results))
        results_url = f"{base_url}/v1/messages/batches/{self.id}/results" if self.ended else None
        return {"id": self.id, "type": "message_batch", "processing_status": self.status(),
                "request_counts": counts, "created_at": rfc3339(self.created),
                "expires_at": rfc3339(self.created + EXPIRY.total_seconds()),
                "ended_at": rfc3339(self.ended), "archived_at": None,
                "cancel_initiated_at": rfc3339(self.cancel_at), "results_url": results_url}


class BatchStore:
    """Batches in creation order; ``answer(params)`` returns a Message dict or raises ValueError."""

    def __init__(self, scenario: Scenario, answer: Callable[[dict[str, Any]], dict[str, Any]],
                 clock: Callable[[], float] = time.time):
        self.answer = answer
        self.clock = clock
        self.lock = threading.RLock()
        self.batches: dict[str, _Batch] = {}
        self.delay_s = scenario.batch_delay_s
        self.cancel_delay_s = scenario.batch_cancel_delay_s
        self.error_rate = scenario.batch_error_rate
        self.max_bytes: int | None = None  # a batch's body past this is refused, 413 (the API: 256 MB)
        self.rng = random.Random(scenario.seed)
        self.scripted: deque[str] = deque()  # outcomes for the next requests: an error type or "expired"
        self.counts: Counter[str] = Counter()  # created / ended / canceled (batches), requests
        self.outcomes: Counter[str] = Counter()  # per request: succeeded / errored / expired / canceled

    # -- control -----------------------------------------------------------------------------
    def script(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /_sim/batches``: ``delay_s``, ``cancel_delay_s``, ``error_rate``, ``errored``,
        ``error_type``, ``expired``, ``max_bytes`` (a create body over it: 413; null: no limit)."""
        kind = str(body.get("error_type", "api_error"))
        if kind not in BATCH_ERROR_TYPES:
            raise BatchError(400, f"error_type must be one of {', '.join(BATCH_ERROR_TYPES)}")
        with self.lock:
            if "delay_s" in body:
                self.delay_s = float(body["delay_s"])
            if "cancel_delay_s" in body:
                self.cancel_delay_s = float(body["cancel_delay_s"])
            if "error_rate" in body:
                self.error_rate = float(body["error_rate"])
            if "max_bytes" in body:
                self.max_bytes = None if body["max_bytes"] is None else int(body["max_bytes"])
            self.scripted.extend([kind] * int(body.get("errored", 0)))
            self.scripted.extend(["expired"] * int(body.get("expired", 0)))
            return {"delay_s": self.delay_s, "cancel_delay_s": self.cancel_delay_s,
                    "error_rate": self.error_rate, "scripted": list(self.scripted)}

    def stats(self) -> dict[str, Any]:
        with self.lock:
            self.settle()
            return {"created": self.counts["created"], "ended": self.counts["ended"],
                    "canceled": self.counts["canceled"], "requests": self.counts["requests"],
                    "results": {k: self.outcomes[k] for k in ("succeeded", "errored", "expired", "canceled")}}

    # -- the API -----------------------------------------------------------------------------
    def create(self, body: Any, base_url: str) -> dict[str, Any]:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise BatchError(400, "requests: must be a non-empty list")
        if len(requests) > MAX_REQUESTS:
            raise BatchError(400, f"requests: at most {MAX_REQUESTS} requests per batch")
        if self.max_bytes is not None and len(json.dumps(body)) > self.max_bytes:
            raise BatchError(413, f"the batch is larger than {self.max_bytes} bytes")
        seen: set[str] = set()
        items = []
        for i, req in enumerate(requests):
            cid = req.get("custom_id") if isinstance(req, dict) else None
            if not isinstance(cid, str) or not CUSTOM_ID.match(cid):
                raise BatchError(400, f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
            if cid in seen:
                raise BatchError(400, f"requests.{i}.custom_id: duplicate custom_id {cid!r} in this batch")
            if not isinstance(req.get("params"), dict):
                raise BatchError(400, f"requests.{i}.params: must be an object")
            seen.add(cid)
            items.append((cid, req["params"]))
        with self.lock:
            self.settle()
            batch = _Batch(id="msgbatch_" + uuid.uuid4().hex[:24], seq=len(self.batches),
                           created=self.clock(), delay=self.delay_s, requests=items)
            self.batches[batch.id] = batch
            self.counts["created"] += 1
            self.counts["requests"] += len(items)
            return batch.to_dict(base_url)

    def retrieve(self, batch_id: str, base_url: str) -> dict[str, Any]:
        with self.lock:
            self.settle()
            return self._get(batch_id).to_dict(base_url)

    def list(self, query: dict[str, str], base_url: str) -> dict[str, Any]:
        """Newest first; ``after_id`` pages on to older batches, ``before_id`` back to newer ones."""
        try:
            limit = int(query.get("limit", 20))
        except ValueError:
            raise BatchError(400, "limit: must be an integer") from None
        if not 1 <= limit <= 1000:
            raise BatchError(400, "limit: must be between 1 and 1000")
        with self.lock:
            self.settle()
            order = sorted(self.batches.values(), key=lambda b: -b.seq)
            ids = [b.id for b in order]
            for name in ("after_id", "before_id"):
                if name in query and query[name] not in self.batches:
                    raise BatchError(400, f"{name}: no batch {query[name]!r}")
            if "before_id" in query:
                end = ids.index(query["before_id"])
                page, more = order[max(0, end - limit):end], end - limit > 0
            else:
                start = ids.index(query["after_id"]) + 1 if "after_id" in query else 0
                page, more = order[start:start + limit], start + limit < len(order)
            data = [b.to_dict(base_url) for b in page]
        return {"data": data, "has_more": more, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}

    def cancel(self, batch_id: str, base_url: str) -> dict[str, Any]:
        with self.lock:
            self.settle()
            batch = self._get(batch_id)
            if batch.ended is not None:
                raise BatchError(400, f"Message Batch {batch_id} has already ended and cannot be canceled")
            if batch.cancel_at is None:
                batch.cancel_at = self.clock()
                batch.cancel_end = batch.cancel_at + self.cancel_delay_s
                self.counts["canceled"] += 1
            self.settle()
            return batch.to_dict(base_url)

    def delete(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            self.settle()
            batch = self._get(batch_id)
            if batch.ended is None:
                raise BatchError(400, f"Message Batch {batch_id} is still processing: cancel it first")
            del self.batches[batch_id]
        return {"id": batch_id, "type": "message_batch_deleted"}

    def results(self, batch_id: str) -> bytes:
        """The JSON lines of an ended batch, in request order."""
        with self.lock:
            self.settle()
            batch = self._get(batch_id)
            if batch.ended is None:
                raise BatchError(404, f"Message Batch {batch_id} has not finished processing "
                                      f"(processing_status: {batch.status()}); "
                                      "results exist once it has ended")
            lines = [json.dumps({"custom_id": cid, "result": res})
                     for (cid, _), res in zip(batch.requests, batch.results, strict=True)]
        return "".join(line + "\n" for line in lines).encode()

    # -- processing --------------------------------------------------------------------------
    def _get(self, batch_id: str) -> _Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise BatchError(404, f"Message Batch {batch_id!r} not found")
        return batch

    def settle(self) -> None:
        """Answer every request now due (in due order across batches), then end finished batches."""
        with self.lock:
            now = self.clock()
            open_ = [b for b in self.batches.values() if b.ended is None]
            due = []
            for b in open_:
                horizon = now if b.cancel_at is None else min(now, b.cancel_at)
                due += [(b.due(i), b.seq, i, b) for i in range(len(b.results), len(b.requests))
                        if b.due(i) <= horizon]
            for _, _, _, b in sorted(due, key=lambda d: d[:3]):
                b.results.append(self._process(b.requests[len(b.results)][1]))
            for b in open_:
                if b.cancel_end is not None and now >= b.cancel_end:
                    b.results += [{"type": "canceled"}] * (len(b.requests) - len(b.results))
                    b.ended = b.cancel_end
                elif b.cancel_at is None and len(b.results) == len(b.requests):
                    b.ended = b.due(len(b.requests) - 1)
                if b.ended is not None:
                    self.counts["ended"] += 1
                    self.outcomes.update(r["type"] for r in b.results)

    def _process(self, params: dict[str, Any]) -> dict[str, Any]:
        outcome = self.scripted.popleft() if self.scripted else None
        if outcome is None and self.error_rate and self.rng.random() < self.error_rate:
            outcome = "api_error"
        if outcome == "expired":
            return {"type": "expired"}
        if outcome is not None:
            return _error_result(outcome, "simulated batch request failure"
                                 if outcome == "api_error" else "Overloaded")
        try:
            return {"type": "succeeded", "message": self.answer(params)}
        except ValueError as err:
            return _error_result("invalid_request_error", str(err))
