"""The float64 reference of the fidelity measurements: transformers' forward of a GGUF's dequantized weights.

Needs the `dev` extra (torch, transformers, accelerate, gguf); imported only by the tools that make references
(tests/data/fidelity/make_goldens.py, benchmarks/bench_fidelity.py), never by the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ROWS = 32  # positions whose vocabulary-wide logits are formed at once


def load_reference(path: Path) -> Any:
    """transformers' model of the GGUF at `path` (`from_pretrained(dir, gguf_file=...)` dequantizes with the
    `gguf` package), converted to float64, eager attention, in eval mode."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    return model.to(torch.float64).eval()


def reference_log_probs(model: Any, ids: np.ndarray) -> np.ndarray:
    """float64 log-softmax [n, n_vocab] of `model` (from `load_reference`) over the token ids, teacher-forced."""
    import torch

    cap = getattr(model.config, "final_logit_softcapping", None)
    with torch.no_grad():
        hidden = model.model(torch.from_numpy(np.asarray(ids)[None].astype(np.int64))).last_hidden_state[0]
        out = []
        for s in range(0, len(ids), ROWS):
            logits = model.lm_head(hidden[s : s + ROWS])
            if cap:
                logits = torch.tanh(logits / cap) * cap
            out.append(torch.log_softmax(logits, dim=-1).numpy())
    return np.concatenate(out)
