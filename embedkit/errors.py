"""Typed errors. The CLI turns every EmbedkitError into one line on stderr and a non-zero exit."""

from __future__ import annotations


class EmbedkitError(Exception):
    """Base class of every error embedkit raises on purpose."""

    exit_code = 1


class GGUFError(EmbedkitError):
    """A GGUF file is malformed, truncated or of an unsupported version."""


class UnsupportedModelError(EmbedkitError):
    """The model's architecture (or a feature it needs) is not supported."""


class UnsupportedQuantError(EmbedkitError):
    """A ggml tensor type has no kernel (or no known layout)."""


class TokenizerError(EmbedkitError):
    """The tokenizer metadata is missing, inconsistent or of an unsupported kind."""


class ModelNotFoundError(EmbedkitError):
    """A model name or path could not be resolved to a GGUF file."""


class ConversionError(EmbedkitError):
    """A Hugging Face model directory could not be converted to GGUF."""


class StoreError(EmbedkitError):
    """The database is unreachable, lacks pgvector, or holds something unexpected."""


class CollectionMismatchError(StoreError):
    """A collection was created with another model, dimension or pooling."""


class GenerationError(EmbedkitError):
    """Generation cannot proceed (context exceeded, bad sampling parameters, ...)."""


class ModelOutputError(EmbedkitError):
    """A model computed NaN or infinite values (damaged weights, or a kernel fault)."""


class TemplateError(EmbedkitError):
    """A chat template failed to render or tried to escape the sandbox."""


class DeviceError(EmbedkitError):
    """The requested compute device is not available."""


class InputError(EmbedkitError):
    """A user-supplied value or file is not what was expected."""
