"""Cross-encoder scores: embedkit against llama.cpp's `rank` pooling (llama-server `--reranking`) on the same GGUF.

A BertForSequenceClassification with random weights in the shape of cross-encoder/ms-marco-MiniLM-L-6-v2
(6 layers, 384 wide, 12 heads, 1536 feed-forward, 512 positions, 2 segments, 1 label; vocabulary: the
all-MiniLM-L6-v2 GGUF's WordPiece tokens) is written with transformers, converted by `embedkit convert`, and
scored on one query and eight documents by
  - llama-server `--reranking` (`POST /v1/rerank`; its `relevance_score` is the classifier's first logit),
  - embedkit's Reranker as shipped (segment ids 0 for "[CLS] query [SEP]", 1 for "document [SEP]", as
    transformers builds pairs),
  - embedkit's Reranker given segment ids 0 everywhere (what llama.cpp reads: its BERT graph adds the first
    row of the token-type embeddings to every token),
  - transformers on the same pairs, with both kinds of segment ids.
The token ids are compared first (llama-server's /tokenize against embedkit's tokenizer, and the pair lengths
against llama-server's usage).

llama-server's binary: --llama-server, else $LLAMA_CPP_BIN (the binary, or the folder holding it); without one
the script says so and exits 0.

Usage: python benchmarks/check_rerank_llamacpp.py [--llama-server PATH] [--threads 2] [--seed 23]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

QUERY = "how do cells repair damaged DNA?"
DOCUMENTS = [
    "DNA repair is a collection of processes by which a cell identifies and corrects damage to the DNA "
    "molecules that encode its genome.",
    "The river carried stones down to the sea, where they were ground into sand over many centuries.",
    "Base excision repair fixes small lesions; nucleotide excision repair removes bulky, helix-distorting "
    "damage such as thymine dimers caused by ultraviolet light.",
    "Bread dough rises because yeast ferments sugars and releases carbon dioxide.",
    "Double-strand breaks are repaired by homologous recombination or by non-homologous end joining.",
    "cells",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates by half a point.",
    "Mismatch repair corrects errors of DNA replication: the newly made strand is recognised, the wrong base "
    "is cut out, and the gap is filled in again by a polymerase. " * 3,
]


# Largest |score difference| accepted on the same inputs: the float16 steps of llama.cpp's CPU graph (its GELU
# table, for one) move this random model's logits by a few 1e-3 (see the column with llama.cpp's GELU).
TOLERANCE = 5e-3

# llama-server runs: its defaults, then with flash attention off (which otherwise casts K and V to float16)
LLAMA_RUNS = [("flash attention auto", []), ("-fa off", ["-fa", "off"])]


def llama_server_binary(given: str | None) -> Path | None:
    """The llama-server to run: --llama-server, else $LLAMA_CPP_BIN (a binary or its folder), else None."""
    raw = given or os.environ.get("LLAMA_CPP_BIN")
    if not raw:
        return None
    p = Path(raw)
    if p.is_dir():
        p = p / "llama-server"
    return p if p.is_file() and os.access(p, os.X_OK) else None


def cpu_name() -> str:
    """lscpu's model name (else the platform's processor string)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_cross_encoder(root: Path, seed: int) -> tuple[object, object]:
    """A random-weight BertForSequenceClassification of ms-marco-MiniLM-L-6-v2's shape, saved in `root`."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from embedkit.catalog import resolve_model
    from embedkit.gguf import GGUFFile

    root.mkdir(parents=True, exist_ok=True)
    with GGUFFile(resolve_model("all-minilm-l6-v2", kind="embed")) as f:
        tokens = list(f.get("tokenizer.ggml.tokens"))
    (root / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(root)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tokens), hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2, num_labels=1,
                     initializer_range=0.05)
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # trained segment embeddings differ clearly from one another; make these do so too
        model.bert.embeddings.token_type_embeddings.weight.normal_(0, 0.5)
        model.classifier.weight.normal_(0, 0.5)
    model.save_pretrained(root, safe_serialization=True)
    return model, tok


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_llama_server(binary: Path, gguf: Path, threads: int, log: Path,
                     extra: list[str]) -> tuple[subprocess.Popen, str]:
    """llama-server --reranking (plus `extra` flags) on 127.0.0.1, once /health answers 200."""
    import httpx

    port = free_port()
    cmd = [str(binary), "-m", str(gguf), "--reranking", "--host", "127.0.0.1", "--port", str(port), "-t",
           str(threads), "-c", "2048", "-b", "512", "-ub", "512", "-np", "1", *extra]
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    fh.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"llama-server did not become ready:\n{log.read_text()[-3000:]}")


def ggml_gelu(x: np.ndarray) -> np.ndarray:
    """GELU as llama.cpp's CPU backend computes it for BERT: the tanh approximation, looked up in a float16
    table by the float16 value of x (GGML_GELU_FP16), 0 below -10 and x above 10."""
    xh = np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)
    y = 0.5 * xh * (1.0 + np.tanh(np.float32(0.7978845608028654) * xh * (1.0 + np.float32(0.044715) * xh * xh)))
    y = y.astype(np.float16).astype(np.float32)
    return np.where(x <= -10.0, 0.0, np.where(x >= 10.0, x, y)).astype(np.float32)


def with_ggml_gelu(ce) -> None:
    """Make the Reranker's BERT layers use llama.cpp's GELU instead of the exact one (for this check only)."""
    for i in range(ce.model.params.n_layer):
        ce.model.placement.layer(i).gelu_erf = ggml_gelu


def transformers_logits(model, pairs: list[tuple[list[int], list[int]]], zero_segments: bool) -> np.ndarray:
    """The first logit of each pair (token ids and segment ids as given, or all segment 0), one at a time."""
    import torch

    out = []
    with torch.no_grad():
        for ids, seg in pairs:
            types = [0] * len(ids) if zero_segments else seg
            logits = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types]),
                           attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits
            out.append(float(logits[0, 0]))
    return np.asarray(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-server", default=None, help="llama-server binary (default: $LLAMA_CPP_BIN)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=23)
    args = ap.parse_args()
    binary = llama_server_binary(args.llama_server)
    if binary is None:
        print("llama-server not found (give --llama-server PATH or LLAMA_CPP_BIN); nothing compared")
        return 0

    import httpx

    from embedkit.convert import convert_hf_to_gguf
    from embedkit.embed.reranker import Reranker

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}, {args.threads} threads, "
          f"seed {args.seed}, {binary}")
    with tempfile.TemporaryDirectory(prefix="embedkit-rerank-check-") as tmp:
        tmp = Path(tmp)
        model, _ = write_cross_encoder(tmp / "hf", args.seed)
        gguf = convert_hf_to_gguf(tmp / "hf", tmp / "ce.gguf")
        ce = Reranker(gguf)
        pairs = ce.pairs(QUERY, DOCUMENTS)
        ours = ce.pair_logits(pairs)[:, 0].astype(np.float64)
        ours_seg0 = ce.pair_logits([(ids, [0] * len(ids)) for ids, _ in pairs])[:, 0].astype(np.float64)
        with_ggml_gelu(ce)  # after the two above: from here on, llama.cpp's GELU
        ours_ggml = ce.pair_logits([(ids, [0] * len(ids)) for ids, _ in pairs])[:, 0].astype(np.float64)
        hf = transformers_logits(model, pairs, zero_segments=False)
        hf_seg0 = transformers_logits(model, pairs, zero_segments=True)

        runs = {}
        for label, extra in LLAMA_RUNS:
            proc, url = run_llama_server(binary, gguf, args.threads, tmp / "llama-server.log", extra)
            try:
                with httpx.Client(base_url=url, timeout=300) as c:
                    same_ids = all(
                        c.post("/tokenize", json={"content": t, "add_special": False}).json()["tokens"]
                        == ce.tokenizer.encode(t, add_special=False) for t in [QUERY, *DOCUMENTS])
                    body = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS,
                                                      "top_n": len(DOCUMENTS)}).json()
            finally:
                proc.terminate()
                proc.wait(30)
            scores = np.zeros(len(DOCUMENTS))
            for r in body["results"]:
                scores[r["index"]] = r["relevance_score"]
            runs[label] = (scores, same_ids, body["usage"]["prompt_tokens"])
    our_tokens = sum(len(ids) for ids, _ in pairs)
    llama, same_ids, llama_tokens = runs[LLAMA_RUNS[-1][0]]
    fa_auto = runs[LLAMA_RUNS[0][0]][0]

    print(f"token ids equal (llama-server /tokenize vs embedkit): {same_ids}; pair tokens: embedkit {our_tokens}, "
          f"llama-server usage {llama_tokens}")
    print()
    print("| doc | tokens | llama.cpp `-fa off` | llama.cpp (flash attention auto) | embedkit, segments 0, "
          "llama.cpp's GELU | embedkit, segments 0 | transformers, segments 0 | embedkit | transformers |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, (ids, _) in enumerate(pairs):
        print(f"| {i} | {len(ids)} | {llama[i]:.6f} | {fa_auto[i]:.6f} | {ours_ggml[i]:.6f} | {ours_seg0[i]:.6f} "
              f"| {hf_seg0[i]:.6f} | {ours[i]:.6f} | {hf[i]:.6f} |")
    spread = float(np.ptp(llama)) or 1.0
    d_seg0 = float(np.max(np.abs(ours_seg0 - llama)))
    d_hf_seg0 = float(np.max(np.abs(hf_seg0 - llama)))
    d_ours = float(np.max(np.abs(ours - llama)))
    d_ref = float(np.max(np.abs(ours - hf)))
    same_order = list(np.argsort(-ours_seg0, kind="stable")) == list(np.argsort(-llama, kind="stable"))
    print()
    print(f"max |embedkit(segments 0) - llama.cpp|     = {d_seg0:.2e}  ({d_seg0 / spread:.1e} of the score spread "
          f"{spread:.3f}); same order: {same_order}")
    print(f"max |transformers(segments 0) - llama.cpp| = {d_hf_seg0:.2e}")
    d_ggml = float(np.max(np.abs(ours_ggml - llama)))
    print(f"max |embedkit(segments 0, llama.cpp's GELU) - llama.cpp| = {d_ggml:.2e}")
    print(f"max |embedkit(segments 0) - llama.cpp with flash attention auto| = "
          f"{float(np.max(np.abs(ours_seg0 - fa_auto))):.2e}  (K and V cast to float16 for flash attention)")
    print(f"max |embedkit - llama.cpp|                 = {d_ours:.2e}  (segment ids 0/1 vs llama.cpp's 0 everywhere)")
    print(f"max |embedkit - transformers|              = {d_ref:.2e}")
    ok = same_ids and our_tokens == llama_tokens and same_order and d_seg0 <= TOLERANCE
    print(f"same tokens, same order and within {TOLERANCE} on the same inputs:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
