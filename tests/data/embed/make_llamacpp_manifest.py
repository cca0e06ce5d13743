"""Record the metadata and tensor tables of GGUF files made by llama.cpp's convert_hf_to_gguf.py (see README.md).

The GGUF files themselves (25-90 MB) are too big to commit; the manifest keeps, for every metadata key,
its GGUF value types and its value (arrays: length and sha256 of their canonical JSON), and for every
tensor its name, ggml type, GGUF shape and the sha256 of its bytes.

Usage: python tests/data/embed/make_llamacpp_manifest.py OUT.json f32=A.gguf f16=B.gguf q8_0=C.gguf
"""

from __future__ import annotations

import hashlib
import json
import sys

import gguf
import numpy as np


def manifest(path: str) -> dict:
    """Metadata + tensor table of one GGUF file, read with gguf-py (the reference reader)."""
    r = gguf.GGUFReader(path)
    kv = []
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        types = [int(t) for t in field.types]
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            if field.types[1] == gguf.GGUFValueType.STRING:
                items = [field.contents(i) for i in range(len(field.data))]
            else:
                items = [int(x) if isinstance(x, (int, np.integer)) else float(x) for x in field.contents()]
            digest = hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()
            kv.append({"key": key, "types": types, "length": len(items), "sha256": digest})
        else:
            value = field.contents()
            kv.append({"key": key, "types": types, "value": value})
    tensors = [
        {
            "name": t.name,
            "type": t.tensor_type.name,
            "shape": [int(d) for d in t.shape],
            "sha256": hashlib.sha256(np.ascontiguousarray(t.data).view(np.uint8).tobytes()).hexdigest(),
        }
        for t in r.tensors
    ]
    return {"alignment": r.alignment, "metadata": kv, "tensors": tensors}


def main(out: str, *pairs: str) -> None:
    result = {}
    for pair in pairs:
        outtype, path = pair.split("=", 1)
        result[outtype] = manifest(path)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
