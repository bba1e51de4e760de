"""A Message Batch create whose answer was never seen: found at the API, or sent once it cannot land.

A batch is marked ``creating`` (committed) before its create goes. When the answer is lost — the
process killed, a timeout, a dropped connection, the database down before the id was stored — the
batch stays ``creating``, and the next cycle looks for it among the API's batches instead of paying
for it twice: one created since the attempt (``SKEW_S`` of clock difference allowed) with as many
requests, whose id no batch here holds, is adopted (the nearest in time when several are). One not
there ``unseen_after`` seconds after the attempt (twice the create's own timeout: a request cut off
by then has long been answered or dropped) was not taken, and is sent again. Should an adopted
batch be another's with the same count, collecting finds none of its jobs in the results and sends
them again, as after any lost batch: nothing is recorded from another's answers.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from typing import Any

from tierguard.pipeline.context import Context
from tierguard.store import batch_jobs
from tierguard.store.tables import ShadowBatch

log = logging.getLogger(__name__)
SKEW_S = 300  # seconds the API's clock may be behind ours
PAGE = 100  # batches listed per request


def reconcile(ctx: Context, client: Any, batch: ShadowBatch, counts: Counter[str],
              now: dt.datetime, unseen_after: float) -> list:
    """One ``creating`` batch: adopted, sent again, or left for the next cycle (no outcomes)."""
    attempted = batch_jobs.aware(batch.submitted_at or batch.created_at)
    found = taken(ctx, client, batch.jobs, attempted)
    if found is not None:
        batch_jobs.submitted(ctx.engine, batch.id, found)
        log.warning("batch %s (%s): its create's answer was lost; the API had taken it as %s",
                    batch.id, batch.category, found)
        counts["create_found"] += 1
    elif (now - attempted).total_seconds() > unseen_after:
        if batch_jobs.reopen(ctx.engine, batch.id):
            log.warning("batch %s (%s): not among the API's batches %.0f s after its create: sent "
                        "again", batch.id, batch.category, unseen_after)
            counts["create_unseen"] += 1
    return []


def taken(ctx: Context, client: Any, requests: int, attempted: dt.datetime) -> str | None:
    """The id of the API's batch that a create of ``requests`` requests at ``attempted`` made, or
    None if there is none."""
    since = attempted - dt.timedelta(seconds=SKEW_S)
    candidates = []
    for api in client.messages.batches.list(limit=PAGE):  # newest first, page after page
        if api.created_at < since:
            break
        if sum(api.request_counts.model_dump().values()) == requests:
            candidates.append(api)
    held = batch_jobs.known(ctx.engine, [c.id for c in candidates])
    fresh = [c for c in candidates if c.id not in held]
    nearest = min(fresh, key=lambda c: abs((c.created_at - attempted).total_seconds()), default=None)
    return nearest.id if nearest is not None else None
