"""How far the CPU's int16 decode kernels move logits, and how often a decode step needs the near-tie rerun.

Teacher-forced over tests/data/fidelity/prose.txt, every position runs twice: rounded (the decode kernels) and
with float32 activations (`Placement.exact_decode`, which then fills the cache). Prints max / p99 / median of
max |logit difference| per step, top-1 misses and mean KL of each against the float64 goldens, and how many
steps each margin would recompute (models/decoder.py NEAR_TIE_LOGITS).

    python benchmarks/check_near_tie.py qwen2.5-coder-0.5b [N_POSITIONS]
"""

import sys
import time
from pathlib import Path

import numpy as np

from embedkit import catalog
from embedkit.backend import make_placement
from embedkit.evaluate.fidelity import kl_on_support, log_softmax64
from embedkit.models import load_model
from embedkit.models.batch import SeqBatch

name = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 10**9
g = np.load(Path(__file__).resolve().parents[1] / "tests/data/fidelity" / f"{name}.npz")
ids, ref_ids, ref_lp = g["ids"], g["top_ids"], g["top_log_probs"]
model = load_model(catalog.ensure_model(name), make_placement("cpu", cpu_math="float32"))
state = model.new_state(len(ids))
d, gaps, flips_i, flips_e, kls_i, kls_e = [], [], 0, 0, [], []
t0 = time.time()
for i in range(min(N, len(ids))):
    tok = np.asarray(ids[i:i+1], dtype=np.int32)
    li = model._forward(tok, state, SeqBatch.single(i, 1), None, "logits")
    with model.placement.exact_decode():
        le = model._forward(tok, state, SeqBatch.single(i, 1), None, "logits")
    d.append(float(np.abs(li - le).max()))
    s = np.sort(le[0])[-2:]
    gaps.append(float(s[1] - s[0]))
    flips_i += int(li.argmax() != ref_ids[i, 0])
    flips_e += int(le.argmax() != ref_ids[i, 0])
    kls_i.append(kl_on_support(ref_ids[i:i+1], ref_lp[i:i+1], log_softmax64(li))[0])
    kls_e.append(kl_on_support(ref_ids[i:i+1], ref_lp[i:i+1], log_softmax64(le))[0])
d = np.array(d)
gaps = np.array(gaps)
print(name, "n", len(d), "max|dlogit| int16 vs float32:", d.max(), "p99", np.quantile(d, .99), "median", np.median(d))
print(" top-1 misses vs float64: int16", flips_i, "float32", flips_e)
print(" mean KL vs float64: int16", np.mean(kls_i), "float32", np.mean(kls_e))
for tau in (1e-3, 2e-3, 5e-3, 1e-2):
    print(f" tau {tau}: rechecks {(gaps < tau).sum()} of {len(gaps)}")
print(" s", time.time()-t0, flush=True)
