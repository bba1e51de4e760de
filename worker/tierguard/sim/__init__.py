"""The stand-in for Anthropic's API, and the private servers the demo, tests and benchmarks start.

Owns the simulated models and their answers (``models``; broken on purpose: ``broken``), the HTTP
server speaking the Messages API, the Message Batches API, the OpenAI-compatible chat endpoint
(``chat``), the Models API (``catalog``) and the Bedrock/Vertex paths (``server``, ``batches``),
its rate-limit buckets
(``buckets``) and private Redis and PostgreSQL servers (``servers``).

May import: ``contract``, ``config``, ``errors``. Nothing else in tierguard: it imitates the
world outside, so it knows nothing of how tierguard works.
"""
