"""What the production side (``app/``) and the worker side (``pipeline/``) agree on.

Owns the shadow job and its wire form (``job``), the seal that authenticates a job (``sealing``),
the store for payloads too large for a broker message (``job_store``), reading text and usage out
of a Messages API answer (``messages``), every Redis key tierguard writes (``keys``) and the Celery
app both sides talk through, with its task names (``broker``), and AWS event-stream frames
(``eventstream``: Bedrock's streamed answers, read by the gateway, written by the simulator), and
the prompt fingerprint: a hash of what defines a request's task (``fingerprint``).

May import: ``config``, ``errors`` (and redis, celery). Nothing else in tierguard: both sides
import this folder, so it must not import either.
"""
