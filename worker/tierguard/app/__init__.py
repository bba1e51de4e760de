"""The production side: route each call by its category, sample a share, hand it off without waiting.

Owns the SDK wrapper (:mod:`~tierguard.app.client`: ``ShadowedAnthropic`` and
``AsyncShadowedAnthropic``) and the background publisher that turns sampled
calls into ``shadow_batch`` messages (:mod:`~tierguard.app.publisher`). Nothing
here may raise into the caller or make it wait on I/O. May import the shared
core (settings, policy, routes, the job format, the broker's task names); never
the worker side, alerts or ops.
"""
