"""The production side: route each call by its category, sample a share, hand it off without waiting.

Owns the SDK wrapper (:mod:`~tierguard.app.client`: ``ShadowedAnthropic`` and
``AsyncShadowedAnthropic``) over the shared core (``core``), the gateway
(``gateway``, its upstream client ``upstream``), stream assembly (``stream``), the
request snapshot (``snapshot``), fork detection (``forks``) and the background
publisher that turns sampled calls into ``shadow_batch`` messages (``publisher``).
Nothing here may raise into the caller or make it wait on I/O.

May import ``contract``, ``policy``, ``routing``, ``headroom``, ``store`` and the
settings; never the worker side, alerts, ops, sim or bench.
"""
