"""Whole models on the GPU against the CPU backend (float32 arithmetic), on random-weight GGUFs written by the test.

Full offload (`-ngl -1`) and partial offload (`-ngl 1` of 2 layers: activations cross the bus at the
boundary; the CPU layer's matmuls over 32 or more tokens run on the GPU), the GPU's part of a decode step
as a CUDA graph where CuPy is present. Prompt then single-token steps,
so both the prompt path and the decode path (graph recorded on the first step, replayed after)
are checked. Tolerances: logits max |gpu - cpu| <= 3e-2 * max |cpu| (Q4_0/Q8_0 matvecs quantize
activations to int8 blocks, GEMMs round to float16) and top-1 agreement up to that tolerance (the
GPU's top token scores within it of the CPU's best); BERT embeddings (mean-pooled) cosine >= 0.999.
"""

from __future__ import annotations

import numpy as np
import pytest

from embedkit.kernels.cuda import cuda_available, cuda_unavailable_reason

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason=cuda_unavailable_reason() or "no CUDA GPU"),
]


@pytest.fixture(autouse=True)
def float32_cpu_reference(monkeypatch):
    """The GPU computes in float32, so its reference is the CPU's float32 arithmetic, not llama.cpp's."""
    monkeypatch.setenv("EMBEDKIT_CPU_MATH", "float32")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    from embedkit.testing.random_quant import bert_spec, gemma3_spec, llama_spec, write_random_gguf

    d = tmp_path_factory.mktemp("cuda_models")
    return {
        "llama": write_random_gguf(d / "llama.gguf", "llama", *llama_spec(64, 2, 4, 2, 128, 96, "Q4_0", 64), seed=1),
        "llama_hd32": write_random_gguf(d / "llama32.gguf", "llama", *llama_spec(128, 2, 4, 2, 256, 96, "Q4_0", 64),
                                        seed=5),
        "llama_q8": write_random_gguf(d / "llama8.gguf", "llama", *llama_spec(64, 2, 4, 1, 128, 96, "Q8_0", 64, 4),
                                      seed=2),
        "gemma3": write_random_gguf(d / "gemma3.gguf", "gemma3", *gemma3_spec(256, 2, 2, 1, 128, 256, 96, "Q4_K", 3),
                                    seed=3),
        "bert": write_random_gguf(d / "bert.gguf", "bert", *bert_spec(64, 2, 2, 128, 96), seed=4),
    }  # fmt: skip


def _run(path, placement, steps=(9, 1, 1, 1)):
    from embedkit.models import load_model

    m = load_model(path, placement)
    st = m.new_state(64)
    rng = np.random.default_rng(7)
    out, pos = [], 0
    for n in steps:
        ids = rng.integers(0, m.params.n_vocab, n).astype(np.int32)
        out.append(m.forward(ids, st, pos, all_positions=n > 1))
        pos += n
    return np.concatenate(out)


def _check_logits(got, ref):
    assert got.shape == ref.shape
    tol = 3e-2 * np.abs(ref).max()
    assert np.abs(got - ref).max() <= tol
    best = ref.max(axis=-1)
    picked = ref[np.arange(len(ref)), got.argmax(axis=-1)]
    assert np.all(picked >= best - tol)


