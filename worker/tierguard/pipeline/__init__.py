"""The worker side: take shadow jobs off the broker, call the other model, compare, record, decide.

Owns the Celery tasks (:mod:`~tierguard.pipeline.tasks`, thin: deserialize, call,
decide retries), model calls with retryable/permanent errors
(:mod:`~tierguard.pipeline.calls`), one event loop per process holding a batch's
calls in flight (:mod:`~tierguard.pipeline.fanout`), a job's result
(:mod:`~tierguard.pipeline.shadow`), and recording: samples, detector updates and
route changes in one transaction (:mod:`~tierguard.pipeline.recorder`) through a
per-process writer (:mod:`~tierguard.pipeline.batcher`). May import the core,
``engine``, ``compare`` and ``alerts`` (events are written with the change that
caused them); never the production side or ops.
"""
