"""The package's layout holds: no import cycle, dependencies flow one way, the engine does no I/O.

Every ``import`` in every module counts, including those inside functions (a lazy
import is still a dependency). See docs/architecture.md for the picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tierguard

PACKAGE = Path(tierguard.__file__).parent

# What each part of the package may import (besides itself). The shared core first.
CORE_RULES: dict[str, set[str]] = {
    "errors": set(), "config": set(), "keys": set(), "job": set(), "messages": set(), "limits": set(),
    "engine": {"errors"}, "compare": {"errors"},
    "db": {"errors"}, "policy": {"engine", "compare", "errors", "limits", "policy_alerts", "policy_sections"},
    "policy_sections": set(),
    "broker": {"config"},
    "routes": {"db", "errors", "policy", "keys", "rates"},
    "rates": {"db", "engine", "keys", "metrics", "policy"},
    "traffic": {"db", "keys", "messages"},
    "live_policy": {"policy", "errors"},
    "policy_alerts": set(),
    "metrics": set(),
    "migrations": {"db", "rollups", "partitions", "batch_store", "headroom_log"},
    "headroom_log": {"db", "keys", "pauses", "ratelimits"},
    "batch_store": {"db"},
    "partitions": set(),
    "rollups": {"db"},
    "maintenance": {"db", "traffic", "policy", "partitions", "headroom_log"},
    "sealing": {"config", "errors", "job"},
    "job_store": {"keys", "job"},
    "pauses": {"keys"},
    "ratelimits": set(),
    "shadow_caps": set(),
    "reader": {"errors"},
    "comparators": {"compare"},  # the old import path of compare/
}
CORE = set(CORE_RULES)
RULES: dict[str, set[str]] = {
    **CORE_RULES,
    "alerts": CORE,
    "app": CORE,
    "pipeline": CORE | {"alerts"},
    "ops": CORE | {"alerts", "app", "pipeline"},
    "cli": CORE | {"alerts", "app", "pipeline", "ops"},
    "": {"app", "compare"},            # tierguard/__init__.py: the public surface
    "__main__": {"cli"},
}
# Modules that do I/O: the engine and the comparators import none of them.
IO_MODULES = {"redis", "sqlalchemy", "sqlmodel", "celery", "kombu", "httpx", "httpx2", "anthropic",
              "psycopg", "socket", "subprocess", "urllib", "http", "requests", "niquests",
              "grafana_client", "asyncio", "threading", "os", "pathlib", "io", "shutil",
              "tempfile", "sqlite3", "uvicorn", "starlette"}
PURE = {"engine", "compare"}
MAX_LINES = 400


def module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["tierguard", *parts])] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(tierguard modules, other top-level modules) that ``path`` imports anywhere."""
    ours, theirs = set(), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # ``from pkg import mod`` depends on pkg.mod when that is a module.
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = subs or [base]
        for t in targets:
            if t == "tierguard" or t.startswith("tierguard."):
                while t not in known:
                    t = t.rpartition(".")[0]
                ours.add(t)
            else:
                theirs.add(t.split(".")[0])
    ours.discard(name)
    return ours, theirs


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    names = module_names()
    known = set(names)
    ours, theirs = {}, {}
    for name, path in names.items():
        ours[name], theirs[name] = imports_of(name, path, known)
    return ours, theirs


def part(module: str) -> str:
    rest = module.removeprefix("tierguard").removeprefix(".")
    return rest.split(".")[0]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(edges.items()):
        allowed = RULES.get(part(src))
        assert allowed is not None, f"{src}: not in the layout rules (add its part to RULES)"
        for dst in sorted(targets):
            if part(dst) != part(src) and part(dst) not in allowed:
                bad.append(f"{src} imports {dst}")
    return bad


def test_no_import_cycle() -> None:
    ours, _ = graph()
    assert find_cycle(ours) is None, " -> ".join(find_cycle(ours) or [])


def test_dependencies_flow_one_way() -> None:
    ours, _ = graph()
    assert layer_violations(ours) == []


def test_engine_and_comparators_do_no_io() -> None:
    _, theirs = graph()
    found = {name: sorted(mods & IO_MODULES) for name, mods in theirs.items()
             if part(name) in PURE and mods & IO_MODULES}
    assert found == {}


def test_modules_stay_small() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in module_names().items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def test_every_subpackage_says_what_it_owns() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        if init.parent.name == "migrations":
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc.lower() and len(doc) > 200, f"{init}: say what it owns and may import"


def test_the_checks_catch_what_they_look_for() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_violations({"tierguard.engine.cusum": {"tierguard.db"},
                             "tierguard.app.client": {"tierguard.pipeline.calls"}}) == [
        "tierguard.app.client imports tierguard.pipeline.calls",
        "tierguard.engine.cusum imports tierguard.db"]
    ours, _ = graph()
    assert "tierguard.engine.cusum" in ours["tierguard.engine.detector"]
    assert "tierguard.compare" in ours["tierguard.policy"]


def test_public_surface() -> None:
    from tierguard.comparators import Verdict as OldPath

    assert tierguard.Verdict is OldPath
    assert {"ShadowedAnthropic", "AsyncShadowedAnthropic", "Verdict"} <= set(tierguard.__all__)
