"""The import rules of docs/architecture.md, enforced: the table on that page is the rule set.

Every ``import`` and ``from ... import`` statement of every module (those inside functions too)
is checked against the row of the package it belongs to.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "nas_service"
ARCHITECTURE = REPO / "docs" / "architecture.md"
EVERY_PACKAGE = "every package"


@dataclass(frozen=True)
class Rule:
    inner: frozenset[str] | None  # None: every package
    outer: frozenset[str]


def _names(cell: str) -> frozenset[str]:
    cell = cell.strip()
    return frozenset() if cell in ("–", "-", "") else frozenset(
        n.strip().strip("`") for n in cell.split(","))


def rules() -> dict[str, Rule]:
    text = ARCHITECTURE.read_text()
    section = re.search(r"^## Packages and who may import whom\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "docs/architecture.md has no '## Packages and who may import whom' section"
    table: dict[str, Rule] = {}
    for line in section.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        unit, _owns, inner, outer = cells
        table[unit.strip("`")] = Rule(None if inner == EVERY_PACKAGE else _names(inner),
                                      _names(outer))
    assert table, "the package table of docs/architecture.md has no rows"
    return table


def unit_of(module: str) -> str:
    """``nas_service.graph.tracing`` -> ``graph``; ``nas_service`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import statement in ``path``."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                assert node.module is not None
                found.append((node.lineno, node.module))
    return found


def own_unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_package_has_a_rule() -> None:
    table = rules()
    missing = sorted({own_unit(p) for p in MODULES} - table.keys())
    assert not missing, f"docs/architecture.md has no row for {missing}"
    stale = sorted(table.keys() - {own_unit(p) for p in MODULES})
    assert not stale, f"docs/architecture.md has rows for packages that do not exist: {stale}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_module_imports_only_what_its_package_may(path: Path) -> None:
    table = rules()
    unit = own_unit(path)
    rule = table[unit]
    stdlib = sys.stdlib_module_names | {"__future__"}
    broken = []
    for line, name in imports(path):
        top = name.split(".")[0]
        if top == "nas_service":
            target = unit_of(name)
            if target == unit or rule.inner is None or target in rule.inner:
                continue
            broken.append(f"line {line}: imports nas_service.{target} ({name})")
        elif top not in stdlib and top not in rule.outer:
            broken.append(f"line {line}: imports the third-party {top!r}")
    assert not broken, (f"{path.relative_to(REPO)} ({unit}) breaks the rules of "
                        "docs/architecture.md:\n" + "\n".join(broken))


def test_nothing_imports_the_api_or_the_command_line() -> None:
    table = rules()
    tops = {"api", "commands"} & table.keys()
    # `python -m nas_service` runs the command line.
    for unit, rule in table.items():
        if rule.inner is None or unit in tops or unit == "__main__":
            continue
        allowed = rule.inner & tops
        assert not allowed, f"{unit} may import {sorted(allowed)}"


def test_the_ml_core_never_imports_web_database_or_settings() -> None:
    table = rules()
    core = ("graph", "spaces", "data", "ghn", "scoring", "training", "zoo", "continual")
    service = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "pydantic_settings",
               "httpx"}
    for unit in core:
        rule = table[unit]
        assert rule.inner is not None and not rule.inner & {"db", "api", "search", "settings"}, unit
        assert not rule.outer & service, unit
