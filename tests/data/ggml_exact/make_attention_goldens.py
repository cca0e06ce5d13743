"""Goldens for the bit-exact llama.cpp attention (flash attention off, F16 KV cache) from ggml itself.

Run (dev machine, needs llama-cpp-python's libraries): .venv/bin/python tests/data/ggml_exact/make_attention_goldens.py
Writes tests/data/ggml_exact/attention.npz:
- for each case in CASES, the random inputs (seed 0) and ggml's K.Q scores, softmax and attention
  output computed by the same ops llama.cpp's graph uses (set_rows into an F16 cache with V
  transposed, mul_mat, soft_max_ext, mul_mat, permute + cont), on the CPU backend with 2 threads;
- the same tensors as llama.cpp computed them inside real models (REAL_CASES, through
  tests/data/models/dump_llama_cpp_tensors.py; skipped when a model file is missing);
- single kernels: ggml_vec_dot_f16, llamafile_sgemm (F16) and ggml_vec_soft_max_f32 on random inputs.

The module is also the live oracle of tests/test_ggml_exact_attention.py: `Oracle` wraps
libggml-cpu's exported ggml_vec_dot_f16, ggml_vec_soft_max_f32, ggml_cpu_fp32_to_fp16,
llamafile_sgemm and a whole attention graph (`Oracle.attention`).
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ggml_ctypes.py is here; tests load this file by path
from ggml_ctypes import ComputeParams, InitParams, load_ggml, tensor_struct  # noqa: E402

GGML_F32, GGML_F16, GGML_I64 = 0, 1, 27
OUT = Path(__file__).with_name("attention.npz")

# name: (heads, kv_heads, head_dim, n_ctx, pos0, n_tokens, window, kq_scale, q_scale)
CASES = {
    "gemma_batch": (4, 1, 256, 512, 0, 5, None, 1.0, 0.0625),
    "gemma_decode": (4, 1, 256, 512, 60, 1, None, 1.0, 0.0625),
    "gemma_swa_batch": (4, 1, 256, 512, 37, 3, 16, 1.0, 0.0625),
    "gemma_swa_decode": (4, 1, 256, 512, 90, 1, 40, 1.0, 0.0625),
    "smol_batch": (9, 3, 64, 512, 0, 7, None, 0.125, None),
    "smol_decode": (9, 3, 64, 512, 60, 1, None, 0.125, None),
    "gqa_continue": (3, 1, 64, 768, 254, 3, None, 0.125, None),
    "hd72_decode": (2, 2, 72, 256, 20, 1, None, 0.117851, None),
}


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return a.ctypes.data_as(ctypes.c_void_p)


class Oracle:
    """ggml's own CPU kernels, called through ctypes."""

    def __init__(self) -> None:
        self.base, self.cpu = load_ggml()
        vp, i64, sz = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
        b, c = self.base, self.cpu
        c.ggml_vec_dot_f16.argtypes = [ctypes.c_int, vp, sz, vp, sz, vp, sz, ctypes.c_int]
        c.ggml_vec_soft_max_f32.argtypes = [ctypes.c_int, vp, vp, ctypes.c_float]
        c.ggml_vec_soft_max_f32.restype = ctypes.c_double
        c.ggml_cpu_fp32_to_fp16.argtypes = [vp, vp, i64]
        # as make_quant_goldens.py declares it: the libraries (load_ggml's handles) are shared in a process
        sgemm_args = [ctypes.POINTER(ComputeParams), i64, i64, i64, vp, i64, vp, i64, vp, i64] + [ctypes.c_int] * 3
        c.llamafile_sgemm.argtypes = sgemm_args
        c.llamafile_sgemm.restype = ctypes.c_bool
        b.ggml_view_4d.argtypes = [vp, vp, i64, i64, i64, i64, sz, sz, sz, sz]
        b.ggml_permute.argtypes = [vp, vp] + [ctypes.c_int] * 4
        b.ggml_soft_max_ext.argtypes = [vp, vp, vp, ctypes.c_float, ctypes.c_float]
        b.ggml_scale.argtypes = [vp, vp, ctypes.c_float]
        b.ggml_cont_2d.argtypes = [vp, vp, i64, i64]
        b.ggml_reshape_2d.argtypes = [vp, vp, i64, i64]
        b.ggml_set_rows.argtypes = [vp, vp, vp, vp]
        for name in ("ggml_view_4d", "ggml_permute", "ggml_soft_max_ext", "ggml_scale", "ggml_cont_2d",
                     "ggml_reshape_2d", "ggml_set_rows"):  # fmt: skip
            getattr(b, name).restype = vp
        # a zeroed stand-in for struct ggml_threadpool: with one thread ggml_barrier returns at once
        # (OpenMP build) and the chunk counter lives inside it
        self._pool = np.zeros(4096, dtype=np.uint8)

    # -- single kernels ---------------------------------------------------------------------
    def fp32_to_fp16(self, x: np.ndarray) -> np.ndarray:
        """ggml_cpu_fp32_to_fp16 -> uint16 bits."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty(x.shape, dtype=np.uint16)
        self.cpu.ggml_cpu_fp32_to_fp16(_ptr(x), _ptr(y), x.size)
        return y

    def vec_dot_f16(self, x: np.ndarray, y: np.ndarray) -> np.float32:
        """ggml_vec_dot_f16 of two uint16 (half bits) vectors."""
        x = np.ascontiguousarray(x, dtype=np.uint16)
        y = np.ascontiguousarray(y, dtype=np.uint16)
        s = np.zeros(1, dtype=np.float32)
        self.cpu.ggml_vec_dot_f16(x.size, _ptr(s), 0, _ptr(x), 0, _ptr(y), 0, 1)
        return s[0]

    def vec_soft_max_f32(self, x: np.ndarray, mx: float) -> tuple[np.ndarray, float]:
        """ggml_vec_soft_max_f32: (exp(x - max) per element, their sum in double)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty_like(x)
        total = self.cpu.ggml_vec_soft_max_f32(x.size, _ptr(y), _ptr(x), ctypes.c_float(mx))
        return y, total

    def sgemm_f16(self, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
        """llamafile_sgemm on F16 a [m, k] and F16 b [n, k] (uint16 bits) -> float32 [n, m] (None: declined)."""
        a = np.ascontiguousarray(a, dtype=np.uint16)
        b = np.ascontiguousarray(b, dtype=np.uint16)
        (m, k), n = a.shape, b.shape[0]
        c = np.zeros((n, m), dtype=np.float32)
        params = ComputeParams(0, 1, 0, None, self._pool.ctypes.data, False)
        ok = self.cpu.llamafile_sgemm(
            ctypes.byref(params), m, n, k, _ptr(a), k, _ptr(b), k, _ptr(c), m, GGML_F16, GGML_F16, GGML_F32
        )
        return c if ok else None

    # -- the attention graph ----------------------------------------------------------------
    def attention(
        self,
        q: np.ndarray,
        k_past: np.ndarray,
        v_past: np.ndarray,
        k_new: np.ndarray,
        v_new: np.ndarray,
        n_ctx: int,
        kq_scale: float,
        window: int | None,
        q_scale: float | None,
        n_threads: int = 2,
    ) -> dict[str, np.ndarray]:
        """llama.cpp's non-flash attention for one layer and one sequence in cells == positions.

        k_past/v_past [pos0, kv_heads, hd] were stored by an earlier step; q [n, heads, hd], k_new/v_new
        [n, kv_heads, hd] are this step's. Returns kq [heads, n, n_kv], kq_soft_max (same) and
        kqv_out [n, heads*hd], with n_kv and the KQ mask as llama.cpp builds them.
        """
        b = self.base
        n, n_head, hd = q.shape
        pos0, n_head_kv = k_past.shape[0], k_new.shape[1]
        n_embd = n_head_kv * hd
        n_cells = -(-n_ctx // 256) * 256
        n_kv = min(n_cells, max(256, -(-(pos0 + n) // 256) * 256))
        ctx = b.ggml_init(InitParams(256 * 1024 * 1024, None, False))
        try:
            kc = b.ggml_new_tensor_2d(ctx, GGML_F16, n_embd, n_cells)
            vc = b.ggml_new_tensor_1d(ctx, GGML_F16, n_embd * n_cells)
            for t in (kc, vc):
                ctypes.memset(self._data(t), 0, n_embd * n_cells * 2)
            if pos0:
                self._compute(ctx, self._store(ctx, kc, vc, k_past, v_past, 0, n_cells), n_threads)
            stores = self._store(ctx, kc, vc, k_new, v_new, pos0, n_cells)
            qt = self._input(ctx, np.ascontiguousarray(q, dtype=np.float32), GGML_F32)
            if q_scale is not None:
                qt = b.ggml_scale(ctx, qt, q_scale)
            mask = np.full((n, n_kv), -np.inf, dtype=np.float32)
            for i in range(n):
                p1 = pos0 + i
                lo = 0 if window is None else max(0, p1 - window + 1)
                mask[i, lo : p1 + 1] = 0.0
            mt = self._input(ctx, mask, GGML_F32)
            k = b.ggml_view_4d(ctx, kc, hd, n_head_kv, n_kv, 1, hd * 2, n_embd * 2, n_embd * n_cells * 2, 0)
            v = b.ggml_view_4d(ctx, vc, n_kv, n_head_kv, hd, 1, n_cells * hd * 2, n_cells * 2, n_cells * n_embd * 2, 0)
            qp = b.ggml_permute(ctx, qt, 0, 2, 1, 3)
            kq = b.ggml_mul_mat(ctx, b.ggml_permute(ctx, k, 0, 2, 1, 3), qp)
            sm = b.ggml_soft_max_ext(ctx, kq, mt, kq_scale, 0.0)
            kqv = b.ggml_mul_mat(ctx, b.ggml_permute(ctx, v, 0, 2, 1, 3), sm)
            out = b.ggml_cont_2d(ctx, b.ggml_permute(ctx, kqv, 0, 2, 1, 3), hd * n_head, n)
            self._compute(ctx, [*stores, out], n_threads)
            return {
                "kq": self._read(kq, (n_head, n, n_kv)),
                "kq_soft_max": self._read(sm, (n_head, n, n_kv)),
                "kqv_out": self._read(out, (n, n_head * hd)),
            }
        finally:
            b.ggml_free(ctx)

    def _store(self, ctx, kc, vc, k, v, pos0: int, n_cells: int) -> list:
        """set_rows nodes writing k [n, kvh, hd] to cells pos0.. and v transposed (llama_kv_cache::cpy_k/cpy_v)."""
        b = self.base
        n = k.shape[0]
        n_embd = k.shape[1] * k.shape[2]
        kt = self._input(ctx, np.ascontiguousarray(k, dtype=np.float32).reshape(n, n_embd), GGML_F32)
        vt = b.ggml_reshape_2d(
            ctx, self._input(ctx, np.ascontiguousarray(v, dtype=np.float32).reshape(n, n_embd), GGML_F32), 1, n * n_embd
        )
        cells = pos0 + np.arange(n, dtype=np.int64)
        k_idx = self._input(ctx, cells, GGML_I64)
        v_cells = np.arange(n_embd, dtype=np.int64)[None, :] * n_cells + cells[:, None]
        v_idx = self._input(ctx, v_cells.ravel(), GGML_I64)
        v_view = b.ggml_reshape_2d(ctx, vc, 1, n_embd * n_cells)
        return [b.ggml_set_rows(ctx, kc, kt, k_idx), b.ggml_set_rows(ctx, v_view, vt, v_idx)]

    def _compute(self, ctx, outputs: list, n_threads: int) -> None:
        g = self.base.ggml_new_graph(ctx)
        for t in outputs:
            self.base.ggml_build_forward_expand(g, t)
        if self.cpu.ggml_graph_compute_with_ctx(ctx, g, n_threads) != 0:
            raise RuntimeError("ggml_graph_compute failed")

    def _input(self, ctx, a: np.ndarray, gtype: int):
        """A new tensor holding a (numpy shape = reversed ggml ne)."""
        ne = a.shape[::-1]
        t = getattr(self.base, f"ggml_new_tensor_{len(ne)}d")(ctx, gtype, *ne)
        ctypes.memmove(self._data(t), a.ctypes.data, a.nbytes)
        return t

    @staticmethod
    def _data(t) -> int:
        return tensor_struct(t).data

    def _read(self, t, shape: tuple[int, ...]) -> np.ndarray:
        """A contiguous float32 tensor's data."""
        n = int(np.prod(shape))
        return np.ctypeslib.as_array((ctypes.c_float * n).from_address(self._data(t))).reshape(shape).copy()


def case_inputs(rng: np.random.Generator, case: tuple) -> dict[str, np.ndarray]:
    """Random inputs of one case: queries/keys like post-norm, post-RoPE activations, values spread wider."""
    n_head, n_head_kv, hd, _n_ctx, pos0, n, _window, _s, _qs = case
    scale_q = 4.0 if _qs is not None else 1.0
    q = (rng.standard_normal((n, n_head, hd)) * scale_q).astype(np.float32)
    k_all = (rng.standard_normal((pos0 + n, n_head_kv, hd)) * 1.5).astype(np.float32)
    v_all = (rng.standard_normal((pos0 + n, n_head_kv, hd)) * 0.7).astype(np.float32)
    # a few exact ties and values that sit on float16 rounding boundaries
    q.reshape(-1)[::97] = np.float32(1.0 + 2.0**-11)
    k_all.reshape(-1)[::89] = np.float32(0.5 + 2.0**-12)
    past_k = k_all[:pos0].astype(np.float16)
    past_v = v_all[:pos0].astype(np.float16)
    return {"q": q, "k_past": past_k, "v_past": past_v, "k_new": k_all[pos0:], "v_new": v_all[pos0:]}


def case_params(case: tuple) -> np.ndarray:
    """A case as float64 [heads, kv_heads, hd, n_ctx, pos0, n, window (0: none), kq_scale, q_scale (nan: none)]."""
    n_head, n_head_kv, hd, n_ctx, pos0, n, window, kq_scale, q_scale = case
    q_scale = np.nan if q_scale is None else q_scale
    return np.array([n_head, n_head_kv, hd, n_ctx, pos0, n, window or 0, kq_scale, q_scale], dtype=np.float64)


def kernel_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random operands for the single-kernel goldens (float16 bits; scores spanning exp's whole range)."""
    out = {}
    for n in (64, 72, 100, 256, 512):
        x = rng.standard_normal(n) * rng.choice([0.01, 1.0, 30.0])
        y = rng.standard_normal(n) * rng.choice([0.01, 1.0, 30.0])
        out[f"vec_dot/{n}/x"] = x.astype(np.float16).view(np.uint16)
        out[f"vec_dot/{n}/y"] = y.astype(np.float16).view(np.uint16)
    for m, n, k in ((16, 3, 256), (256, 5, 64), (32, 7, 512)):
        out[f"sgemm/{m}x{n}x{k}/a"] = (rng.standard_normal((m, k)) * 1.5).astype(np.float16).view(np.uint16)
        out[f"sgemm/{m}x{n}x{k}/b"] = rng.standard_normal((n, k)).astype(np.float16).view(np.uint16)
    x = np.concatenate([rng.uniform(-120.0, 0.0, 3000), rng.standard_normal(1000) * 3.0 - 3.0])
    out["soft_max/x"] = np.concatenate([x, [-np.inf, 0.0, -87.0, -87.5, -103.9, -104.0, -150.0]]).astype(np.float32)
    return out


def kernel_goldens(oracle: Oracle, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ggml's results for `kernel_inputs`."""
    res = {}
    for key in inputs:
        if key.startswith("vec_dot/") and key.endswith("/x"):
            base = key[:-2]
            res[f"{base}/out"] = np.float32(oracle.vec_dot_f16(inputs[key], inputs[f"{base}/y"]))
        elif key.startswith("sgemm/") and key.endswith("/a"):
            base = key[:-2]
            res[f"{base}/out"] = oracle.sgemm_f16(inputs[key], inputs[f"{base}/b"])
    y, total = oracle.vec_soft_max_f32(inputs["soft_max/x"], 0.0)
    res["soft_max/y"], res["soft_max/sum"] = y, np.float64(total)
    return res


# name: (model file, golden, layer, decode, rows kept, case tuple as in CASES)
REAL_CASES = {
    "llama_gemma3_L5_decode": ("gemma-3-270m-q4_k_m", 5, True, None, (4, 1, 256, 512, 31, 1, None, 1.0, 0.0625)),
    "llama_gemma3_L0_batch8": ("gemma-3-270m-q4_k_m", 0, False, 8, (4, 1, 256, 512, 0, 8, None, 1.0, 0.0625)),
    "llama_smollm2_L0_decode": ("SmolLM2-135M-Instruct.Q4_1", 0, True, None, (9, 3, 64, 512, 30, 1, None, 0.125, None)),
}


def real_goldens() -> dict[str, np.ndarray]:
    """REAL_CASES from llama.cpp's own intermediate tensors (Qcur after RoPE, Kcur, Vcur, kq, kq_soft_max, kqv_out)."""
    import importlib.util
    import tempfile

    repo = Path(__file__).resolve().parents[3]
    models = Path.home() / ".local/share/embedkit/models"
    spec = importlib.util.spec_from_file_location("dump", repo / "tests/data/models/dump_llama_cpp_tensors.py")
    dumper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dumper)
    saved: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, layer, decode, rows, case) in REAL_CASES.items():
            gguf = models / f"{model}.gguf"
            if not gguf.exists():
                print("skipped", name, "(no", gguf, ")")
                continue
            golden = str(repo / f"tests/data/models/{model}.logits.npz")
            if decode:  # the cache holds what the prompt-minus-last-token batch stored (not a full batch's rows)
                prefix = f"{tmp}/prefix.npz"
                np.savez(prefix, **{"en/tokens": np.load(golden)["en/tokens"][:-1]})
                batch = dumper.dump(str(gguf), prefix, f"{tmp}/b.npz", {layer})
                step = dumper.dump(str(gguf), golden, f"{tmp}/d.npz", {layer}, decode=True)
            else:
                batch = step = dumper.dump(str(gguf), golden, f"{tmp}/b.npz", {layer})
            q, k, v = (step[f"{t}-{layer}#{i}"][0] for t, i in (("Qcur", 2), ("Kcur", 2), ("Vcur", 1)))
            kq, sm = step[f"kq-{layer}"][0], step[f"kq_soft_max-{layer}"][0]
            out = step[f"kqv_out-{layer}"][0, 0]
            pos0, n = case[4], case[5]
            if decode:
                k_past, v_past = batch[f"Kcur-{layer}#2"][0], batch[f"Vcur-{layer}#1"][0]
                assert k_past.shape[0] == pos0
            else:  # the first `rows` prompt rows: their scores over later keys are not kept
                q, k, v, out = q[:rows], k[:rows], v[:rows], out[:rows]
                kq, sm = kq[:, :rows, :rows], sm[:, :rows]
                k_past = v_past = np.zeros((0, *k.shape[1:]), dtype=np.float32)
            width = -(-(pos0 + n) // 8) * 8
            assert not np.any(sm[:, :, width:])
            saved |= {
                f"{name}/params": case_params(case),
                f"{name}/q": q,
                f"{name}/k_past": k_past.astype(np.float16),
                f"{name}/v_past": v_past.astype(np.float16),
                f"{name}/k_new": k,
                f"{name}/v_new": v,
                f"{name}/kq": kq[:, :, :width],
                f"{name}/kq_soft_max": sm[:, :, :width],
                f"{name}/kqv_out": out,
            }
    return saved


def main() -> None:
    """Compute every case with ggml and save inputs + outputs."""
    oracle = Oracle()
    rng = np.random.default_rng(0)
    saved: dict[str, np.ndarray] = {}
    kin = kernel_inputs(rng)
    saved |= kin | kernel_goldens(oracle, kin)
    for name, case in CASES.items():
        n_head, n_head_kv, hd, n_ctx, pos0, n, window, kq_scale, q_scale = case
        inp = case_inputs(rng, case)
        res = oracle.attention(
            inp["q"], inp["k_past"].astype(np.float32), inp["v_past"].astype(np.float32), inp["k_new"], inp["v_new"],
            n_ctx, kq_scale, window, q_scale,
        )  # fmt: skip
        width = -(-(pos0 + n) // 8) * 8  # the columns past the last position are checked to be 0 by the test
        for key, value in inp.items():
            saved[f"{name}/{key}"] = value
        saved[f"{name}/params"] = case_params(case)
        saved[f"{name}/kq"] = res["kq"][:, :, :width]
        saved[f"{name}/kq_soft_max"] = res["kq_soft_max"][:, :, :width]
        saved[f"{name}/kqv_out"] = res["kqv_out"]
        assert not np.any(res["kq"][:, :, width:]) and not np.any(res["kq_soft_max"][:, :, width:])
    saved |= real_goldens()
    np.savez_compressed(OUT, **saved)
    print(OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
