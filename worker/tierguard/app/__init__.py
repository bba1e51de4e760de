"""The production side: route each call by its category, sample a share, hand it off without waiting.

Owns the SDK wrapper (:mod:`~tierguard.app.client`: ``ShadowedAnthropic`` and
``AsyncShadowedAnthropic``; its resources ``resources``, their types ``signatures``, its HTTP
client ``transport`` and the ``tap`` that watches the wire) over the shared core (``core``),
the gateway (``gateway``, ``admission``, ``relay``, its upstream client ``upstream``, the
OpenAI-compatible endpoint ``openai_compat`` and Bedrock's and Vertex's paths
``platform_gateway``), naming a category without a header (``naming``), stream assembly
(``stream``), the request snapshot (``snapshot``), fork detection (``forks``), escalating a cheap
rung's answer that fails its category's checks (``escalation``; the gateway's side
``escalating``) and the background publisher that turns sampled calls into ``shadow_batch``
messages (``publisher``). Nothing here may raise into the caller or make it wait on I/O. A
call reads its category's routing, worked out once per route refresh and policy (``plans``).

May import ``contract``, ``policy``, ``routing``, ``headroom``, ``store``, ``compare`` (the answer
checks) and the settings; never the worker side, alerts, ops, sim or bench.
"""
