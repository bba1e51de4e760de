"""The package's layout holds: no import cycle, dependencies flow one way, the engine does no I/O.

Every ``import`` in every module counts, including those inside functions (a lazy
import is still a dependency). See docs/architecture.md for the picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tierguard

PACKAGE = Path(tierguard.__file__).parent

# What each room of the package may import (besides itself), from the bottom up: no arrow
# runs back up (see docs/architecture.md).
BASE = {"errors", "config", "metrics"}
RULES: dict[str, set[str]] = {
    "errors": set(), "config": set(), "metrics": set(),
    "engine": {"errors"}, "compare": {"errors", "contract"},  # contract.messages: an answer's text
    "comparators": {"compare"},  # the old import path of compare/
    "moved": set(),  # the old import paths of every moved module (imported by name, at run time)
    "contract": {"config", "errors"},
    "policy": {"engine", "compare", "errors"},
    "store": BASE | {"contract", "policy"},
    "routing": BASE | {"store", "contract", "policy", "engine"},
    "headroom": BASE | {"store", "contract", "policy"},
    "sim": {"config", "errors", "contract"},
    "otlp": BASE,  # plain values in, OTLP spans out: the worker side imports it
    "alerts": BASE | {"store", "contract", "policy", "routing", "otlp"},
    "app": BASE | {"contract", "policy", "routing", "headroom", "store", "compare"},
    "pipeline": BASE | {"contract", "policy", "engine", "compare", "store", "routing", "headroom",
                        "alerts", "otlp"},
    "ops": BASE | {"contract", "policy", "engine", "compare", "store", "routing", "headroom", "alerts",
                   "app", "pipeline", "sim", "otlp"},
    "bench": BASE | {"contract", "policy", "engine", "compare", "store", "routing", "headroom", "alerts",
                     "app", "pipeline", "sim", "otlp"},
    "cli": BASE | {"contract", "policy", "engine", "compare", "store", "routing", "headroom", "alerts",
                   "app", "pipeline", "sim", "ops", "bench", "otlp"},
    "": {"app", "compare", "moved"},   # tierguard/__init__.py: the public surface
    "__main__": {"cli"},
}
MAX_LOOSE = 8  # modules at the top of the package, besides the rooms
MAX_FUNCTION_LINES, MAX_DEPTH = 60, 4
# Functions written before the rule, still longer or deeper: this list may only shrink.
LONG_FUNCTIONS = {
    "alerts.monitors.check", "app.stream.feed", "bench.dashboards.dashboard_figures",
    "bench.headroom._run",
    "bench.ladder._one", "cli.replay.replay",
    "engine.replay._next_event", "ops.demo.run", "ops.demo._traffic", "ops.replay.from_db",
    "ops.status.category_status", "policy.model_limits._jpeg_size",
}
BLOCKS = (ast.If, ast.For, ast.While, ast.With, ast.Try, ast.AsyncFor, ast.AsyncWith, ast.Match)

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


def depth(node: ast.AST, level: int = 0) -> int:
    """How deep blocks nest in a function (nested functions and classes count on their own)."""
    deepest = level
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            deepest = max(deepest, depth(child, level + isinstance(child, BLOCKS)))
    return deepest


def long_functions() -> set[str]:
    out = set()
    for name, path in module_names().items():
        if ".migrations." in name:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                    node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES or depth(node) > MAX_DEPTH):
                out.add(f"{name.removeprefix('tierguard.')}.{node.name}")
    return out


def test_no_private_name_crosses_a_module() -> None:
    crossing = []
    for name, path in module_names().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tierguard"):
                crossing += [f"{name} imports {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert crossing == []


def test_functions_stay_short_and_shallow() -> None:
    found = long_functions()
    assert found - LONG_FUNCTIONS == set(), f"over {MAX_FUNCTION_LINES} lines or {MAX_DEPTH} levels deep"
    assert LONG_FUNCTIONS - found == set(), "shorter now: take them off LONG_FUNCTIONS"


def loose_modules(names: list[str]) -> list[str]:
    return sorted(n.removesuffix(".py") for n in names if n.endswith(".py") and n != "__init__.py")


def test_few_modules_sit_loose_at_the_top() -> None:
    loose = loose_modules([p.name for p in PACKAGE.glob("*.py")])
    assert len(loose) <= MAX_LOOSE, f"{len(loose)} loose modules (at most {MAX_LOOSE}): {loose}"


def test_tests_mirror_the_package() -> None:
    """tests/<room>/ for the package's rooms; no test folder for a room that does not exist."""
    tests = Path(__file__).parent
    rooms = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    folders = {p.name for p in tests.iterdir() if (p / "__init__.py").exists()}
    assert folders - rooms == set()
    assert {"store", "policy", "headroom", "sim", "contract", "routing"} <= folders


def test_every_subpackage_says_what_it_owns() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        if init.parent.name == "migrations":
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc.lower() and len(doc) > 200, f"{init}: say what it owns and may import"


def test_the_checks_catch_what_they_look_for() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_violations({"tierguard.engine.cusum": {"tierguard.store.db"},
                             "tierguard.app.client": {"tierguard.pipeline.calls"}}) == [
        "tierguard.app.client imports tierguard.pipeline.calls",
        "tierguard.engine.cusum imports tierguard.store.db"]
    ours, _ = graph()
    assert "tierguard.engine.cusum" in ours["tierguard.engine.detector"]
    assert "tierguard.compare" in ours["tierguard.policy.schema"]


def test_public_surface() -> None:
    from tierguard.comparators import Verdict as OldPath

    assert tierguard.Verdict is OldPath


def test_old_import_paths_keep_working() -> None:
    import importlib
    import warnings

    from tierguard.moved import MOVED
    from tierguard.routing.routes import RouteTable
    from tierguard.store.tables import Sample

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        modules = {old: importlib.import_module(old) for old in MOVED}
    assert modules["tierguard.db"].Sample is Sample and modules["tierguard.routes"].RouteTable is RouteTable
    assert modules["tierguard.ops.bench"].hotpath_figures  # one module that became two: both's names
    assert any("tierguard.db moved to tierguard.store.db" in str(w.message) for w in seen)
    from tierguard.policy import CategoryPolicy, Policy, load_policy, parse_policy  # noqa: F401
    assert {"ShadowedAnthropic", "AsyncShadowedAnthropic", "Verdict"} <= set(tierguard.__all__)
