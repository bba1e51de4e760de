"""Rate limits: shadows only ever spend what production leaves over.

Owns the API's rate-limit headers read as views per limit family (``ratelimits``), the pauses
after a 429 (``pauses``), the policy's hard caps per model (``caps``), the headroom history
written for Grafana (``history``) and the rules that decide when a shadow job must wait
(``deferral``). Changing the rate-limit rule starts here.

May import: ``contract``, ``store``, ``policy``, ``metrics``, ``errors`` (and redis).
"""
