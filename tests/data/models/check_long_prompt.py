"""Long prompts against llama.cpp (dev tool; needs llama-cpp-python): teacher-forced top-1 agreement
before and after position 512 (Gemma 3's sliding window), for a whole prompt in one batch and for the
same tokens decoded one at a time.

    .venv/bin/python tests/data/models/check_long_prompt.py gemma3-270m 1000
"""

import glob
import sys
import time
from pathlib import Path

import numpy as np
from llama_cpp import Llama

from embedkit.catalog import ensure_model
from embedkit.models import load_model

name = sys.argv[1]
n_tok = int(sys.argv[2])
path = str(ensure_model(name))
examples = Path(__file__).resolve().parents[3] / "examples"
text = "\n\n".join(Path(f).read_text() for f in sorted(glob.glob(f"{examples}/**/*.md", recursive=True)))
llm = Llama(model_path=path, logits_all=True, n_ctx=n_tok + 16, n_threads=2, verbose=False)
toks = llm.tokenize(text.encode(), add_bos=True, special=False)[:n_tok]
t = time.time()
llm.reset()
llm.eval(toks)
print("llama.cpp eval", time.time() - t, flush=True)
ref = np.asarray(llm.scores[: len(toks)], dtype=np.float32)
top = np.argsort(-ref, axis=1)[:, :2]
ref_top1 = top[:, 0]
margin = ref[np.arange(len(toks)), top[:, 0]] - ref[np.arange(len(toks)), top[:, 1]]
del llm, ref
m = load_model(path)
t = time.time()
ours = m.forward(np.asarray(toks), m.new_state(len(toks)), 0, all_positions=True).argmax(axis=1)
print("ours prompt", time.time() - t, flush=True)
# decode path: prompt of 8 tokens, then one token at a time
st = m.new_state(len(toks))
dec = [m.forward(np.asarray(toks[:8]), st, 0, all_positions=True).argmax(axis=1)]
for p in range(8, len(toks)):
    dec.append(m.forward(np.asarray(toks[p : p + 1]), st, p, all_positions=True).argmax(axis=1))
dec = np.concatenate(dec)
clear = margin >= 0.5
for label, got in (("batch", ours), ("decode", dec)):
    for lo, hi in ((0, 512), (512, len(toks))):
        sl = slice(lo, hi)
        a = got[sl] == ref_top1[sl]
        c = a[clear[sl]]
        print(
            f"{name} {label} positions {lo}-{hi}: top-1 {a.mean():.3f}, "
            f"where llama.cpp's margin >= 0.5: {c.mean():.3f} ({(~c).sum()} misses of {c.size})"
        )
