"""Save llama.cpp's intermediate tensors for a golden prompt (dev machine only; needs llama-cpp-python).

Run: .venv/bin/python tests/data/models/dump_llama_cpp_tensors.py MODEL.gguf GOLDEN.logits.npz OUT.npz LAYERS
[decode]
(LAYERS: comma-separated layer numbers, e.g. `0,17`; `decode`: save the last token's decode step
instead). Evaluates the golden's English prompt (its token ids)
in one batch on llama.cpp's CPU backend (2 threads, n_ctx 512, flash attention off, F16 KV cache: the
settings of make_logit_goldens.py) and stores every float tensor of those layers under llama.cpp's graph
name (`attn_norm-0`, `Qcur-0`, `kq_soft_max-0`, ...; repeated names get `#1`, `#2`), in llama.cpp's order
(numpy shape = reversed ggml ne), plus `logits` and `tokens`. Used for the op-by-op comparisons in README.md.
"""

from __future__ import annotations

import ctypes
import sys

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


def _layer_of(name: str) -> int | None:
    head, _, tail = name.rpartition("-")
    return int(tail) if head and tail.isdigit() else None


def _read(t: GGMLTensor) -> np.ndarray:
    """The tensor's elements as float32, honouring its strides."""
    item = 4 if t.type == GGML_F32 else 2
    ne, nb = list(t.ne), list(t.nb)
    n_bytes = sum((ne[i] - 1) * nb[i] for i in range(GGML_MAX_DIMS)) + item
    raw = np.frombuffer(bytes((ctypes.c_char * n_bytes).from_address(t.data)), dtype=np.uint8)
    dtype = np.float32 if t.type == GGML_F32 else np.float16
    view = np.lib.stride_tricks.as_strided(raw.view(dtype), shape=ne[::-1], strides=nb[::-1])
    return view.astype(np.float32)


def dump(model_path: str, golden: str, out: str, layers: set[int], decode: bool = False) -> dict[str, np.ndarray]:
    """Run the prompt through llama.cpp and save the wanted tensors to `out` (also returned).

    decode: evaluate all tokens but the last as one batch without saving anything, then the last token
    alone (a decode step, n_tokens = 1) and save that step's tensors.
    """
    import llama_cpp as lc

    saved: dict[str, np.ndarray] = {}
    recording = [not decode]

    def wanted(name: str) -> bool:
        if not recording[0]:
            return False
        layer = _layer_of(name)
        return layer in layers if layer is not None else name.startswith(("result", "inp"))

    @lc.ggml_backend_sched_eval_callback
    def on_tensor(ptr, ask, _user_data):
        t = ctypes.cast(ptr, ctypes.POINTER(GGMLTensor)).contents
        name = t.name.decode()
        if ask:
            return wanted(name)
        if t.type in (GGML_F32, GGML_F16) and wanted(name):
            key, i = name, 0
            while key in saved:
                i += 1
                key = f"{name}#{i}"
            saved[key] = _read(t)
        return True

    tokens = [int(x) for x in np.load(golden)["en/tokens"]]
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(model_path.encode(), lc.llama_model_default_params())
    params = lc.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 512, 512, 512
    params.n_threads = params.n_threads_batch = 2
    params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.cb_eval, params.cb_eval_user_data = on_tensor, None
    ctx = lc.llama_init_from_model(model, params)
    batch = lc.llama_batch_init(len(tokens), 0, 1)
    parts = [(0, len(tokens) - 1), (len(tokens) - 1, len(tokens))] if decode else [(0, len(tokens))]
    for start, stop in parts:
        for j, i in enumerate(range(start, stop)):
            batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = tokens[i], i, 1, 1
            batch.seq_id[j][0] = 0
        batch.n_tokens = stop - start
        recording[0] = not decode or start > 0
        if lc.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    n_out = parts[-1][1] - parts[-1][0]
    saved["logits"] = np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(n_out, n_vocab)).copy()
    saved["tokens"] = np.array(tokens, dtype=np.int32)
    np.savez(out, **saved)
    return saved


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6) or (len(sys.argv) == 6 and sys.argv[5] != "decode"):
        raise SystemExit(__doc__)
    layers = {int(x) for x in sys.argv[4].split(",")}
    result = dump(sys.argv[1], sys.argv[2], sys.argv[3], layers, decode=len(sys.argv) == 6)
    print({k: v.shape for k, v in result.items()})
