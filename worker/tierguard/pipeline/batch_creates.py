"""A Message Batch create whose answer was never seen: found at the API, or sent once it cannot land.

A batch is marked ``creating`` (committed, ``submitted_at``: when its create is sent) before its
create goes. When the answer is lost — the process stopped, a timeout, a dropped connection, a 5xx
or 408 (a proxy's 502 or 504 may come after the API took it), the database down before the id was
stored — the batch stays ``creating``, lost since the create gave up (``ended_at``; for a process
that stopped, since a cycle first found it so), and the next cycles look for it among the API's
batches instead of paying for it twice. A batch the API took is one created between the send and
``unseen_after`` after the loss (``SKEW_S`` of clock difference allowed either side), with as many
requests, whose id no batch here holds: the one created nearest the send is adopted. Not there
``unseen_after`` seconds (twice the create's timeout) after the loss, it never landed, and is sent
again. While a lost create is unresolved, no other batch of the same size is sent (two could not be
told apart). What is left: a batch of another's on the same key, of the same size and in the same
minutes, could be adopted (collecting then finds none of the jobs in its results: they are sent
again, an attempt each, and recorded as ``batch_missing`` at the last); an API key that may not list
batches (401, 403, 404) cannot look, nor can one whose list keeps failing (429, 5xx, no answer) for
``PATIENCE`` waits: the batch is then sent again, logged as possibly paid twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from typing import Any

import anthropic

from tierguard.errors import ShadowCallError
from tierguard.pipeline.calls import classify
from tierguard.pipeline.context import Context
from tierguard.store import batch_jobs
from tierguard.store.tables import ShadowBatch

log = logging.getLogger(__name__)
SKEW_S = 60  # seconds the API's clock may differ from ours
PAGE = 100  # batches listed per request
STOPPED = "the create's answer was lost (its process stopped)"
PATIENCE = 10  # waits (unseen_after) a list failing transiently is tried again before it counts as refused


def refused(error: ShadowCallError) -> bool:
    """A create error (:func:`~tierguard.pipeline.calls.classify`'s) that says the API did not take
    the batch: an answered 4xx but 408, or 529."""
    status = error.status
    return status is not None and (status == 529 or (400 <= status < 500 and status != 408))


def blocked(ctx: Context, requests: int) -> bool:
    """A batch of ``requests`` waits while a lost create of as many is unresolved."""
    return requests in batch_jobs.creating_sizes(ctx.engine)


def unanswered(ctx: Context, batch: ShadowBatch, err: ShadowCallError, counts: Counter[str]) -> None:
    """A create that got no answer telling whether the API took it: looked for from the next cycle."""
    log.warning("batch %s (%s, %d jobs): no answer to its create (%s); looked for among the API's "
                "batches from the next cycle", batch.id, batch.category, batch.jobs, err)
    batch_jobs.unanswered(ctx.engine, batch.id, f"no answer to its create: {err}")
    counts["create_unanswered"] += 1


def reconcile(ctx: Context, client: Any, batch: ShadowBatch, counts: Counter[str],
              now: dt.datetime, unseen_after: float) -> list:
    """One ``creating`` batch: adopted, sent again, or left for the next cycle (no outcomes)."""
    sent = batch_jobs.aware(batch.submitted_at or batch.created_at)
    if batch.ended_at is None:  # its process stopped mid-create: lost from now
        batch_jobs.unanswered(ctx.engine, batch.id, batch.error or STOPPED, at=now)
        lost = now
    else:
        lost = batch_jobs.aware(batch.ended_at)
    waited = (now - lost).total_seconds()
    window = (sent, lost + dt.timedelta(seconds=unseen_after))
    found = _looked_up(ctx, client, batch, window, counts, patient=waited <= PATIENCE * unseen_after)
    if found is not None:
        if batch_jobs.submitted(ctx.engine, batch.id, found):
            log.warning("batch %s (%s): its create's answer was lost; the API had taken it as %s",
                        batch.id, batch.category, found)
            counts["create_found"] += 1
    elif waited > unseen_after and batch_jobs.reopen(ctx.engine, batch.id):
        log.warning("batch %s (%s): not among the API's batches %.0f s after its create's answer was "
                    "lost (%s): sent again", batch.id, batch.category, unseen_after,
                    batch.error or STOPPED)
        counts["create_unseen"] += 1
    return []


def _looked_up(ctx: Context, client: Any, batch: ShadowBatch, window: tuple[dt.datetime, dt.datetime],
               counts: Counter[str], patient: bool) -> str | None:
    """:func:`taken`; None, logged, when the list is refused for good — or still fails after
    ``PATIENCE`` waits (until then a failure raises: looked for again next cycle)."""
    try:
        return taken(ctx, client, batch.jobs, *window)
    except anthropic.AnthropicError as err:
        if patient and classify(err).status not in (401, 403, 404):  # (for good: the key, the URL)
            raise
        log.error("batch %s (%s): the API's batches cannot be listed (%s): once its create cannot "
                  "land it is sent again, possibly paid twice", batch.id, batch.category, err)
        counts["create_lookup_refused"] += 1
        return None


def taken(ctx: Context, client: Any, requests: int, sent: dt.datetime, until: dt.datetime) -> str | None:
    """The id of the API's batch that a create of ``requests`` requests sent at ``sent`` made
    (created by ``until``), or None if there is none."""
    skew = dt.timedelta(seconds=SKEW_S)
    candidates = []
    for api in client.messages.batches.list(limit=PAGE):  # newest first, page after page
        if api.created_at < sent - skew:
            break
        if api.created_at <= until + skew and sum(api.request_counts.model_dump().values()) == requests:
            candidates.append(api)
    held = batch_jobs.known(ctx.engine, [c.id for c in candidates])
    nearest = min((c for c in candidates if c.id not in held),
                  key=lambda c: abs((c.created_at - sent).total_seconds()), default=None)
    return nearest.id if nearest is not None else None
