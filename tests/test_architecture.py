"""docs/architecture.md describes the code exactly: every module, table, Redis key and task, and no
name the code no longer has."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import tierguard
from tierguard.contract import broker, keys

PACKAGE = Path(tierguard.__file__).parent
PAGE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
ROOMS = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())


def section(title: str) -> str:
    text = PAGE.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def table_rows(text: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| ---")]
    return rows[1:] if rows else []


def first_names(text: str) -> set[str]:
    """The backticked names in each table row's first cell."""
    return {name for row in table_rows(text) for name in re.findall(r"`([^`]+)`", row[0])}


def code_modules() -> set[tuple[str, str]]:
    out = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if path.name == "__init__.py" or "versions" in rel.parts:
            continue
        room = rel.parts[0] if len(rel.parts) > 1 else ""
        out.add((room, "/".join(rel.parts[1:]) if room else rel.name))
    return out


def page_modules() -> set[tuple[str, str]]:
    out = set()
    for row in table_rows(section("The package by room")):
        room = row[0].strip("`/") if row[0] != "top level" else ""
        for name in re.findall(r"`([a-z_/]+\.py)`", row[1]):
            head, _, rest = name.partition("/")
            out.add((head, rest) if rest and head in ROOMS else (room, name))
    return out


def test_every_module_is_on_the_page_and_only_those() -> None:
    code, page = code_modules(), page_modules()
    assert sorted(code - page) == [], "modules missing from docs/architecture.md"
    assert sorted(page - code) == [], "docs/architecture.md names modules the code does not have"


def test_every_reference_to_code_resolves() -> None:
    """`room/module`, `room/module.name` and `tierguard.dotted.path` anywhere on the page."""
    text, bad = PAGE.read_text(), []
    rooms = "|".join(ROOMS)
    reference = rf"`(?:tierguard/)?({rooms})/([a-z_]+)(?:\.py)?(?:\.([A-Za-z_]+))?"
    for room, module, attr in re.findall(reference, text):
        if module in ("migrations", "versions"):
            continue
        try:
            mod = importlib.import_module(f"tierguard.{room}.{module}")
        except ImportError:
            bad.append(f"{room}/{module}")
            continue
        if attr and not hasattr(mod, attr):
            bad.append(f"{room}/{module}.{attr}")
    for dotted in re.findall(r"`(tierguard(?:\.[A-Za-z_]+)+)`", text):
        if dotted in TASKS:
            continue
        module, attr = dotted, None
        while True:
            try:
                mod = importlib.import_module(module)
                break
            except ImportError:
                module, _, attr = module.rpartition(".")
        if attr and not hasattr(mod, attr):
            bad.append(dotted)
    assert bad == []


def test_every_table_is_on_the_page_and_only_those() -> None:
    from sqlmodel import SQLModel

    import tierguard.store.tables  # noqa: F401

    tables = {t for t in SQLModel.metadata.tables if not t.startswith("sample_p")}
    assert first_names(section("Tables")) == tables


def key_constants() -> dict[str, str]:
    tree = ast.parse(Path(keys.__file__).read_text())
    return {node.targets[0].id: node.value.value for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)}


def test_every_redis_key_is_on_the_page_and_in_keys_py() -> None:
    redis = section("Redis")
    named = {name for row in table_rows(redis) if "TIERGUARD_QUEUE" not in row[0]
             for name in re.findall(r"`([^`]+)`", row[0])}
    assert named == set(key_constants().values())


def test_keys_py_holds_every_redis_key_the_code_writes() -> None:
    """No other module spells a ``tierguard:`` key: they all come from contract/keys.py."""
    spelled = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "keys.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    re.match(r"tierguard:[a-z{]", node.value):
                spelled.append(f"{path.relative_to(PACKAGE)}: {node.value}")
    assert spelled == []


TASKS = {getattr(broker, n) for n in dir(broker) if n.endswith("_TASK")}


def test_every_task_is_on_the_page_and_only_those() -> None:
    assert first_names(section("Messages")) == TASKS


def test_the_checks_see_what_they_look_for() -> None:
    assert ("pipeline", "flow.py") in code_modules() and ("store", "migrations/env.py") in code_modules()
    assert ("engine", "sampling.py") in page_modules()  # named from another room's row
    assert table_rows("| a | b |\n| --- | --- |\n| `x` | y |") == [["`x`", "y"]]
    assert key_constants()["ROUTES"] == "tierguard:routes"
