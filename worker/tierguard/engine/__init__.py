"""The decision core: detector state + one outcome -> new state + a decision with its reason.

Owns the Bernoulli CUSUM's design (:mod:`~tierguard.engine.cusum`), the per-category
detector that demotes, marks eligible, promotes and guards against flapping
(:mod:`~tierguard.engine.detector`), the rule that says when a category's evidence no
longer describes what runs (:mod:`~tierguard.engine.fingerprints`), and which models in use are
retiring and where their categories go (:mod:`~tierguard.engine.retirements`). Pure: it imports
nothing that does I/O (no database, broker, network, files or processes) and nothing of
tierguard's but itself, so every verdict can be replayed and tested sample by sample.
"""
