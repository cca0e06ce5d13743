"""Text embeddings: tokenizer -> model -> pooling -> normalisation, batched."""

from embedkit.embed.embedder import Embedder, EmbedStats
from embedkit.kernels.pooling import POOLINGS, l2_normalize, pool

__all__ = ["POOLINGS", "EmbedStats", "Embedder", "l2_normalize", "pool"]
