"""Parts of `embedkit serve` that need no model: settings checks, the CLI's refusal to serve a non-loopback
address without a key, the Prometheus exposition, and the recommendation query."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from embedkit.errors import InputError
from embedkit.search.recommend import recommendation_query
from embedkit.server.config import ServerConfig, is_loopback
from embedkit.server.metrics import Counter, Histogram, ServerMetrics


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_non_loopback_without_key_refuses_to_start():
    with pytest.raises(InputError, match="--api-key"):
        ServerConfig(host="0.0.0.0").check()
    ServerConfig(host="0.0.0.0", api_key="k").check()
    ServerConfig(host="0.0.0.0", no_auth=True).check()
    with pytest.raises(InputError, match="nothing to serve"):
        ServerConfig(embed_model=None).check()
    p = subprocess.run([sys.executable, "-m", "embedkit.cli.main", "serve", "--host", "0.0.0.0", "--port", "1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.startswith("error: --host 0.0.0.0 is reachable") and "Traceback" not in p.stderr


def test_prometheus_text():
    c = Counter("x_total", "Things.", ("model",))
    c.inc(2, model='a"b')
    h = Histogram("lat_seconds", "Latency.", ("route",), buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.observe(v, route="/v1/x")
    text = "\n".join(c.render() + h.render())
    assert 'x_total{model="a\\"b"} 2' in text
    assert 'lat_seconds_bucket{route="/v1/x",le="0.1"} 1' in text
    assert 'lat_seconds_bucket{route="/v1/x",le="1"} 2' in text
    assert 'lat_seconds_bucket{route="/v1/x",le="+Inf"} 3' in text
    assert 'lat_seconds_count{route="/v1/x"} 3' in text and 'lat_seconds_sum{route="/v1/x"} 5.55' in text
    assert "# TYPE embedkit_embedding_forwards_total counter" in ServerMetrics().render()


def test_recommendation_query_is_qdrant_average_vector():
    rng = np.random.default_rng(7)
    pos, neg = rng.standard_normal((3, 8)), rng.standard_normal((2, 8))
    want = 2 * pos.mean(0) - neg.mean(0)
    np.testing.assert_allclose(recommendation_query(list(pos), list(neg)), want / np.linalg.norm(want), rtol=1e-6)
    only = recommendation_query(list(pos), [])
    np.testing.assert_allclose(only, pos.mean(0) / np.linalg.norm(pos.mean(0)), rtol=1e-6)
    with pytest.raises(InputError):
        recommendation_query([], list(neg))


def test_port_in_use_is_one_line():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "embedkit.cli.main", "serve", "--port", str(port)],
                           capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
