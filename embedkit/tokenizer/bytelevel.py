"""GPT-2's byte <-> printable-character map used by byte-level BPE vocabularies."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def byte_encoder() -> list[str]:
    """byte value -> the character standing for it in the vocabulary (GPT-2 bytes_to_unicode)."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out = [""] * 256
    n = 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """Inverse of byte_encoder."""
    return {c: b for b, c in enumerate(byte_encoder())}


@lru_cache(maxsize=1)
def latin1_to_bytelevel() -> dict[int, str]:
    """A str.translate table: after `s.encode().decode('latin-1')`, map each char to its byte-level char."""
    return {b: c for b, c in enumerate(byte_encoder())}
