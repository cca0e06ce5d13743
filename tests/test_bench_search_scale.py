"""benchmarks/bench_search.py's part 3 on the real embedded server, at a small size that is still large enough
for the planner to take the HNSW index: every flavour forced at one dimension (--dims) builds its own index, the
query plan uses it, and the tables come out."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from store_fixtures import *  # noqa: F403

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_search.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_search", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_scale_forces_each_flavour_at_one_dimension(store, capsys):
    bench = _bench_module()
    bench.bench_scale(store, ["vector", "halfvec", "bit"], 64, 3000, 200, 4, "64MB")
    out = capsys.readouterr().out
    assert "does not use" not in out, out
    for label in ("vector", "halfvec", "bit (binary-quantized, exact re-rank)"):
        assert f"#### {label}: 3,000 chunks x 64 dims" in out
    recalls = [float(r) for r in re.findall(r"^\| HNSW ef_search=\d+ \| [\d.]+ \| [\d.]+ \| ([\d.]+) \|$", out, re.M)]
    assert len(recalls) == 9 and all(0.0 <= r <= 1.0 for r in recalls)
    assert recalls[2] >= 0.9  # vector at ef_search 200 over 3,000 chunks finds nearly all true neighbours
    with store.connect() as conn:
        left = conn.execute("SELECT count(*) FROM collections WHERE name LIKE 'bench-scale-%'").fetchone()[0]
        indexes = conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%hnsw%' "
                               "AND indexdef LIKE '%bit(64)%'").fetchone()[0]
    assert left == 0 and indexes == 0


def test_flavoured_collection_orders_by_its_forced_flavour():
    bench = _bench_module()
    from embedkit.search.sql import index_order_expr
    from embedkit.store.collections import CollectionInfo, ModelIdentity

    info = CollectionInfo(7, "c", ModelIdentity("m", "f", "s", "a", 384, "mean", True), 200, 0)
    assert "::vector(384)" in index_order_expr(info, "c.embedding")
    assert "::halfvec(384)" in index_order_expr(bench.flavoured(info, "halfvec"), "c.embedding")
    assert "binary_quantize" in index_order_expr(bench.flavoured(info, "bit"), "c.embedding")
    assert bench.flavoured(info, "vector") is info
