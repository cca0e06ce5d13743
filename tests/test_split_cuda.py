"""A model split layer-wise across CUDA devices gives the logits of the same model on one device.

Two logical devices on one GPU (`devices=[0, 0]`, as EMBEDKIT_CUDA_DEVICES=0,0) run every path of a split:
a backend, weights, KV caches and stream per device, and the hidden state handed from one to the next by
a device-to-device copy (or through the host, `peer_copy=False`). Both sides run the same kernels on the
same inputs, so the logits agree to float32 rounding (rtol 1e-5), prompt and decode steps alike (on a GPU
with CuPy the decode steps replay each device's CUDA graph, the hand-off copy inside it).

Runs on a GPU, and under NUMBA_ENABLE_CUDASIM=1 only `test_layer_split_sim` (two layers 50/50, the output
head on the CPU: the simulator runs a one-token step of one layer in about a minute on a loaded machine);
the others skip there. The one for two physical GPUs skips on one.
"""

from __future__ import annotations

import numpy as np
import pytest

from embedkit.kernels.cuda import cuda_available, cuda_unavailable_reason

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason=cuda_unavailable_reason() or "no CUDA GPU"),
]

STEPS = (4, 1, 1)  # a prompt, then one-token decode steps


def _sim() -> bool:
    from numba.cuda import config

    return bool(config.ENABLE_CUDASIM)


gpu_only = pytest.mark.skipif("_sim()", reason="too slow under the CUDA simulator; runs on a GPU")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3-layer llama (Q8_0): split 50/50 as llama.cpp does, layers 0-1 on device 0, layer 2 and the output
    head on device 1."""
    from embedkit.testing.random_quant import llama_spec, write_random_gguf

    d = tmp_path_factory.mktemp("split")
    return write_random_gguf(d / "tiny.gguf", "llama", *llama_spec(32, 3, 2, 1, 64, 48, "Q8_0", 32), seed=27)


def _run(path, placement, steps=STEPS):
    from embedkit.models import load_model

    m = load_model(path, placement)
    st = m.new_state(max(16, sum(steps)))
    rng = np.random.default_rng(27)
    out, pos = [], 0
    for n in steps:
        ids = rng.integers(0, m.params.n_vocab, n).astype(np.int32)
        out.append(m.forward(ids, st, pos, all_positions=n > 1))
        pos += n
    return np.concatenate(out), m.placement


@pytest.fixture(scope="module")
def one_device(tiny):
    """Logits of the whole model on one CUDA device (the reference)."""
    from embedkit.backend.placement import make_placement

    return _run(tiny, make_placement("cuda", -1))[0]


@pytest.fixture
def hand_offs(monkeypatch):
    """Counts the device-to-device copies the split's placements make."""
    from embedkit.backend import cuda_devices

    made = []
    real = cuda_devices.hand_off

    def counted(x, src, dst):
        y = real(x, src, dst)
        if y is not None:
            made.append((src.logical, dst.logical))
        return y

    monkeypatch.setattr(cuda_devices, "hand_off", counted)
    return made


def _split(**kw):
    from embedkit.backend.split import make_split_placement

    kw.setdefault("devices", [0, 0])
    return make_split_placement("cuda", **kw)


def test_hand_off_copies_between_logical_devices():
    """Two logical devices of GPU 0: the hand-off is a copy on the receiver (a new array of its own, the same
    values), the host path gives the same, and a CPU end is left to the host path (None)."""
    from embedkit.backend import Placement, cuda_devices
    from embedkit.backend.cpu import CPUBackend

    d0, d1 = cuda_devices.device_backends([0, 0], graphs=False)
    assert d0 is not d1 and d0.physical == d1.physical == 0
    x = np.random.default_rng(27).standard_normal((3, 40)).astype(np.float32)
    xd = d0.asarray(x)
    y = cuda_devices.hand_off(xd, d0, d1)
    assert y is not xd and y.shape == (3, 40)
    np.testing.assert_array_equal(d1.to_host(y), x)
    assert cuda_devices.hand_off(xd, d0, CPUBackend()) is None
    via_host = Placement(d0, [d0, d1], d1).move(xd, d0, d1)
    np.testing.assert_array_equal(d1.to_host(via_host), x)


