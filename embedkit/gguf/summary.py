"""A summary of a GGUF model for humans and scripts (what `embedkit info` prints)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from embedkit.gguf.reader import GGUFFile

# llama.cpp's `llama_ftype` (general.file_type)
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}

# llama.cpp's `llama_pooling_type` ({arch}.pooling_type)
POOLING_TYPES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}

# SPDX ids (lower case) of OSI-approved licences seen on model cards; anything else is flagged.
OSI_LICENSES = {
    "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "isc", "mpl-2.0", "unlicense", "0bsd",
    "gpl-2.0", "gpl-3.0", "lgpl-2.1", "lgpl-3.0", "agpl-3.0", "epl-2.0", "artistic-2.0", "zlib",
    "bsl-1.0", "ecl-2.0", "ms-pl", "upl-1.0", "cc0-1.0",
}


def license_status(license_id: str | None) -> str:
    """'open source (OSI)', 'restricted (not OSI open source)' or 'unknown'."""
    if not license_id:
        return "unknown"
    return "open source (OSI)" if license_id.strip().lower() in OSI_LICENSES else "restricted (not OSI open source)"


def describe(f: GGUFFile) -> dict[str, Any]:
    """Architecture, sizes, tokenizer, licence and the quantization mix of a GGUF model."""
    arch = f.get("general.architecture")
    a = (lambda k: f.get(f"{arch}.{k}")) if isinstance(arch, str) else (lambda k: None)
    mix_count: Counter[str] = Counter()
    mix_bytes: Counter[str] = Counter()
    for t in f.tensors.values():
        mix_count[t.ggml_type.name] += 1
        mix_bytes[t.ggml_type.name] += t.n_bytes
    tokens = f.get("tokenizer.ggml.tokens")
    pooling = a("pooling_type")
    file_type = f.get("general.file_type")
    license_id = f.get("general.license")
    return {
        "path": str(f.path),
        "gguf_version": f.version,
        "architecture": arch,
        "name": f.get("general.name"),
        "size_label": f.get("general.size_label"),
        "parameters": sum(t.n_elements for t in f.tensors.values()),
        "file_type": FILE_TYPES.get(file_type, file_type) if file_type is not None else None,
        "quantization_mix": [
            {"type": name, "tensors": mix_count[name], "bytes": mix_bytes[name]}
            for name in sorted(mix_bytes, key=lambda n: -mix_bytes[n])
        ],
        "tensor_bytes": sum(mix_bytes.values()),
        "context_length": a("context_length"),
        "embedding_length": a("embedding_length"),
        "layers": a("block_count"),
        "heads": a("attention.head_count"),
        "kv_heads": a("attention.head_count_kv") or a("attention.head_count"),
        "vocab_size": len(tokens) if tokens is not None else a("vocab_size"),
        "tokenizer_model": f.get("tokenizer.ggml.model"),
        "tokenizer_pre": f.get("tokenizer.ggml.pre"),
        "pooling": POOLING_TYPES.get(pooling, pooling) if pooling is not None else None,
        "chat_template": f.get("tokenizer.chat_template") is not None,
        "license": license_id,
        "license_status": license_status(license_id),
        "tensors": len(f.tensors),
    }


def tensor_table(f: GGUFFile) -> list[dict[str, Any]]:
    """One row per tensor: name, type, numpy-order shape, bytes, absolute offset."""
    return [
        {"name": t.name, "type": t.ggml_type.name, "shape": list(t.np_shape), "bytes": t.n_bytes, "offset": t.offset}
        for t in f.tensors.values()
    ]
