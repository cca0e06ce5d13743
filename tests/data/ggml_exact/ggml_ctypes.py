"""ctypes access to llama.cpp's ggml, shared by the development scripts that use it as an oracle.

llama-cpp-python bundles libggml-base.so and libggml-cpu.so (`lib_dir`); `load_ggml` opens both once per
process and declares the graph-building functions the scripts have in common. Tensors, contexts and graphs
are plain `c_void_p` addresses (Python ints) throughout; read a tensor's fields with `tensor_struct`.
Each script declares the further functions it calls (quantizers, vec_dot, gemv, ops...) on the handles.
`eval_golden_prompt` runs a golden prompt through llama.cpp itself with an eval callback (the settings of
tests/data/models/make_logit_goldens.py), and `read_tensor` copies a tensor out inside such a callback.
Dev machine only: needs llama-cpp-python (0.3.36, whose ggml.h the struct below follows).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

import numpy as np

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_NAME = 64
GGML_F32, GGML_F16 = 0, 1


class GGMLTensor(ctypes.Structure):
    """`struct ggml_tensor` of the ggml bundled with llama-cpp-python 0.3.36 (include/ggml.h)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


class InitParams(ctypes.Structure):
    """`struct ggml_init_params` (ggml.h), the argument of ggml_init."""

    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class ComputeParams(ctypes.Structure):
    """`struct ggml_compute_params` (ggml-cpu-impl.h), the first argument of llamafile_sgemm (reads ith/nth)."""

    _fields_ = [
        ("ith", ctypes.c_int),
        ("nth", ctypes.c_int),
        ("wsize", ctypes.c_size_t),
        ("wdata", ctypes.c_void_p),
        ("threadpool", ctypes.c_void_p),
        ("use_ref", ctypes.c_bool),
    ]


def tensor_struct(t: int) -> GGMLTensor:
    """The `struct ggml_tensor` at address t (a tensor returned by the functions `load_ggml` declares)."""
    return ctypes.cast(t, ctypes.POINTER(GGMLTensor)).contents


def lib_dir() -> Path | None:
    """Directory of llama_cpp's bundled ggml libraries, or None when llama_cpp is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    d = Path(llama_cpp.__file__).parent / "lib"
    return d if (d / "libggml-cpu.so").exists() else None


_handles: dict[str, tuple[ctypes.CDLL, ctypes.CDLL]] = {}


def load_ggml(directory: Path | None = None) -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """(libggml-base, libggml-cpu) from `directory` (default `lib_dir()`), loaded once per process.

    Both are opened with RTLD_GLOBAL (base first), ggml_cpu_init is called, and these are declared with
    c_void_p tensors/contexts/graphs: ggml_init, ggml_free, ggml_new_tensor_1d/2d/3d, ggml_mul_mat,
    ggml_new_graph, ggml_build_forward_expand, ggml_get_data (base) and ggml_graph_compute_with_ctx (cpu).
    """
    directory = directory if directory is not None else lib_dir()
    if directory is None:
        raise ImportError("llama_cpp (llama-cpp-python, with its bundled ggml libraries) is not installed")
    key = str(Path(directory).resolve())
    if key in _handles:
        return _handles[key]
    base = ctypes.CDLL(str(Path(key) / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(Path(key) / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    cpu.ggml_cpu_init.restype = None
    cpu.ggml_cpu_init()
    vp, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    base.ggml_init.restype, base.ggml_init.argtypes = vp, [InitParams]
    base.ggml_free.restype, base.ggml_free.argtypes = None, [vp]
    for n in (1, 2, 3):
        f = getattr(base, f"ggml_new_tensor_{n}d")
        f.restype, f.argtypes = vp, [vp, c_int] + [i64] * n
    base.ggml_mul_mat.restype, base.ggml_mul_mat.argtypes = vp, [vp, vp, vp]
    base.ggml_new_graph.restype, base.ggml_new_graph.argtypes = vp, [vp]
    base.ggml_build_forward_expand.restype, base.ggml_build_forward_expand.argtypes = None, [vp, vp]
    base.ggml_get_data.restype, base.ggml_get_data.argtypes = vp, [vp]
    cpu.ggml_graph_compute_with_ctx.restype, cpu.ggml_graph_compute_with_ctx.argtypes = c_int, [vp, vp, c_int]
    _handles[key] = base, cpu
    return base, cpu


def read_tensor(t: GGMLTensor) -> np.ndarray:
    """An F32 or F16 tensor's elements as float32 (numpy shape = reversed ggml ne), honouring its strides."""
    item = 4 if t.type == GGML_F32 else 2
    ne, nb = list(t.ne), list(t.nb)
    n_bytes = sum((ne[i] - 1) * nb[i] for i in range(GGML_MAX_DIMS)) + item
    raw = np.frombuffer(bytes((ctypes.c_char * n_bytes).from_address(t.data)), dtype=np.uint8)
    dtype = np.float32 if t.type == GGML_F32 else np.float16
    view = np.lib.stride_tricks.as_strided(raw.view(dtype), shape=ne[::-1], strides=nb[::-1])
    return view.astype(np.float32)


def eval_golden_prompt(
    model_path: str, golden: str, on_tensor: Callable[[GGMLTensor, bool], bool], decode: bool = False
) -> tuple[list[int], np.ndarray]:
    """Evaluate a golden's English prompt (its `en/tokens`) with llama.cpp, calling on_tensor on the way.

    Settings of make_logit_goldens.py: CPU backend, 2 threads, n_ctx = n_batch = n_ubatch = 512, flash
    attention off (F16 KV cache), one sequence. The prompt goes in one batch; with decode, all tokens but
    the last go in one batch and the last token alone follows (a decode step, n_tokens = 1).
    on_tensor(tensor, ask) is llama.cpp's scheduler eval callback (ask: whether you want this tensor; else
    it has been computed: return True to go on) and sees only the recorded step, the batch or (decode) the
    last token's step; during the other every tensor is declined. Returns (the prompt's tokens, the recorded
    step's logits float32 [n_tokens of that step, n_vocab]). Model and context are freed before returning.
    """
    import llama_cpp as lc

    recording = [not decode]

    @lc.ggml_backend_sched_eval_callback
    def callback(ptr, ask, _user_data):
        if not recording[0]:
            return not ask
        return bool(on_tensor(ctypes.cast(ptr, ctypes.POINTER(GGMLTensor)).contents, ask))

    tokens = [int(x) for x in np.load(golden)["en/tokens"]]
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(model_path.encode(), lc.llama_model_default_params())
    params = lc.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 512, 512, 512
    params.n_threads = params.n_threads_batch = 2
    params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.cb_eval, params.cb_eval_user_data = callback, None
    ctx = lc.llama_init_from_model(model, params)
    batch = lc.llama_batch_init(len(tokens), 0, 1)
    try:
        parts = [(0, len(tokens) - 1), (len(tokens) - 1, len(tokens))] if decode else [(0, len(tokens))]
        for start, stop in parts:
            for j, i in enumerate(range(start, stop)):
                batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = tokens[i], i, 1, 1
                batch.seq_id[j][0] = 0
            batch.n_tokens = stop - start
            recording[0] = not decode or start > 0
            if lc.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
        n_out = parts[-1][1] - parts[-1][0]
        logits = np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(n_out, n_vocab)).copy()
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
        lc.llama_model_free(model)
    return tokens, logits
