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

import sys
from pathlib import Path

import numpy as np

# ggml_ctypes.py, the ctypes plumbing shared with the ggml_exact golden scripts, is in ../ggml_exact: import it there
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ggml_exact"))
from ggml_ctypes import GGML_F16, GGML_F32, GGMLTensor, eval_golden_prompt, read_tensor  # noqa: E402


def _layer_of(name: str) -> int | None:
    head, _, tail = name.rpartition("-")
    return int(tail) if head and tail.isdigit() else None


def dump(model_path: str, golden: str, out: str, layers: set[int], decode: bool = False) -> dict[str, np.ndarray]:
    """Run the prompt through llama.cpp and save the wanted tensors to `out` (also returned).

    decode: evaluate all tokens but the last as one batch without saving anything, then the last token
    alone (a decode step, n_tokens = 1) and save that step's tensors.
    """
    saved: dict[str, np.ndarray] = {}

    def wanted(name: str) -> bool:
        layer = _layer_of(name)
        return layer in layers if layer is not None else name.startswith(("result", "inp"))

    def on_tensor(t: GGMLTensor, ask: bool) -> bool:
        name = t.name.decode()
        if ask:
            return wanted(name)
        if t.type in (GGML_F32, GGML_F16) and wanted(name):
            key, i = name, 0
            while key in saved:
                i += 1
                key = f"{name}#{i}"
            saved[key] = read_tensor(t)
        return True

    tokens, saved["logits"] = eval_golden_prompt(model_path, golden, on_tensor, decode)
    saved["tokens"] = np.array(tokens, dtype=np.int32)
    np.savez(out, **saved)
    return saved


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6) or (len(sys.argv) == 6 and sys.argv[5] != "decode"):
        raise SystemExit(__doc__)
    layers = {int(x) for x in sys.argv[4].split(",")}
    result = dump(sys.argv[1], sys.argv[2], sys.argv[3], layers, decode=len(sys.argv) == 6)
    print({k: v.shape for k, v in result.items()})