@pytest.mark.parametrize("name", ["llama", "llama_hd32", "llama_q8", "gemma3"])
@pytest.mark.parametrize("ngl,input_on_gpu", [(-1, False), (-1, True), (1, False)])
def test_decoder_logits_gpu_vs_cpu(model_files, name, ngl, input_on_gpu):
    from embedkit.backend.placement import make_placement

    ref = _run(model_files[name], None)
    got = _run(model_files[name], make_placement("cuda", ngl, input_on_gpu))
    _check_logits(got, ref)


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_partial_offload_prompt_matmuls_on_gpu(model_files, name):
    """-ngl 1 of 2 layers: the CPU layer's matmuls over a 40-token prompt run on the GPU (each weight
    uploaded for the call, as llama.cpp does with large batches), decode stays on the CPU's kernels,
    and the logits agree with the CPU's."""
    from embedkit.backend.cuda import OFFLOAD_MIN_TOKENS, cuda_backend
    from embedkit.backend.placement import make_placement

    assert OFFLOAD_MIN_TOKENS <= 40
    be = cuda_backend(graphs=True)
    before = be.stats.extra.get("host_matmuls", 0)
    ref = _run(model_files[name], None, steps=(40, 1, 1))
    got = _run(model_files[name], make_placement("cuda", 1, False), steps=(40, 1, 1))
    _check_logits(got, ref)
    assert be.stats.extra.get("host_matmuls", 0) - before >= 4  # Q, K, V, O, gate, up, down of layer 0


@pytest.mark.parametrize("name", ["llama", "gemma3"])
@pytest.mark.parametrize("ngl", [-1, 1, 2])
def test_decode_graph_replays(model_files, name, ngl):
    """Later one-token steps replay the recorded graph (when CuPy is there) and agree with the CPU: the
    whole step with full offload; with -ngl 1 or 2 of 2 layers the GPU's layers only (the hidden state
    comes up from the CPU's embedding or layer, and goes back down to the CPU's output head)."""
    from embedkit.backend.cuda import cuda_backend
    from embedkit.backend.placement import make_placement

    be = cuda_backend(graphs=True)
    before = be.stats.replayed
    ref = _run(model_files[name], None, steps=(3, 1, 1, 1, 1, 1))
    got = _run(model_files[name], make_placement("cuda", ngl), steps=(3, 1, 1, 1, 1, 1))
    _check_logits(got, ref)
    if be.graphs:
        assert be.stats.replayed - before >= 3


def test_decode_graph_new_state(model_files):
    """A second KV state on the same model leaves the recorded graph at the first attention (its
    cache differs): the replayed prefix is recomputed with the unfused RoPE and KV-store launches
    (the graph had them inside the attention kernel), and both runs agree with the CPU."""
    from embedkit.backend.placement import make_placement
    from embedkit.models import load_model

    path = model_files["llama_hd32"]
    cpu, gpu = load_model(path), load_model(path, make_placement("cuda", -1))

    def run(m, steps):
        st = m.new_state(32)
        rng = np.random.default_rng(11)
        out, pos = [], 0
        for n in steps:
            out.append(m.forward(rng.integers(0, 96, n).astype(np.int32), st, pos))
            pos += n
        return np.concatenate(out)

    be = gpu.placement.layer(0)
    derailed = be.stats.derailed
    for steps in ((3, 1, 1, 1, 1), (3, 1, 1)):
        _check_logits(run(gpu, steps), run(cpu, steps))
    if be.graphs:
        assert be.stats.derailed > derailed


def test_bert_embeddings_gpu_vs_cpu(model_files):
    from embedkit.backend.placement import make_placement
    from embedkit.models import load_model

    rng = np.random.default_rng(3)
    ids = rng.integers(0, 96, (3, 7))
    mask = np.ones((3, 7), dtype=np.int64)
    mask[1, 4:] = 0
    mask[2, 2:] = 0

    def pooled(placement):
        h = load_model(model_files["bert"], placement).encode(ids, mask)
        e = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    ref = pooled(None)
    for placement in (make_placement("cuda", -1), make_placement("cuda", -1, input_on_gpu=True)):
        assert np.all((ref * pooled(placement)).sum(1) >= 0.999)


def test_device_errors():
    from embedkit.backend.placement import make_placement
    from embedkit.errors import InputError

    with pytest.raises(InputError):
        make_placement("tpu", None)
    assert make_placement("cpu", 5)(2).layer(0).name == "cpu"
    assert make_placement("auto", 0)(2).layer(1).name == "cpu"
    assert make_placement("auto", -1)(2).layer(1).name == "cuda"
