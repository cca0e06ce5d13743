"""Shared fixtures of the store, index and search tests: one embedded PostgreSQL per test session under a
temporary EMBEDKIT_HOME, and a tiny deterministic embedder for tests that exercise the plumbing rather than
the model (the end-to-end tests use the real default model).

Use with `from store_fixtures import *` (tests/ is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from embedkit.store import Store
from embedkit.store.collections import ModelIdentity
from embedkit.store.server import start_embedded, stop_embedded

__all__ = ["pg_home", "store", "HashEmbedder", "hash_embedder", "fresh_collection"]


@pytest.fixture(scope="session")
def pg_home() -> Path:
    """A temporary EMBEDKIT_HOME whose embedded server runs for the whole session, stopped and removed at the end.

    Not under pytest's tmp_path: when run as root, the server runs as a separate system user that must traverse
    the parent folders, and pytest resets its pytest-of-<user> folder to mode 0700 at every session start."""
    home = Path(tempfile.mkdtemp(prefix="embedkit-test-home-"))
    start_embedded(home)
    yield home
    stop_embedded(home)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def store(pg_home) -> Store:
    """A Store on the session's embedded server, schema migrated."""
    s = Store(start_embedded(pg_home))
    yield s
    s.close()


class HashEmbedder:
    """Bag of hashed words -> a normalised vector: similar word sets give similar vectors. Counts calls so
    tests can check that unchanged files are not re-embedded."""

    def __init__(self, dim: int = 64, name: str = "hash-embedder") -> None:
        self.dim = dim
        self.pooling = "mean"
        self.normalize = True
        self.max_tokens = 128
        self.architecture = "hash"
        self.model_name = name
        self.model_sha256 = hashlib.sha256(f"{name}:{dim}".encode()).hexdigest()
        self.texts_embedded = 0

    def count_tokens(self, text: str) -> int:
        return len(re.findall(r"\w+|[^\w\s]", text)) + 2

    def embed(self, texts, batch_size: int = 32, progress=None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
            out[i, 0] += 0.01  # never a zero vector
            out[i] /= np.linalg.norm(out[i])
        self.texts_embedded += len(texts)
        if progress is not None:
            progress(len(texts))
        return out

    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.model_name, self.model_name + ".gguf", self.model_sha256, "hash", self.dim,
                             "mean", True)


@pytest.fixture()
def hash_embedder() -> HashEmbedder:
    """A fresh HashEmbedder (64 dims)."""
    return HashEmbedder()


@pytest.fixture()
def fresh_collection() -> str:
    """A collection name no other test uses."""
    return "t_" + uuid.uuid4().hex[:10]
