"""Measuring a model on text: perplexity as llama-perplexity computes it, KL divergence to a saved base."""

from embedkit.evaluate.perplexity import PerplexityResult, evaluate_perplexity, perplexity

__all__ = ["PerplexityResult", "evaluate_perplexity", "perplexity"]
