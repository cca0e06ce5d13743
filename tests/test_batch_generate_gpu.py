"""Continuous batching on the GPU (random-weight models): 8 prompts admitted at different steps into 4 slots,
steps of at most 8 rows (prompt chunks mixed with decode rows: the CUDA graphs recorded per row count, and
the eager path), each sequence's greedy tokens equal to its solo run on the same GPU and its logits within
the GPU tolerance of tests/test_cuda_models.py (int8 matvecs, float16 GEMMs).

The solo runs process their prompts in forwards of the batch's 8 rows too: on CUDA a forward's arithmetic
depends on its row count (up to 8 rows int8 activation blocks and dp4a matvecs, above that float16 GEMMs),
as llama.cpp's CUDA backend switches between its MMVQ and MMQ/cuBLAS paths, and the random Q4_0 llama model
has greedy steps whose top two logits lie 1.6e-3 of the largest logit apart (measured on the CPU), closer
than the two paths agree."""

from __future__ import annotations

import numpy as np
import pytest
from batch_reference import GREEDY, Case, batched_run, max_rel_error, solo_run

from embedkit.kernels.cuda import cuda_available, cuda_unavailable_reason

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason=cuda_unavailable_reason() or "no CUDA GPU"),
]
GPU_TOLERANCE = 3e-2


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    from embedkit.testing.random_models import write_random_model

    d = tmp_path_factory.mktemp("cuda_batch")
    llama = dict(n_vocab=320, n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=256, n_ctx=256)
    gemma = dict(n_vocab=320, n_embd=256, n_layer=2, n_head=2, n_head_kv=1, head_dim=64, n_ff=512, n_ctx=256,
                 sliding_window=7)  # fmt: skip
    return {
        "llama": write_random_model(d / "llama.gguf", "llama", llama, "Q4_0", seed=5),
        "gemma3": write_random_model(d / "gemma3.gguf", "gemma3", gemma, "Q4_K", seed=3),
    }


def _cases() -> list[Case]:
    rng = np.random.default_rng(23)
    lengths = (3, 12, 1, 7, 10, 2, 5, 4)
    budgets = (6, 8, 3, 5, 2, 9, 7, 4)
    starts = (0, 0, 1, 2, 2, 4, 6, 9)
    return [Case(rng.integers(3, 320, n).tolist(), b, (), s) for n, b, s in zip(lengths, budgets, starts, strict=True)]


@pytest.mark.parametrize("batch_graphs", [True, False])
@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_eight_sequences_on_gpu_match_solo_runs(model_files, monkeypatch, name, batch_graphs):
    import embedkit.backend.cuda as cuda_mod
    from embedkit.backend.placement import make_placement
    from embedkit.generate import BatchGenerator, Generator

    monkeypatch.setattr(cuda_mod, "BATCH_GRAPHS", batch_graphs)
    gen = Generator(model_files[name], n_ctx=48, n_batch=8, placement=make_placement("cuda", -1))
    be = gen.model.placement.layer(0)
    cases = _cases()
    solos = [solo_run(gen, c) for c in cases]
    before = be.stats.replayed
    bgen = BatchGenerator.from_parts(gen.file, gen.model, gen.tokenizer, n_ctx=4 * 48, n_parallel=4, n_batch=8,
                                     background=False)  # fmt: skip
    results = batched_run(bgen, cases)
    for i, (r, s) in enumerate(zip(results, solos, strict=True)):
        assert max_rel_error(r.logits, s.logits) < GPU_TOLERANCE, i
        assert r.tokens == s.tokens, (i, r.tokens, s.tokens)
    if be.graphs and batch_graphs:
        assert be.stats.replayed > before  # several-sequence steps replayed a recorded graph


def test_background_generator_on_gpu_matches_solo_runs(model_files):
    """The server's way of running it: the BatchGenerator's own thread runs every step (the CUDA work comes
    from that thread), prompts submitted together; each sequence's tokens and logits as in its solo run."""
    from embedkit.backend.placement import make_placement
    from embedkit.generate import BatchGenerator, Generator

    gen = Generator(model_files["gemma3"], n_ctx=48, n_batch=8, placement=make_placement("cuda", -1))
    cases = _cases()[:6]
    solos = [solo_run(gen, c) for c in cases]
    with BatchGenerator.from_parts(gen.file, gen.model, gen.tokenizer, n_ctx=4 * 48, n_parallel=4, n_batch=8) as bgen:
        handles = [bgen.submit(c.prompt, n_predict=c.n_predict, sampler=GREEDY, ignore_eos=True, return_logits=True)
                   for c in cases]  # fmt: skip
        results = [h.result(timeout=300) for h in handles]
    for i, (r, s) in enumerate(zip(results, solos, strict=True)):
        assert r.finish_reason == "length", (i, r.finish_reason, r.error)
        assert max_rel_error(r.logits, s.logits) < GPU_TOLERANCE, i
        assert r.tokens == s.tokens, (i, r.tokens, s.tokens)
