"""GPU benchmark: prompt (pp512) and decode (tg128) tokens/s, decode against the memory-bandwidth
floor, and BERT-MiniLM-shaped embeddings/s, on random-weight models written here.

The GPU machine gets no model files, so this script writes its own (random quants with sane
scales, `embedkit.testing.random_quant`) in real shapes: Mistral 7B (dim 4096, 32 layers, 32
heads, 8 KV heads, FFN 14336, vocab 32000) in Q4_0 and Q8_0, Gemma 3 270M in Q8_0, MiniLM-L6 in F32.
The floor is (weight bytes a decode step reads) / (device-to-device copy bandwidth measured in the
same run, counting bytes read + written). llama.cpp's figures on the same H100 model (issue 9,
llama-bench -ngl 99, 2026-11-25) are printed alongside.
BERT (`--only bert-minilm`): embeddings/s of embedkit's GPU encoder path (float16 and float32) beside torch +
transformers' BertModel with the same weights in float32 and float16, same process, at 256 x 128 tokens and on a
mixed-length set in `embed`'s batches, with each side's min cosine to the CPU backend's float32 vectors.

    python benchmarks/bench_gpu.py [--quick] [--only mistral-q4_0,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA_CPP = {  # llama.cpp CUDA build for sm_90 on the same H100, from issue 9
    "mistral-q4_0": {"pp512": 11150.0, "tg128": 344.0},
    "mistral-q8_0": {"pp512": 11100.0, "tg128": 240.0},
    "mistral-q4_0-ngl16": {"pp512": 1620.0, "tg128": 25.0},
}


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), median of 20 copies of 1 GiB."""
    import cupy

    a = cupy.ones(1 << 30, dtype=cupy.uint8)
    b = cupy.empty_like(a)
    b[...] = a
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(20):
        start.record()
        b[...] = a
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    del a, b
    cupy.get_default_memory_pool().free_all_blocks()
    return 2 * (1 << 30) / statistics.median(times)


def decode_bytes(model) -> int:
    """Bytes of the GPU-resident matrices one decode step reads (every layer + output head)."""
    from embedkit.backend.base import Weight
    from embedkit.backend.cuda_weights import DeviceMatrix, bytes_per_token

    total = 0
    for layer in model.layers:
        for w in vars(layer).values():
            if isinstance(w, Weight) and isinstance(w.data, DeviceMatrix):
                total += bytes_per_token(w.data)
    if isinstance(model.w_output.data, DeviceMatrix):
        total += bytes_per_token(model.w_output.data)
    return total


def bench_decoder(path: Path, ngl: int, n_prompt: int, n_gen: int, reps: int) -> dict:
    """pp (n_prompt tokens from position 0) and tg (n_gen single-token steps) tokens/s."""
    from embedkit.backend.placement import make_placement
    from embedkit.models import load_model

    t0 = time.perf_counter()
    m = load_model(path, make_placement("cuda", ngl))
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    state = m.new_state(max(n_prompt, n_gen) + 16)
    prompt = rng.integers(0, m.params.n_vocab, n_prompt).astype(np.int32)
    for _ in range(2):  # warm-up: compiles the prompt path, fills the memory pool and float16 caches
        m.forward(prompt, state, 0)
    pp, pp_dev = [], []
    gpu = m.placement.layer(m.params.n_layer - 1)
    for _ in range(max(reps, 3)):
        t = time.perf_counter()
        dev_ms = _device_ms(gpu, lambda: m.forward(prompt, state, 0))
        pp.append(time.perf_counter() - t)
        pp_dev.append(dev_ms)
    gc_ms, gc_n = _gc_time(functools.partial(m.forward, prompt, state, 0))
    toks = rng.integers(0, m.params.n_vocab, n_gen).astype(np.int32)
    for i in range(8):  # warm-up: compiles the decode kernels, records the graph
        m.forward(toks[i : i + 1], state, i)
    def decode() -> float:
        tg = []
        for _ in range(reps):
            t = time.perf_counter()
            for i in range(n_gen):
                m.forward(toks[i : i + 1], state, i)
            tg.append(time.perf_counter() - t)
        return n_gen / statistics.median(tg)

    tg_tok_s = decode()
    tg_unfused = None
    import embedkit.backend.cuda_attention as cuda_module

    if getattr(getattr(gpu, "steps", None), "graph", None) is not None and cuda_module.FUSE_DECODE_ROPE:
        # the same steps with RoPE + KV store as separate launches (graph recorded again), then back
        cuda_module.FUSE_DECODE_ROPE = False
        gpu.steps.forget()
        try:
            for i in range(4):
                m.forward(toks[i : i + 1], state, i)
            tg_unfused = decode()
        finally:
            cuda_module.FUSE_DECODE_ROPE = True
            gpu.steps.forget()
        for i in range(4):
            m.forward(toks[i : i + 1], state, i)
    graph_ms = None
    # device time of one decode step: graph replays alone
    if getattr(getattr(gpu, "steps", None), "graph", None) is not None:
        cs = gpu._cp_stream
        cs.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            gpu.steps.graph.graph.launch(cs)
        cs.synchronize()
        graph_ms = (time.perf_counter() - t) / 20 * 1e3
    out = {
        "load_s": round(load_s, 1),
        "pp_tok_s": n_prompt / statistics.median(pp),
        "pp_device_ms": statistics.median(pp_dev),
        "pp_wall_ms": 1e3 * statistics.median(pp),
        "tg_tok_s": tg_tok_s,
        "tg_unfused_rope_tok_s": tg_unfused,
        "decode_bytes": decode_bytes(m) if ngl < 0 else None,
        "graph_stats": vars(gpu.stats).copy() if hasattr(gpu, "stats") else None,
        "graph_step_ms": graph_ms,
        "pp_gc_ms": round(gc_ms, 1),
        "pp_gc_collections": gc_n,
    }
    m = state = None  # free the model before the next one loads
    return out


