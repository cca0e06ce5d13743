"""docs/architecture.md against the code: its import rules hold for every module of embedkit/ (its table of
quant types x kernel paths x devices is checked against the registry by tests/test_quant_registry.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
PACKAGE = REPO / "embedkit"


def _section(text: str, name: str) -> str:
    m = re.search(rf"<!-- {name} -->\n(.*?)<!-- /{name} -->", text, re.S)
    assert m, f"docs/architecture.md has no <!-- {name} --> ... <!-- /{name} --> section"
    return m.group(1)


def _table_rows(section: str) -> list[list[str]]:
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r] for r in rows[2:]]  # skip the header and its --- line


def _import_rules() -> dict[str, set[str]]:
    """layer -> the layers it may import, from the doc's table (first column: the layer's names in backticks,
    last column: the layers it may import, in backticks)."""
    rules: dict[str, set[str]] = {}
    for row in _table_rows(_section(DOC.read_text(encoding="utf-8"), "layers")):
        names = re.findall(r"`(\w+)`", row[0])
        allowed = set(re.findall(r"`(\w+)`", row[-1])) | set(names)
        for name in names:
            rules[name] = allowed
    return rules


def _layer_of(module: str) -> str | None:
    """`embedkit.x.y` -> `x`, the top-level package or module of embedkit it lives in."""
    parts = module.split(".")
    return parts[1] if parts[0] == "embedkit" and len(parts) > 1 else None


def _is_layer(name: str) -> bool:
    return (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, including those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "embedkit":  # `from embedkit import kernels` (a layer) or `__version__` (a name)
                found += [(node.lineno, f"embedkit.{a.name}") for a in node.names if _is_layer(a.name)]
            else:
                found.append((node.lineno, node.module))
    return found


def test_every_layer_of_the_package_is_in_the_doc() -> None:
    rules = _import_rules()
    layers = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    layers -= {"__init__", "__pycache__"}
    assert layers - set(rules) == set(), "modules of embedkit/ missing from the layers table"
    assert set(rules) - layers == set(), "layers table names what embedkit/ does not have"


def test_imports_follow_the_layers_table() -> None:
    rules = _import_rules()
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO)
        own = _layer_of(".".join(rel.with_suffix("").parts))
        if own in (None, "__init__"):  # embedkit/__init__.py: the public API, free to re-export any layer
            continue
        for line, module in _imports(path):
            target = _layer_of(module)
            if target is not None and target not in rules[own]:
                allowed = sorted(rules[own])
                broken.append(f"{rel}:{line} imports {module} (layer `{target}`; `{own}` may import {allowed})")
    assert not broken, "\n".join(broken)


def test_readme_links_the_architecture() -> None:
    assert "](docs/architecture.md)" in (REPO / "README.md").read_text(encoding="utf-8")
