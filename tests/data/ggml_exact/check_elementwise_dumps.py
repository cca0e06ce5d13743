"""Op-by-op check of ggml_exact's elementwise ops on real llama.cpp tensors (dev machine only).

Run: .venv/bin/python tests/data/ggml_exact/check_elementwise_dumps.py DUMP_DIR
DUMP_DIR holds dump_llama_cpp_tensors.py outputs {gemma,smol,qwen}_{b,d}.npz (b: the golden prompt in one
batch; d: its last token's decode step) for the layers in LAYERS (consecutive pairs, so that a layer's
input, the previous l_out, is there). Each op is fed llama.cpp's own input tensors and its output is
compared bit for bit with llama.cpp's; prints a count per op and every mismatch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from embedkit.kernels.cpu.ggml_exact import elementwise as E
from embedkit.kernels.cpu.ggml_exact import glu as G
from embedkit.kernels.cpu.ggml_exact import rope as R

MODELS = Path("/root/.local/share/embedkit/models")
CONFIG = {  # dump stem: (gguf, arch prefix, layers dumped)
    "gemma": ("gemma-3-270m-q4_k_m.gguf", "gemma3", [0, 4, 5, 10, 11, 16, 17]),
    "smol": ("SmolLM2-135M-Instruct.Q4_1.gguf", "llama", [0, 14, 15, 28, 29]),
    "qwen": ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2", [0, 11, 12, 22, 23]),
}


class Tally:
    """Bit-exact / total counts per op."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}

    def check(self, op: str, where: str, ours: np.ndarray, ref: np.ndarray) -> None:
        ref = np.ascontiguousarray(ref, dtype=np.float32)
        ours = np.ascontiguousarray(ours, dtype=np.float32).reshape(ref.shape)
        diff = int((ours.view(np.uint32) != ref.view(np.uint32)).sum())
        c = self.counts.setdefault(op, [0, 0, 0])
        c[0] += diff == 0
        c[1] += 1
        c[2] += ref.size
        if diff:
            print(f"MISMATCH {op} {where}: {diff} of {ref.size} values")

    def report(self) -> None:
        for op, (ok, total, values) in self.counts.items():
            print(f"{op:28s} {ok}/{total} tensors bit-exact ({values} values)")


class Dump:
    """One dump file's tensors, reshaped to [n_tokens, n] or [n_tokens, heads, head_dim]."""

    def __init__(self, z, n_tokens: int) -> None:
        self.z, self.n_tokens = z, n_tokens

    def rows(self, key: str) -> np.ndarray:
        return self.z[key].reshape(self.n_tokens, -1)

    def heads(self, key: str, head_dim: int) -> np.ndarray:
        return self.z[key].reshape(self.n_tokens, -1, head_dim)


def check_model(stem: str, dump_dir: Path, tally: Tally) -> None:
    import gguf

    fname, arch, layers = CONFIG[stem]
    reader = gguf.GGUFReader(str(MODELS / fname))
    tensors = {t.name: t for t in reader.tensors}
    fields = {k: v.contents() for k, v in reader.fields.items() if k.startswith(arch + ".")}
    eps = np.float32(fields[f"{arch}.attention.layer_norm_rms_epsilon"])
    base = fields[f"{arch}.rope.freq_base"]
    n_embd = fields[f"{arch}.embedding_length"]
    emb = tensors["token_embd.weight"]

    def weight(name: str) -> np.ndarray:
        return np.asarray(tensors[name].data, dtype=np.float32).reshape(-1)

    for mode in ("b", "d"):
        z = np.load(dump_dir / f"{stem}_{mode}.npz")
        tokens = z["tokens"] if mode == "b" else z["tokens"][-1:]
        n0 = 0 if mode == "b" else len(z["tokens"]) - 1
        pos = np.arange(n0, n0 + len(tokens), dtype=np.int32)

        dump = Dump(z, len(tokens))
        rows, heads = dump.rows, dump.heads
        x = E.get_rows(np.asarray(emb.data), emb.tensor_type, tokens, n_embd)
        if stem == "gemma":
            x = E.scale(x, np.sqrt(np.float32(n_embd)))
            tally.check("get_rows+scale", f"{stem}{mode}", x, rows("inp_scaled"))
        for layer in layers:
            at = f"{stem}{mode} layer {layer}"
            inp = x if layer == 0 else (rows(f"l_out-{layer - 1}") if f"l_out-{layer - 1}" in z.files else None)
            if inp is not None:
                tally.check("rms_norm", at, E.rms_norm(inp, eps), rows(f"norm-{layer}"))
                tally.check("rms_norm_mul", at, E.rms_norm_mul(inp, weight(f"blk.{layer}.attn_norm.weight"), eps),
                            rows(f"attn_norm-{layer}"))
            if stem == "gemma":
                check_gemma_layer(z, layer, inp, pos, eps, base, weight, rows, heads, tally, at)
            else:
                check_llama_layer(stem, z, layer, inp, pos, eps, base, weight, rows, heads, tally, at)
        last = rows(f"l_out-{layers[-1]}")
        tally.check("rms_norm_mul (fused run)", f"{stem}{mode} result_norm",
                    E.rms_norm_mul(last, weight("output_norm.weight"), eps), rows("result_norm"))


