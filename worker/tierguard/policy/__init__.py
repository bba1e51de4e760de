"""The policy: what the operator wrote in ``tierguard.yaml``, validated, and how it reaches running processes.

Owns the policy's schema (``schema``: :class:`Policy`, :class:`CategoryPolicy`, ``load_policy``,
``parse_policy``), its self-contained sections (``sections``: models, prices, limits, headroom,
retention, payloads, unknown categories, sentinels), the ``alerts`` section (``alerting``), the building
blocks every section shares (``base``), the models' context windows and request estimates
(``model_limits``: context windows, not rate limits), the models' ids on Bedrock and Vertex
(``platform_ids``) and the reload of a changed file in a long
running process (``live``).

May import: ``engine``, ``compare``, ``errors`` (and pydantic, yaml). Nothing here does I/O
besides reading the policy file. ``from tierguard.policy import Policy`` keeps working: the
schema's public names are re-exported here.
"""

from tierguard.policy.schema import (
    EVENT_KINDS,
    SEVERITIES,
    Alerting,
    CategoryPolicy,
    Channel,
    Policy,
    Severity,
    load_policy,
    parse_policy,
    valid_category,
)

__all__ = ["EVENT_KINDS", "SEVERITIES", "Alerting", "CategoryPolicy", "Channel", "Policy", "Severity",
           "load_policy", "parse_policy", "valid_category"]