def _device_ms(be, fn) -> float | None:
    """Device time (ms) between CuPy events on the backend's stream around fn() (None without CuPy)."""
    cs = getattr(be, "_cp_stream", None)
    if cs is None:
        fn()
        return None
    import cupy

    a, b = cupy.cuda.Event(), cupy.cuda.Event()
    a.record(cs)
    fn()
    b.record(cs)
    b.synchronize()
    return cupy.cuda.get_elapsed_time(a, b)


def _gc_time(fn) -> tuple[float, int]:
    """(ms spent in Python's cyclic garbage collector, collections) while fn() runs."""
    import gc

    spent = [0.0, 0, 0.0]

    def cb(phase, info):
        if phase == "start":
            spent[2] = time.perf_counter()
        else:
            spent[0] += time.perf_counter() - spent[2]
            spent[1] += 1

    gc.callbacks.append(cb)
    try:
        fn()
    finally:
        gc.callbacks.remove(cb)
    return spent[0] * 1e3, spent[1]


def _torch_bert(path: Path, dtype: str):
    """transformers' BertModel (the sdpa attention it picks by default) on the GPU with the GGUF's weights."""
    import torch
    import transformers

    from embedkit.convert.bert_tensors import gguf_tensor_name
    from embedkit.gguf import GGUFFile

    f = GGUFFile(path)
    a = f.architecture
    cfg = transformers.BertConfig(
        vocab_size=int(f.tensor("token_embd.weight").np_shape[0]),
        hidden_size=int(f.require(f"{a}.embedding_length")), num_hidden_layers=int(f.require(f"{a}.block_count")),
        num_attention_heads=int(f.require(f"{a}.attention.head_count")),
        intermediate_size=int(f.require(f"{a}.feed_forward_length")),
        max_position_embeddings=int(f.require(f"{a}.context_length")), layer_norm_eps=1e-12, hidden_act="gelu",
        type_vocab_size=2,
    )  # fmt: skip
    model = transformers.BertModel(cfg, add_pooling_layer=False)
    state = {}
    for name, ref in model.state_dict().items():
        g = gguf_tensor_name(name)
        if g is not None:
            t = f.tensor(g)
            state[name] = torch.from_numpy(np.array(t.data.view(np.float32)).reshape(tuple(ref.shape)))
    model.load_state_dict(state, strict=False)
    model = model.eval().cuda()
    return model.half() if dtype == "float16" else model


