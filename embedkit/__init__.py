"""embedkit: GGUF language models with a Numba inference engine, and embeddings into PostgreSQL+pgvector.

The public Python API (imported lazily, so `import embedkit` stays cheap)::

    import embedkit
    f = embedkit.GGUFFile(embedkit.resolve_model("gemma3-270m"))
    tok = embedkit.load_tokenizer(f)
    model = embedkit.load_model(f)
    emb = embedkit.Embedder(embedkit.resolve_model(None, kind="embed"))
    gen = embedkit.Generator(embedkit.resolve_model("gemma3-270m"))

Indexing and search live in their packages (their names are taken by the subpackages)::

    from embedkit.index import index
    from embedkit.search import search, similar
    index(["docs/"]); hits = search("query", k=10)
"""

from __future__ import annotations

from embedkit import cpu_isa
from embedkit.lazy_exports import lazy_getattr

cpu_isa.apply()  # before any kernel module: Numba fixes its compile target at the first @njit

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "GGUFFile": "embedkit.gguf",
    "GGMLType": "embedkit.gguf",
    "resolve_model": "embedkit.catalog",
    "KNOWN_MODELS": "embedkit.catalog",
    "load_tokenizer": "embedkit.tokenizer",
    "load_model": "embedkit.models",
    "Embedder": "embedkit.embed",
    "Generator": "embedkit.generate",
    "SamplerParams": "embedkit.generate",
    "convert_hf_to_gguf": "embedkit.convert",
    "open_store": "embedkit.store",
    "EmbedkitError": "embedkit.errors",
}

__all__ = [*_EXPORTS, "__version__"]


__getattr__ = lazy_getattr("embedkit", _EXPORTS, globals())
