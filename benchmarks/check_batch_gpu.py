"""Issue 19 on the GPU: which switch makes CUDA continuous batching differ from solo runs (a diagnosis).

The case set of tests/test_batch_generate_gpu.py (8 prompts admitted at different steps into 4 slots, steps of
<= 8 rows) on the same random-weight models, run with the CUDA backend's graph switches varied: decode graphs
on/off, graphs of several-row steps (BATCH_GRAPHS), the fused decode RoPE. For each variant it prints, per
sequence, the max relative logit error of the batched run against the GPU solo run, of the GPU solo run against
the CPU backend's solo run, and of the batched run against the CPU, and whether the greedy tokens agree, so the
side that is wrong and the switch that matters show at once. The last variants run the solos in the batch's
8-row forwards (int8 matvecs throughout, where a longer solo prompt would take the float16 GEMMs), and each
model's line of top-2 logit gaps says how close its greedy choices are (a tie closer than the two paths agree
can flip a token without any bug).

    python benchmarks/check_batch_gpu.py
"""

from __future__ import annotations

import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from batch_reference import Case, batched_run, max_rel_error, solo_run  # noqa: E402

import embedkit.backend.cuda as cuda_mod  # noqa: E402
import embedkit.backend.cuda_attention as cuda_attention  # noqa: E402
from embedkit.backend.placement import make_placement  # noqa: E402
from embedkit.generate import BatchGenerator, Generator  # noqa: E402
from embedkit.testing.random_models import write_random_model  # noqa: E402

LLAMA = dict(n_vocab=320, n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=256, n_ctx=256)
GEMMA = dict(n_vocab=320, n_embd=256, n_layer=2, n_head=2, n_head_kv=1, head_dim=64, n_ff=512, n_ctx=256,
             sliding_window=7)  # fmt: skip
# (decode graphs, BATCH_GRAPHS, fused decode RoPE, the solo runs' n_batch): the last two variants process the
# solo prompts in the batched run's 8-row chunks (the int8 matvecs) instead of one float16 GEMM forward
VARIANTS = ((True, False, True, 512), (False, False, True, 8), (True, True, True, 8), (False, False, True, 512),
            (True, True, True, 512), (True, False, False, 512))  # fmt: skip


def cases() -> list[Case]:
    """The GPU test's cases (same seed, lengths, budgets and admission steps)."""
    rng = np.random.default_rng(23)
    lengths = (3, 12, 1, 7, 10, 2, 5, 4)
    budgets = (6, 8, 3, 5, 2, 9, 7, 4)
    starts = (0, 0, 1, 2, 2, 4, 6, 9)
    return [Case(rng.integers(3, 320, n).tolist(), b, (), s) for n, b, s in zip(lengths, budgets, starts, strict=True)]


def run_variant(path: Path, cpu_ref: list, graphs: bool, batch_graphs: bool, fuse: bool, solo_batch: int) -> None:
    """One variant: GPU solo runs, the batched run, and their errors against each other and the CPU."""
    cuda_mod.BATCH_GRAPHS, cuda_attention.FUSE_DECODE_ROPE = batch_graphs, fuse
    gen = Generator(path, n_ctx=48, n_batch=solo_batch, placement=make_placement("cuda", -1))
    be = gen.model.placement.layer(0)
    saved = be.steps.enabled
    be.steps.enabled = graphs and saved
    be.steps.forget()
    try:
        solos = [solo_run(gen, c) for c in cases()]
        bgen = BatchGenerator.from_parts(gen.file, gen.model, gen.tokenizer, n_ctx=4 * 48, n_parallel=4, n_batch=8,
                                         background=False)  # fmt: skip
        res = batched_run(bgen, cases())
    finally:
        be.steps.enabled = saved
        be.steps.forget()

    def errs(a, b):
        return " ".join(f"{max_rel_error(x.logits, y.logits):.3g}" if len(x.logits) == len(y.logits) else "len"
                        for x, y in zip(a, b, strict=True))  # fmt: skip

    print(f"{path.stem} graphs={graphs} batch_graphs={batch_graphs} fuse_rope={fuse} solo n_batch={solo_batch}: "
          f"{vars(be.stats)}")  # fmt: skip
    print("   batch vs GPU solo:", errs(res, solos))
    print("   GPU solo vs CPU:  ", errs(solos, cpu_ref))
    print("   batch vs CPU:     ", errs(res, cpu_ref))
    print("   tokens equal:     ", [r.tokens == s.tokens for r, s in zip(res, solos, strict=True)], flush=True)


def top2_gap(logits: list) -> float:
    """The smallest (top-1 - top-2) / max |logit| over a run's steps: how far apart a greedy choice was."""
    gaps = []
    for step in logits:
        v = np.asarray(step, dtype=np.float64).reshape(-1)
        top = np.sort(v)[::-1]
        gaps.append((top[0] - top[1]) / np.abs(v).max())
    return min(gaps)


def main() -> None:
    d = Path(tempfile.mkdtemp())
    files = [write_random_model(d / "llama.gguf", "llama", LLAMA, "Q4_0", seed=5),
             write_random_model(d / "gemma3.gguf", "gemma3", GEMMA, "Q4_K", seed=3)]  # fmt: skip
    for path in files:
        cpu = Generator(path, n_ctx=48, placement=make_placement("cpu", 0))
        cpu_ref = [solo_run(cpu, c) for c in cases()]
        print(f"{path.stem}: smallest top-2 logit gap / max |logit| of each case's greedy steps (CPU): "
              + " ".join(f"{top2_gap(s.logits):.2e}" for s in cpu_ref), flush=True)  # fmt: skip
        for variant in VARIANTS:
            try:
                run_variant(path, cpu_ref, *variant)
            except Exception:
                traceback.print_exc()


if __name__ == "__main__":
    main()