def test_layer_split_sim(tmp_path, hand_offs):
    """-ngl 2 of 2 layers split 1,1: layer 0 on logical device 0, layer 1 on device 1, the output head on the
    CPU; a prompt and a decode step give the logits of -ngl 2 on one device."""
    from embedkit.backend.placement import make_placement
    from embedkit.testing.random_quant import llama_spec, write_random_gguf

    path = write_random_gguf(tmp_path / "t.gguf", "llama", *llama_spec(32, 2, 2, 1, 32, 32, "Q8_0", 16), seed=27)
    ref, _ = _run(path, make_placement("cuda", 2), steps=(2, 1))
    got, p = _run(path, _split(gpu_layers=2, tensor_split="1,1"), steps=(2, 1))
    cpu, d0, d1 = p.backends
    assert p.layers == [d0, d1] and p.output is cpu and d0 is not d1 and (d0.logical, d1.logical) == (0, 1)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert hand_offs == [(0, 1)] * 2


@gpu_only
def test_layer_split_50_50_matches_one_device(tiny, one_device, hand_offs):
    got, p = _run(tiny, _split(tensor_split="1,1"))
    d0, d1 = p.backends
    assert (d0.logical, d1.logical) == (0, 1) and d0 is not d1
    assert p.layers == [d0, d0, d1] and p.input is d0 and p.output is d1
    np.testing.assert_allclose(got, one_device, rtol=1e-5, atol=1e-5 * np.abs(one_device).max())
    assert hand_offs == [(0, 1)] * len(STEPS)  # once per forward, prompt and decode


@gpu_only
def test_layer_split_through_host(tiny, one_device, hand_offs):
    """peer_copy=False: the hidden state goes down to the host and up to the next device."""
    got, p = _run(tiny, _split(tensor_split="1,1", peer_copy=False))
    assert len(p.backends) == 2 and p.hand_off is None
    np.testing.assert_allclose(got, one_device, rtol=1e-5, atol=1e-5 * np.abs(one_device).max())
    assert hand_offs == []


@gpu_only
def test_main_gpu_holds_output(tiny, one_device, hand_offs):
    """--main-gpu 0 with layer 2 on device 1: the hidden state comes back to device 0 for the output head,
    which has a backend of its own there (one run of the forward per backend, so each records one graph)."""
    got, p = _run(tiny, _split(tensor_split="1,1", main_gpu=0))
    d0, d1, out = p.backends
    assert p.layers == [d0, d0, d1] and p.output is out
    assert (out.logical, out.physical, out.stage) == (0, d0.physical, 1)
    np.testing.assert_allclose(got, one_device, rtol=1e-5, atol=1e-5 * np.abs(one_device).max())
    assert hand_offs == [(0, 1), (1, 0)] * len(STEPS)


@gpu_only
def test_partial_offload_split(tiny, hand_offs):
    """-ngl 2 of 3 layers: layer 0 and the output head on the CPU, layers 1 and 2 split over two devices;
    the same logits as -ngl 2 on one device."""
    from embedkit.backend.placement import make_placement

    ref, _ = _run(tiny, make_placement("cuda", 2))
    got, p = _run(tiny, _split(gpu_layers=2, tensor_split="1,1"))
    cpu, d0, d1 = p.backends
    assert cpu.name == "cpu" and p.layers == [cpu, d0, d1] and p.output is cpu
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert hand_offs == [(0, 1)] * len(STEPS)


@gpu_only
def test_split_decode_graphs_gpu(tmp_path, hand_offs):
    """On a GPU: 8 layers split 3:1, 12 decode steps; each device records its decode step once and replays
    it (the hand-off copy inside device 1's graph), and the logits match one device's."""
    from embedkit.backend.placement import make_placement
    from embedkit.testing.random_quant import llama_spec, write_random_gguf

    path = write_random_gguf(tmp_path / "m.gguf", "llama", *llama_spec(512, 8, 8, 2, 1024, 512, "Q4_0", 256), seed=3)
    steps = (40,) + (1,) * 12
    ref, _ = _run(path, make_placement("cuda", -1), steps)
    got, p = _run(path, _split(tensor_split="3,1"), steps)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    d0, d1 = p.backends
    if d0.graphs and d1.graphs:
        assert d0.stats.replayed >= 10 and d1.stats.replayed >= 10


@gpu_only
def test_two_physical_gpus(tiny, one_device, hand_offs):
    """Devices 0 and 1 of the host (skipped with fewer): peer copy where the GPUs allow it, else the host."""
    from numba import cuda

    if len(cuda.gpus) < 2:
        pytest.skip("one physical GPU")
    got, p = _run(tiny, _split(tensor_split="1,1", devices=[0, 1]))
    assert [b.physical for b in p.backends] == [0, 1]
    np.testing.assert_allclose(got, one_device, rtol=1e-5, atol=1e-5 * np.abs(one_device).max())
