"""docs/architecture.md against the code: its import rules hold for every module of embedkit/, and its table
of quant types x kernel paths x devices is the one the dispatch tables give."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from embedkit.gguf import GGMLType

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


# -- the quant table ------------------------------------------------------------------------------------------


def _literal(path: Path, name: str):
    """A module-level constant of a file that can't be imported here (the CUDA kernels need numba-cuda)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            value = node.value.body if isinstance(node.value, ast.IfExp) else node.value  # env switch: default
            return ast.literal_eval(value)
    raise AssertionError(f"{path}: no constant {name}")


def quant_table() -> str:
    """The markdown table of ggml types x kernel paths x devices, built from the dispatch tables."""
    from embedkit.backend import cuda as cuda_backend
    from embedkit.backend.ggml_cpu import EXACT_MATMUL_TYPES
    from embedkit.kernels.cpu.dispatch import DEQUANTIZERS
    from embedkit.kernels.cpu.ggml_exact import dots
    from embedkit.kernels.cpu.matmul import INT8_MATVECS, MATVECS, PACKED_MATVECS

    cuda_dir = PACKAGE / "kernels" / "cuda"
    cuda_int8 = set(_literal(cuda_dir / "quant_kmatvec.py", "INT8_KMATVECS"))
    cuda_int8 |= set(_literal(cuda_dir / "quant_legacy.py", "LAYOUTS"))
    generic, fast = cuda_backend._GENERIC_TYPES, cuda_backend._FAST_TYPES
    types = sorted(set(DEQUANTIZERS) | set(EXACT_MATMUL_TYPES) | {GGMLType[n] for n in generic})

    def cpu_decode(t: GGMLType) -> str:
        if t == GGMLType.F32:
            return "BLAS"
        if t in PACKED_MATVECS:
            return "int16-activation matvec, repacked rows"
        if t in INT8_MATVECS:
            return "int16-activation matvec"
        if t in MATVECS:
            return "float32 fused matvec"
        return "dequantized tiles + BLAS"

    def exact(t: GGMLType) -> str:
        if t not in EXACT_MATMUL_TYPES:
            return "— (float32 path)"
        activation = dots._ACTIVATION[int(t)].__name__.removeprefix("quantize_").upper()  # quantize_q8_K -> Q8_K
        return f"yes, {activation} activations"

    def cuda_decode(t: GGMLType) -> str:
        if t.name in fast:
            return "dp4a, repacked quants + f16 scales"
        if t.name in cuda_int8:
            return "dp4a on int8 activation blocks"
        if t.name in generic:
            return "float32 warp-per-row matvec"
        return "— (UnsupportedQuantError)"

    lines = [
        "| type | CPU float32, ≤ 4 tokens | CPU float32, batches | CPU llama.cpp-exact (`ggml`) "
        "| CUDA, ≤ 8 tokens | CUDA, batches |",
        "|---|---|---|---|---|---|",
    ]
    for t in types:
        cpu = t in DEQUANTIZERS
        lines.append(
            f"| {t.name} | {cpu_decode(t) if cpu else '—'} | "
            f"{('BLAS' if t == GGMLType.F32 else 'dequantized tiles + BLAS') if cpu else '—'} | {exact(t)} | "
            f"{cuda_decode(t)} | {'float16 dequantization + cuBLAS GEMM' if t.name in generic else '—'} |"
        )
    return "\n".join(lines) + "\n"


def test_quant_table_is_the_dispatch_tables() -> None:
    doc = _section(DOC.read_text(encoding="utf-8"), "quant-table")
    want = quant_table()
    assert doc.strip() == want.strip(), f"docs/architecture.md's quant table is out of date; it should read:\n{want}"


def test_readme_links_the_architecture() -> None:
    assert "](docs/architecture.md)" in (REPO / "README.md").read_text(encoding="utf-8")