def check_gemma_layer(z, layer, inp, pos, eps, base, weight, rows, heads, tally, at) -> None:
    b = base if (layer + 1) % 6 == 0 else 10000.0  # every 6th layer is global; the rest slide with base 10000
    for name, src, norm_key, w in (("Qcur", "Qcur", "#1", "attn_q_norm"), ("Kcur", "Kcur", "#2", "attn_k_norm")):
        h = heads(f"{src}-{layer}#1", 256)
        tally.check("rms_norm", f"{at} {name}", E.rms_norm(h, eps), heads(f"norm-{layer}{norm_key}", 256))
        normed = E.rms_norm_mul(h, weight(f"blk.{layer}.{w}.weight"), eps)
        tally.check("rms_norm_mul", f"{at} {name}", normed, heads(f"{name}_normed-{layer}", 256))
        tally.check("rope", f"{at} {name} base {b}", R.rope(heads(f"{name}_normed-{layer}", 256), pos, 256, b, "neox"),
                    heads(f"{name}-{layer}#2", 256))
    tally.check("mul", f"{at} attn_post_norm",
                E.mul(rows(f"norm-{layer}#3"), weight(f"blk.{layer}.post_attention_norm.weight")),
                rows(f"attn_post_norm-{layer}"))
    if inp is not None:
        tally.check("add", f"{at} sa_out", E.add(rows(f"attn_post_norm-{layer}"), inp), rows(f"sa_out-{layer}"))
    sa = rows(f"sa_out-{layer}")
    tally.check("rms_norm", f"{at} ffn", E.rms_norm(sa, eps), rows(f"norm-{layer}#4"))
    tally.check("rms_norm_mul", f"{at} ffn", E.rms_norm_mul(sa, weight(f"blk.{layer}.ffn_norm.weight"), eps),
                rows(f"ffn_norm-{layer}"))
    tally.check("geglu", at, G.geglu(rows(f"ffn_gate-{layer}"), rows(f"ffn_up-{layer}")), rows(f"ffn_geglu-{layer}"))
    tally.check("rms_norm_mul (fused run)", f"{at} ffn_post_norm",
                E.rms_norm_mul(rows(f"ffn_out-{layer}"), weight(f"blk.{layer}.post_ffw_norm.weight"), eps),
                rows(f"ffn_post_norm-{layer}"))
    tally.check("add", f"{at} l_out", E.add(rows(f"ffn_post_norm-{layer}"), sa), rows(f"l_out-{layer}"))


def check_llama_layer(stem, z, layer, inp, pos, eps, base, weight, rows, heads, tally, at) -> None:
    if stem == "qwen":
        for name, w in (("Qcur", "attn_q"), ("Kcur", "attn_k"), ("Vcur", "attn_v")):
            tally.check("add (bias)", f"{at} {name}", E.add(rows(f"{name}-{layer}"), weight(f"blk.{layer}.{w}.bias")),
                        rows(f"{name}-{layer}#1"))
        pairs, style = (("Qcur", "#2", "#3"), ("Kcur", "#2", "#3")), "neox"
    else:
        pairs, style = (("Qcur", "#1", "#2"), ("Kcur", "#1", "#2")), "norm"
    for name, src, dst in pairs:
        tally.check("rope", f"{at} {name}", R.rope(heads(f"{name}-{layer}{src}", 64), pos, 64, base, style),
                    heads(f"{name}-{layer}{dst}", 64))
    if stem == "smol" and inp is not None:
        tally.check("add", f"{at} ffn_inp", E.add(rows(f"attn_out-{layer}"), inp), rows(f"ffn_inp-{layer}"))
    fi = rows(f"ffn_inp-{layer}")
    tally.check("rms_norm", f"{at} ffn", E.rms_norm(fi, eps), rows(f"norm-{layer}#1"))
    tally.check("rms_norm_mul", f"{at} ffn", E.rms_norm_mul(fi, weight(f"blk.{layer}.ffn_norm.weight"), eps),
                rows(f"ffn_norm-{layer}"))
    tally.check("swiglu", at, G.swiglu(rows(f"ffn_gate-{layer}"), rows(f"ffn_up-{layer}")), rows(f"ffn_swiglu-{layer}"))
    tally.check("add", f"{at} l_out", E.add(rows(f"ffn_out-{layer}"), fi), rows(f"l_out-{layer}"))


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    tally = Tally()
    for stem in CONFIG:
        check_model(stem, Path(sys.argv[1]), tally)
    tally.report()


if __name__ == "__main__":
    main()