def _torch_embed(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean-pooled, L2-normalised vectors of one padded batch (tokens up, vectors down), as embedkit's."""
    import torch

    with torch.inference_mode():
        i = torch.from_numpy(ids).cuda(non_blocking=True)
        m = torch.from_numpy(mask.astype(np.int64)).cuda(non_blocking=True)
        h = model(input_ids=i, attention_mask=m).last_hidden_state.float()
        mf = m.unsqueeze(-1).float()
        v = (h * mf).sum(1) / mf.sum(1)
        return torch.nn.functional.normalize(v, dim=1).cpu().numpy()


def _embedkit_embed(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from embedkit.embed import l2_normalize

    return l2_normalize(model.embed(ids, mask, "mean"))


def _with_old_kernels(fn, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """fn(ids, mask) with the encoder's previous float16 attention: the Numba CUDA-core flash-style kernel instead
    of the tensor-core one (`cuda_encoder.FLASH_ATTENTION`), no cuBLAS GEMM attention."""
    import embedkit.backend.cuda_encoder as cuda_encoder

    saved = cuda_encoder.ATTENTION_GEMM, cuda_encoder.FLASH_ATTENTION
    cuda_encoder.ATTENTION_GEMM, cuda_encoder.FLASH_ATTENTION = False, False
    try:
        return fn(ids, mask)
    finally:
        cuda_encoder.ATTENTION_GEMM, cuda_encoder.FLASH_ATTENTION = saved


def _attention_path(model) -> str:
    """The attention path the GPU encoder's last batch took ("flash", "gemm-batched", "gemm-strided", "fused")."""
    return getattr(model.placement.layer(0), "attention_path", "")


def _mixed_batches(n_texts: int, batch: int, n_vocab: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Padded batches as `Embedder.embed` makes them (length-sorted, `plan_batches`) of n_texts random texts
    whose token counts follow a log-normal law (median ~48, clipped to 8..256: MiniLM truncates at 256)."""
    from embedkit.embed.batching import pad_batch, plan_batches

    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(48), 0.8, n_texts)), 8, 256).astype(int)
    seqs = [list(rng.integers(1000, n_vocab, n)) for n in lengths]
    return [pad_batch([seqs[i] for i in idx], 0) for idx in plan_batches(list(lengths), batch)]


def _timed_set(fn, batches, reps: int) -> float:
    """Median seconds to embed every batch of the set (a warm-up pass first)."""
    import torch

    for ids, mask in batches:  # every shape once (compilation, library heuristics)
        fn(ids, mask)
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for ids, mask in batches:
            fn(ids, mask)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _cosines(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def bench_bert(path: Path, batch: int, seq: int, reps: int, n_mixed: int = 4096) -> dict:
    """Embeddings/s of a MiniLM-shaped encoder, embedkit (float16 and float32 GPU precision) against torch +
    transformers' BertModel with the same weights in float32 and float16, same GPU, same process: tokens
    from the host, mean-pooled normalised vectors back on the host, on two sets: `batch` sequences of `seq`
    tokens (all real), and `n_mixed` texts of mixed lengths in embed's length-sorted batches of `batch`.
    Also the minimum cosine of each side's vectors to the CPU backend's float32 vectors."""
    import torch

    import embedkit.backend.cuda as cuda_module
    from embedkit.backend.placement import make_placement
    from embedkit.models import load_model

    rng = np.random.default_rng(0)
    n_vocab = 30522
    full = [(rng.integers(1000, n_vocab, (batch, seq)), np.ones((batch, seq), dtype=np.int64))]
    mixed = _mixed_batches(n_mixed, batch, n_vocab)
    n_full, n_set = batch, sum(len(ids) for ids, _ in mixed)
    out: dict = {"batch": batch, "seq": seq, "mixed_texts": n_set, "mixed_batches": len(mixed),
                 "mixed_tokens": int(sum(m.sum() for _, m in mixed)),
                 "mixed_padded_tokens": int(sum(m.size for _, m in mixed))}  # fmt: skip
    # the CPU's float32 vectors of a few sequences of each set (reference for the cosines)
    cpu = load_model(path)
    check = [(full[0][0][:8], full[0][1][:8]), (mixed[0][0][:8], mixed[0][1][:8]),
             (mixed[-1][0][:8], mixed[-1][1][:8])]  # fmt: skip
    ref = [_embedkit_embed(cpu, ids, m) for ids, m in check]
    sides = {}
    for precision in ("float16", "float32"):
        os.environ["EMBEDKIT_GPU_PRECISION"] = precision
        m = load_model(path, make_placement("cuda", -1, input_on_gpu=True))
        sides[f"embedkit {precision}"] = functools.partial(_embedkit_embed, m)
    os.environ.pop("EMBEDKIT_GPU_PRECISION")
    sides["embedkit float16, old kernels"] = functools.partial(_with_old_kernels, sides["embedkit float16"])
    f16_model = sides["embedkit float16"].args[0]
    # the CUDA backend's float32 ops one by one (the path before the encoder backend), for the record
    saved = cuda_module.CUDABackend.for_encoder
    cuda_module.CUDABackend.for_encoder = lambda self: self
    try:
        old = load_model(path, make_placement("cuda", -1, input_on_gpu=True))
    finally:
        cuda_module.CUDABackend.for_encoder = saved
    for dtype in ("float32", "float16"):
        sides[f"torch {dtype}"] = functools.partial(_torch_embed, _torch_bert(path, dtype))
    order = ["embedkit float16", "torch float16", "embedkit float16, old kernels", "embedkit float32",
             "torch float32"]  # the goal's pair first
    for name, fn in sorted(sides.items(), key=lambda kv: order.index(kv[0])):
        r = {"full_emb_s": n_full / _timed_set(fn, full, reps), "mixed_emb_s": n_set / _timed_set(fn, mixed, 2)}
        cos = [_cosines(fn(ids, m), v) for (ids, m), v in zip(check, ref, strict=True)]
        r["min_cosine_to_cpu"] = min(cos)
        r["cosines_full_longest_shortest"] = cos
        if name.startswith("embedkit float16"):
            r["attention_path"] = _attention_path(f16_model)  # of the last batch (the cosine checks')
        out[name] = r
        print(f"  {name}: {json.dumps(r)}", flush=True)
    old.encode(*full[0])  # compiles
    t = time.perf_counter()
    for _ in range(2):
        old.encode(*full[0])
    before = {"full_emb_s": 2 * batch / (time.perf_counter() - t)}
    out["embedkit before (float32 ops, hidden states to the host)"] = before
    print(f"  before: {before}", flush=True)
    out["torch_version"] = torch.__version__
    return out


def bench_matvec(bandwidth: float) -> list[dict]:
    """Kernel-only matvec time of Mistral-7B-shaped weights, as % of the copy bandwidth: one matrix
    (14336x4096, 4096x14336) for every type, and for Q4_0/Q8_0 also the first-generation kernel
    and the merged launches (Q/K/V 4096+1024+1024 rows, gate/up 2x14336 rows)."""
    import cupy
    from kernels import cuda_matvec_v1  # benchmarks/kernels/

    from embedkit.backend.base import Weight
    from embedkit.backend.cuda import bytes_per_token, cuda_backend
    from embedkit.kernels.cuda import quant_fast, quant_generic, quant_kmatvec, quant_legacy
    from embedkit.testing.random_quant import random_tensor_bytes

    be = cuda_backend()
    rows = []
    rng = np.random.default_rng(0)

    def timed(fn, n=20) -> float:
        graph = be.steps.capture([fn] * n)  # kernel time only: one graph of n launches
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        graph.launch(be._cp_stream)
        start.record(be._cp_stream)
        graph.launch(be._cp_stream)
        end.record(be._cp_stream)
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3 / n

    def row(label, shape, sec, nbytes):
        rows.append({"type": label, "shape": shape, "us": sec * 1e6,
                     "GB_s": nbytes / sec / 1e9, "pct_bw": 100 * nbytes / sec / bandwidth})  # fmt: skip

    def upload(gtype, n_out, n_in):
        m = be.upload_matrix(random_tensor_bytes(gtype, n_out, n_in, rng), gtype, n_out, n_in)
        return Weight("w", 0, (n_out, n_in), m)

    for gtype in ("Q4_0", "Q8_0", "Q4_K", "Q6_K", "Q4_1", "Q5_0", "Q5_1", "F16"):
        for n_out, n_in in ((14336, 4096), (4096, 14336)):
            w = upload(gtype, n_out, n_in)
            m = w.data
            x = be.asarray(rng.standard_normal((1, n_in)).astype(np.float32))
            be.to_host(be.matmul(x, w))  # compiles; leaves x's int8 blocks memoized
            y = be._empty((1, n_out))
            shape = f"{n_out}x{n_in}"
            if m.fast:
                xq, xd = be.steps.blocks_of(x)
                qs, d = m.views[0], m.views[1]
                old = lambda st, y=y, xq=xq, xd=xd, qs=qs, d=d, f=m.fast: cuda_matvec_v1.matvec_repacked(  # noqa: E731
                    f, qs, d, xq, xd, None, y, st
                )
                row(f"{gtype} (gen 1)", shape, timed(old), bytes_per_token(m))
                old(be.stream)
                y_gen1 = np.array(be.to_host(y), copy=True)
                new = lambda st, y=y, xq=xq, xd=xd, qs=qs, d=d, f=m.fast: quant_fast.matvec_multi(  # noqa: E731
                    f, [(qs, d, None, y)], xq, xd, stream=st
                )
                default_rows = quant_fast._MV_ROWS[gtype]
                for rows_per_warp in (1, 2, 4):
                    quant_fast._MV_ROWS[gtype] = rows_per_warp
                    new(be.stream)  # compile outside the graph capture
                    be.stream.synchronize()
                    label = gtype + (" (default)" if rows_per_warp == default_rows else "")
                    row(f"{label} {rows_per_warp} rows/warp", shape, timed(new), bytes_per_token(m))
                quant_fast._MV_ROWS[gtype] = default_rows
                new(be.stream)  # the first-generation kernel is checked against the production one
                diff = float(np.abs(be.to_host(y) - y_gen1).max() / np.abs(y_gen1).max())
                if not diff < 1e-4:
                    raise SystemExit(f"{gtype} {shape}: first-generation matvec differs by {diff:.1e} (relative)")
            else:
                fn = lambda st, m=m, y=y, x=x: quant_generic.matvec(m.layout, m.views, x, None, y, st)  # noqa: E731
                label = gtype + (" (float32 activations)" if gtype in be.int8_matvecs else "")
                row(label, shape, timed(fn), bytes_per_token(m))
            if gtype in be.int8_matvecs:
                xq, xd = be.steps.blocks_of(x)
                launch = be.int8_matvecs[gtype]
                fn = lambda st, m=m, y=y, xq=xq, xd=xd, launch=launch: launch(  # noqa: E731
                    m.layout, m.views, xq, xd, None, y, st
                )
                module = quant_kmatvec if gtype in quant_kmatvec.INT8_KMATVECS else quant_legacy
                default_rows = module.ROWS_PER_WARP
                for rows_per_warp in (1, 2, 4):
                    module.ROWS_PER_WARP = rows_per_warp
                    fn(be.stream)  # compile outside the graph capture
                    be.stream.synchronize()
                    label = gtype + (" (default)" if rows_per_warp == default_rows else "")
                    row(f"{label} int8 dp4a {rows_per_warp} rows/warp", shape, timed(fn), bytes_per_token(m))
                module.ROWS_PER_WARP = default_rows
            be.flush()
        if gtype in ("Q4_0", "Q8_0"):
            for label, outs in (("Q/K/V merged", (4096, 1024, 1024)), ("gate/up merged", (14336, 14336))):
                ws = [upload(gtype, r, 4096) for r in outs]
                x = be.asarray(rng.standard_normal((1, 4096)).astype(np.float32))
                be.to_host(be.matmuls(x, ws)[0])
                xq, xd = be.steps.blocks_of(x)
                mats = [(w.data.views[0], w.data.views[1], None, be._empty((1, w.data.n_rows))) for w in ws]
                fn = lambda st, mats=mats, xq=xq, xd=xd, f=gtype: quant_fast.matvec_multi(  # noqa: E731
                    f, mats, xq, xd, stream=st
                )
                row(f"{gtype} {label}", "+".join(map(str, outs)) + "x4096", timed(fn),
                    sum(bytes_per_token(w.data) for w in ws))  # fmt: skip
                be.flush()
    for module, name in ((cuda_matvec_v1, "matvec_q4_0r"), (cuda_matvec_v1, "matvec_q8_0r"), (quant_fast, "mv_q8_0r")):
        try:
            regs = getattr(module, name).get_regs_per_thread()
        except Exception as e:  # noqa: BLE001 - diagnostics only
            regs = repr(e)[:80]
        print(f"  registers per thread, {name}: {regs}", flush=True)
    return rows


def launch_overhead() -> float:
    """Microseconds of host time per eager backend op (a tiny add), the decode tax without graphs."""
    from embedkit.backend.cuda import cuda_backend

    be = cuda_backend()
    x = be.asarray(np.ones((1, 64), np.float32))
    be.to_host(be.add(x, x))
    n = 2000
    t = time.perf_counter()
    for _ in range(n):
        be.add(x, x)
    be.synchronize()
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, no partial offload")
    ap.add_argument("--only", default="", help="comma-separated subset of the model configs")
    ap.add_argument("--json", default="", help="write all numbers to this file")
    ap.add_argument("--workdir", default=os.environ.get("TMPDIR", tempfile.gettempdir()))
    ap.add_argument("--no-matvec", action="store_true", help="skip the kernel-only matvec table")
    args = ap.parse_args()

    from numba import cuda

    from embedkit.testing.random_quant import bert_spec, gemma3_spec, llama_spec, write_random_gguf

    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
    results: dict = {"device": name, "date": time.strftime("%Y-%m-%d")}
    bw = copy_bandwidth()
    results["copy_bandwidth_GB_s"] = bw / 1e9
    print(f"device: {name}; device-to-device copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    results["eager_op_us"] = launch_overhead()
    print(f"host time per eager backend op: {results['eager_op_us']:.1f} us", flush=True)
    results["matvec"] = [] if args.no_matvec else bench_matvec(bw)
    for r in results["matvec"]:
        print(f"  matvec {r['type']:28s} {r['shape']:>20s}: {r['us']:8.1f} us {r['GB_s']:7.0f} GB/s "
              f"({r['pct_bw']:.0f}% of copy bw)", flush=True)  # fmt: skip

    reps = 2 if args.quick else 3
    work = Path(args.workdir)
    configs = {
        "mistral-q4_0": ("llama", llama_spec(4096, 32, 32, 8, 14336, 32000, "Q4_0"), -1),
        "mistral-q8_0": ("llama", llama_spec(4096, 32, 32, 8, 14336, 32000, "Q8_0"), -1),
        "gemma3-270m-q8_0": ("gemma3", gemma3_spec(640, 18, 4, 1, 256, 2048, 262144, "Q8_0"), -1),
        "mistral-q4_k": ("llama", llama_spec(4096, 32, 32, 8, 14336, 32000, "Q4_K"), -1),
        "mistral-q6_k": ("llama", llama_spec(4096, 32, 32, 8, 14336, 32000, "Q6_K"), -1),
    }
    if not args.quick:
        configs["mistral-q4_0-ngl16"] = ("llama", None, 16)
    only = [s for s in args.only.split(",") if s]
    results["models"] = {}
    for key, (arch, spec, ngl) in configs.items():
        if only and key not in only:
            continue
        base = key.replace("-ngl16", "")
        path = work / f"{base}.gguf"
        if not path.exists():
            t = time.perf_counter()
            write_random_gguf(path, arch, *(spec or configs[base][1]))
            print(f"{key}: wrote {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t:.0f} s", flush=True)
        n_prompt, n_gen = (512, 128) if ngl < 0 else (512, 64)  # llama.cpp: pp512 and tg64 at -ngl 16
        r = bench_decoder(path, ngl, n_prompt, n_gen, 1 if ngl >= 0 else reps)
        r["n_prompt"], r["n_gen"] = n_prompt, n_gen
        if r["decode_bytes"]:
            r["floor_tok_s"] = bw / r["decode_bytes"]
            r["pct_floor"] = 100 * r["tg_tok_s"] / r["floor_tok_s"]
        results["models"][key] = r
        print(f"{key}: {json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()})}",
              flush=True)  # fmt: skip
    if not only or "bert-minilm" in only:
        path = work / "bert-minilm.gguf"
        write_random_gguf(path, "bert", *bert_spec(384, 6, 12, 1536, 30522, "F32"))
        results["bert"] = bench_bert(path, 256, 128, reps)

    print()
    print("| model | pp tok/s | llama.cpp pp | tg tok/s | llama.cpp tg | floor tok/s | % of floor |")
    print("|---|---|---|---|---|---|---|")
    for key, r in results["models"].items():
        ref = LLAMA_CPP.get(key, {})
        pp_name = f"pp{r['n_prompt']}"
        print(f"| {key} | {pp_name} {r['pp_tok_s']:,.0f} | {ref.get('pp512', float('nan')):,.0f} | "
              f"tg{r['n_gen']} {r['tg_tok_s']:,.1f} | {ref.get('tg128', float('nan')):,.0f} | "
              f"{r.get('floor_tok_s', float('nan')):,.0f} | {r.get('pct_floor', float('nan')):.0f}% |")  # fmt: skip
    if "bert" in results:
        b = results["bert"]
        print(f"\nBERT-MiniLM-L6 shape (F32 GGUF), embeddings/s, tokens up and pooled vectors down; "
              f"mixed: {b['mixed_texts']} texts in {b['mixed_batches']} length-sorted batches of <= {b['batch']}")
        print(f"| side | {b['batch']} x {b['seq']} | mixed lengths | min cosine to CPU float32 |")
        print("|---|---|---|---|")
        for name, r in b.items():
            if isinstance(r, dict):
                print(f"| {name} | {r['full_emb_s']:,.0f} | {r.get('mixed_emb_s', float('nan')):,.0f} | "
                      f"{r.get('min_cosine_to_cpu', float('nan')):.6f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
