"""The embedding model of a collection: load it, and describe it the way a collection records it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedkit.errors import ModelNotFoundError
from embedkit.store.collections import CollectionInfo, ModelIdentity, check_model, display_name


class EmbedderLike(Protocol):
    """What indexing and search need from `embedkit.embed.Embedder`."""

    dim: int
    pooling: str
    normalize: bool

    def embed(self, texts: Any, batch_size: int = 32, progress: Any = None) -> np.ndarray: ...

    def count_tokens(self, text: str) -> int: ...


def model_identity(emb: Any, model_name: str, model_path: Path | None = None) -> ModelIdentity:
    """The identity a collection stores for an embedder: name as given, file name, content hash,
    architecture, dimension, pooling and normalisation."""
    path = model_path or getattr(emb, "path", None)
    return ModelIdentity(
        model_name=model_name,
        model_file=Path(path).name if path else str(getattr(emb, "model_name", model_name)),
        model_sha256=str(emb.model_sha256),
        architecture=str(emb.architecture),
        dim=int(emb.dim),
        pooling=str(emb.pooling),
        normalize=bool(emb.normalize),
    )


def load_embedder(model: str | os.PathLike[str] | None) -> tuple[Any, str, Path]:
    """The Embedder for a model name or path (None: the default embedding model), with the name to record
    and the resolved file."""
    from embedkit.catalog import DEFAULT_MODELS, KNOWN_MODELS, resolve_model
    from embedkit.embed import Embedder

    name = os.fspath(model) if model is not None else DEFAULT_MODELS["embed"]
    path = resolve_model(model, kind="embed")
    if name not in KNOWN_MODELS:
        name = str(Path(path).resolve())  # a path: recorded absolute, so search works from any folder
    return Embedder(path), name, path


def embedder_for_collection(info: CollectionInfo, model: str | os.PathLike[str] | None = None) -> Any:
    """The Embedder that searches `info`: the given model, else the one the collection recorded; refuses
    one that differs from what the collection was built with."""
    if model is None:
        try:
            emb, name, path = load_embedder(info.model.model_name)
        except ModelNotFoundError:
            raise ModelNotFoundError(
                f"collection {display_name(info.name)} was built with the model {info.model.model_name!r}, which is "
                f"no longer there; give the same model ({info.model.model_file}) with -m/--model"
            ) from None
    else:
        emb, name, path = load_embedder(model)
    check_model(info, model_identity(emb, name, path))
    return emb
