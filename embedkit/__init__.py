"""embedkit: GGUF language models with a Numba inference engine, and embeddings into PostgreSQL+pgvector."""

__version__ = "0.1.0"
