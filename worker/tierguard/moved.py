"""Old import paths of the modules that moved into rooms (issue 24): they keep importing.

``import tierguard.db`` or ``from tierguard.routes import RouteTable`` still work: a finder
on ``sys.meta_path`` answers an old name with its new module (or, where one module became
two, a module holding both"s public names) and warns once with a ``DeprecationWarning``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from collections.abc import Sequence

MOVED: dict[str, tuple[str, ...]] = {
    "tierguard.job": ("tierguard.contract.job",),
    "tierguard.messages": ("tierguard.contract.messages",),
    "tierguard.sealing": ("tierguard.contract.sealing",),
    "tierguard.keys": ("tierguard.contract.keys",),
    "tierguard.broker": ("tierguard.contract.broker",),
    "tierguard.job_store": ("tierguard.contract.job_store",),
    "tierguard.policy_sections": ("tierguard.policy.sections",),
    "tierguard.policy_alerts": ("tierguard.policy.alerting",),
    "tierguard.live_policy": ("tierguard.policy.live",),
    "tierguard.limits": ("tierguard.policy.model_limits",),
    "tierguard.db": ("tierguard.store.db", "tierguard.store.tables"),
    "tierguard.batch_store": ("tierguard.store.batch_jobs", "tierguard.store.tables"),
    "tierguard.rollups": ("tierguard.store.rollups",),
    "tierguard.partitions": ("tierguard.store.partitions",),
    "tierguard.traffic": ("tierguard.store.traffic",),
    "tierguard.reader": ("tierguard.store.reader",),
    "tierguard.maintenance": ("tierguard.store.maintenance",),
    "tierguard.migrations": ("tierguard.store.migrations",),
    "tierguard.routes": ("tierguard.routing.routes",),
    "tierguard.rates": ("tierguard.routing.rates",),
    "tierguard.ratelimits": ("tierguard.headroom.ratelimits",),
    "tierguard.pauses": ("tierguard.headroom.pauses",),
    "tierguard.shadow_caps": ("tierguard.headroom.caps",),
    "tierguard.headroom_log": ("tierguard.headroom.history", "tierguard.store.tables"),
    "tierguard.ops.simulate": ("tierguard.sim.models",),
    "tierguard.ops.sim_server": ("tierguard.sim.server",),
    "tierguard.ops.sim_batches": ("tierguard.sim.batches",),
    "tierguard.ops.sim_buckets": ("tierguard.sim.buckets",),
    "tierguard.ops.servers": ("tierguard.sim.servers",),
    "tierguard.ops.bench_dashboards": ("tierguard.bench.dashboards",),
    "tierguard.ops.bench_gateway": ("tierguard.bench.gateway",),
    "tierguard.ops.bench_headroom": ("tierguard.bench.headroom",),
    "tierguard.ops.bench_ladder": ("tierguard.bench.ladder",),
    "tierguard.ops.bench_pipeline": ("tierguard.bench.pipeline",),
    "tierguard.ops.bench_replay": ("tierguard.bench.replay",),
    "tierguard.ops.bench_watching": ("tierguard.bench.watching",),
    "tierguard.ops.loadgen": ("tierguard.bench.loadgen",),
    "tierguard.ops.grafana_sql": ("tierguard.bench.grafana_sql",),
    "tierguard.pipeline.batcher": ("tierguard.pipeline.writer",),
    "tierguard.pipeline.batches": ("tierguard.pipeline.message_batches",),
    "tierguard.ops.bench": ("tierguard.bench.engine", "tierguard.bench.hotpath"),
}


class OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers the old names in :data:`MOVED`."""

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        targets = MOVED[spec.name]
        moved_to = " and ".join(targets)
        warnings.warn(f"{spec.name} moved to {moved_to}", DeprecationWarning, stacklevel=2)
        modules = [importlib.import_module(t) for t in targets]
        if len(modules) == 1:
            return modules[0]
        merged = types.ModuleType(spec.name, modules[0].__doc__)
        for module in modules:
            merged.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
        return merged

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the module is the new one."""


def install() -> None:
    if not any(isinstance(f, OldPaths) for f in sys.meta_path):
        sys.meta_path.append(OldPaths())
