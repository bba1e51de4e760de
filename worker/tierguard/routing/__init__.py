"""Which model serves each category, and at what rate its calls are shadowed.

Owns the routes (``routes``: the database's route per category, its forward-only copy in Redis,
the wrapper's cached :class:`RouteTable`, moves the policy asks for), the sample rates
(``rates``: the adaptive rates beat chooses and the wrappers read), the challengers each
category's sampled jobs also ask (``challengers``: the policy's and the operators'), and
Bedrock's and Vertex's Messages paths and bodies (``platforms``, pure: the model named in the
path, read and rewritten).

May import: ``store``, ``contract``, ``policy``, ``engine``, ``metrics``, ``errors``.
"""
