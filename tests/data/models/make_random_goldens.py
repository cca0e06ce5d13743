"""Record llama.cpp's logits for the tiny random-weight models of tests/test_models_random.py (dev machine only).

Run: .venv/bin/python tests/data/models/make_random_goldens.py
Needs llama-cpp-python (embedkit never imports it at run or test time). For every case of
test_models_random.CASES except `llama_swa` (llama.cpp ignores `llama.attention.sliding_window`; real
Mistral GGUFs don't carry it either) and for F32, Q8_0 and Q4_K, it writes the model exactly as the test
does (`write_random_model`, same seed), evaluates the test's 14 token ids with
`Llama(logits_all=True, n_ctx=64, n_threads=2)` (llama.cpp's defaults: F16 KV cache, no flash attention)
and stores `<case>/<type>/logits` (float32 [14, n_vocab]) and `<case>/<type>/sha256` (of the GGUF, so the
test notices when the writer's bytes change) in random_llamacpp.npz.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for test_models_random

TYPES = ("F32", "Q8_0", "Q4_K")
SKIP = ("llama_swa",)


def main() -> Path:
    """Write the goldens file and return its path."""
    from llama_cpp import Llama
    from test_models_random import CASES, N_TOKENS, SHAPE, case_seed, prompt_ids

    from embedkit.testing.random_models import write_random_model

    arrays: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            if case in SKIP:
                continue
            arch, extra = CASES[case]
            s = {**SHAPE, **extra}
            for gtype in TYPES:
                path = Path(tmp) / f"{case}-{gtype}.gguf"
                write_random_model(path, arch, s, gtype, seed=case_seed(case, gtype))
                llm = Llama(model_path=str(path), logits_all=True, n_ctx=64, n_threads=2, verbose=False)
                llm.eval([int(i) for i in prompt_ids(s)])
                arrays[f"{case}/{gtype}/logits"] = np.array(llm.scores[:N_TOKENS], dtype=np.float32)
                arrays[f"{case}/{gtype}/sha256"] = np.array(hashlib.sha256(path.read_bytes()).hexdigest())
                del llm
    out = HERE / "random_llamacpp.npz"
    np.savez_compressed(out, **arrays)
    return out


if __name__ == "__main__":
    print(main())
