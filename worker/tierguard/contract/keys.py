"""Every Redis key tierguard writes, besides Celery's own queue (named by ``TIERGUARD_QUEUE``)."""

ROUTES = "tierguard:routes"
"""Hash: category -> ``model|version``, the database's routes copied forward-only for wrappers."""

TRAFFIC = "tierguard:traffic:{minute}"
"""Hash per epoch minute: category -> production calls the wrappers counted (kept 3 h)."""

SPLITS = "tierguard:splits"
"""Hash: category -> ``base|model|weight``, the running staged rollouts' splits (tierguard.routing.rollouts):
a call routed to ``base`` goes to ``model`` with probability ``weight``; rewritten whole from the database."""

RATES = "tierguard:rates"
"""Hash: category -> ``rate|reason``, the adaptive sample rates beat chose (only adaptive categories)."""

PAUSE = "tierguard:pause:{model}"
"""String: until when (epoch s) shadows to ``model`` wait, after a 429 (production's or a shadow's);
expires then."""

HEADROOM = "tierguard:headroom:{model}"
"""Hash: rate-limit family -> ``share|reset|seen``, the latest remaining share of each of the API's
limits for ``model`` (``{model}@{fingerprint}`` for a separate shadow key); expires at the last
reset (tierguard.headroom.ratelimits)."""

CAPS = "tierguard:cap"
"""Prefix of the ``limits`` library's keys for the ``shadow_limits`` windows (tierguard.headroom.caps)."""

DEFERRED = "tierguard:deferred"
"""Hash: model -> shadow jobs deferred by a pause or short headroom (a running count)."""

BEAT = "tierguard:beat:{task}"
"""String with a TTL of 0.8 of the task's period: beat's send of ``task`` ran in this period (a backlog
of sends runs once; Redis's clock decides, not a worker's)."""

BATCH_LOCK = "tierguard:lock:batches"
"""Lock: held by the one worker sending and collecting Message Batches (pipeline/message_batches.py);
30 s TTL, extended every 10 s while its holder lives (pipeline/locks.py)."""

ANSWERS = "tierguard:answers:{job_id}"
"""String: the results a worker paid for on one job (answers, verdicts, probe and noise twins), kept
from the calls until recorded, so a message run again after a failure records them without calling a
model (tierguard.pipeline.answers); sealed with ``TIERGUARD_PAYLOAD_KEYS`` when set."""

CLAIM = "tierguard:claim:{job_id}"
"""String with a TTL (30 s, or the visibility timeout if shorter) a heartbeat extends while a worker calls
this job's models; a run of a redelivered message meanwhile sends the job again for later instead of
paying again (tierguard.pipeline.answers.claimed); deleted once recorded or sent again."""

JOB_PAYLOAD = "tierguard:job:{job_id}"
"""String: a large shadow job's payload (request, primary text, seal), kept out of the broker
message (tierguard.contract.job_store); expires after ``TIERGUARD_JOB_PAYLOAD_TTL_S``, deleted once
recorded."""

SENTINEL_LOCK = "tierguard:lock:sentinels:{category}"
"""Lock: held while one category's sentinels run (beat's pass or ``tierguard sentinels run``), so a
run never overlaps itself (tierguard.pipeline.sentinels); 30 s TTL extended while its holder lives."""

MODELS = "tierguard:models"
"""Hash: the API's model list as last read by beat's ``tierguard.models`` task (``GET /v1/models``):
``ids`` (JSON list) and ``read_at`` of the last successful read, kept until the next one succeeds;
``failed_at``, ``error`` and ``failures`` (since that success) of failed reads (no TTL)."""
