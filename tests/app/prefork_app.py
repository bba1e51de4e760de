"""A production WSGI app as a preforking server runs it (tests/app/test_prefork.py).

ONE wrapped client is built at import time from the ``TIERGUARD_*`` / ``ANTHROPIC_*``
environment: under ``gunicorn --preload`` that is in the master, before the workers fork.

- ``GET /call?category=C[&text=T][&hold=S]``: one ``messages.create``; answers
  ``{"pid", "model", "stats"}``.
- ``GET /flush[?timeout=S][&hold=S]``: ``tierguard_flush``; answers ``{"pid", "flushed", "stats"}``.
- ``GET /ping``: ``{"pid"}``.

``hold`` keeps the (sync) worker busy for S seconds after answering is decided, so concurrent
requests spread over the workers instead of landing on whichever accepts first.
"""

from __future__ import annotations

import json
import os
import time
from urllib.parse import parse_qs

import anthropic

import tierguard

client = tierguard.ShadowedAnthropic(anthropic.Anthropic(
    base_url=os.environ["ANTHROPIC_BASE_URL"], api_key=os.environ["ANTHROPIC_API_KEY"], max_retries=0))
BUILT_IN = os.getpid()


def app(environ, start_response):
    query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    path = environ.get("PATH_INFO", "")
    body: dict = {"pid": os.getpid(), "built_in": BUILT_IN}
    try:
        if path == "/call":
            msg = client.messages.create(
                category=query["category"], model="claude-opus-4-7", max_tokens=16,
                system="sentiment: answer POSITIVE, NEGATIVE or NEUTRAL",
                messages=[{"role": "user", "content": query.get("text", "a preforked request")}])
            body.update(model=msg.model, stats=client.tierguard_stats())
        elif path == "/flush":
            flushed = client.tierguard_flush(float(query.get("timeout", "5")))
            body.update(flushed=flushed, stats=client.tierguard_stats())
        elif path != "/ping":
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error": "not found"}']
        status = "200 OK"
    except Exception as err:  # the test wants the reason, not gunicorn's bare 500
        status, body["error"] = "500 Internal Server Error", f"{type(err).__name__}: {err}"
    time.sleep(float(query.get("hold", "0")))
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                            ("Connection", "close")])
    return [data]
