"""The models a server serves: loading them (once, memory-mapped), their names, and looking them up by the
`model` field of a request."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.server.batcher import EmbeddingBatcher
from embedkit.server.config import ServerConfig
from embedkit.server.errors import APIError
from embedkit.server.metrics import ServerMetrics
from embedkit.server.scheduler import GenerationScheduler

# Embedding models trained with Matryoshka representation learning, whose leading dimensions are an embedding
# themselves: `dimensions` may truncate only these (matched against the file name and general.name).
MATRYOSHKA_FAMILIES = ("nomic-embed-text-v1.5", "mxbai-embed-large", "snowflake-arctic-embed-m-v1.5",
                       "embeddinggemma", "qwen3-embedding", "jina-embeddings-v3", "bge-m3", "gte-modernbert")


def served_name(model: str) -> str:
    """A model's public name: the catalog name it was given by, else its file's stem."""
    from embedkit.catalog import KNOWN_MODELS

    return model if model in KNOWN_MODELS else Path(model).stem


@dataclass
class ServedModel:
    """One loaded model: its public name, other names it answers to, kind, and when it was loaded."""

    name: str
    aliases: set[str]
    kind: str  # "embed" | "generate" | "rerank"
    path: Path
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class EmbeddingModel(ServedModel):
    embedder: Any = None
    batcher: EmbeddingBatcher | None = None
    catalog_name: str = ""  # as collections record it (catalog name, or the absolute path)

    @property
    def supports_dimensions(self) -> bool:
        """Whether the model was trained so that its leading dimensions are an embedding (Matryoshka)."""
        names = (self.path.name.lower(), str(self.embedder.file.get("general.name") or "").lower())
        return any(f in n for f in MATRYOSHKA_FAMILIES for n in names)


@dataclass
class GenerationModel(ServedModel):
    scheduler: GenerationScheduler | None = None

    @property
    def generator(self) -> Any:
        """The model's BatchGenerator: tokenizer and chat template (read-only use from the routes)."""
        return self.scheduler.engine


@dataclass
class RerankModel(ServedModel):
    """A cross-encoder; one request scores at a time (each uses every CPU thread)."""

    reranker: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class BatchedEmbedder:
    """An `EmbedderLike` for search and indexing whose `embed` runs on the model's worker thread."""

    def __init__(self, model: EmbeddingModel) -> None:
        self._model = model
        emb = model.embedder
        self.dim, self.pooling, self.normalize = emb.dim, emb.pooling, emb.normalize
        self.max_tokens, self.path, self.model_name = emb.max_tokens, emb.path, emb.model_name
        self.model_sha256, self.architecture = emb.model_sha256, emb.architecture

    def embed(self, texts: Any, batch_size: int = 32, progress: Any = None) -> np.ndarray:
        """Vectors of `texts`, computed in their own forwards on the worker thread."""
        return self._model.batcher.embed_texts(list(texts), batch_size, progress)

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` with special tokens, before truncation."""
        return self._model.embedder.count_tokens(text)


class ServedModels:
    """The loaded embedding, generation and reranking models."""

    def __init__(self, embed: EmbeddingModel | None, generate: GenerationModel | None,
                 rerank: RerankModel | None = None) -> None:
        self.embed = embed
        self.generate = generate
        self.rerank = rerank

    def all(self) -> list[ServedModel]:
        """Every loaded model."""
        return [m for m in (self.embed, self.generate, self.rerank) if m is not None]

    def find(self, name: str | None, kind: str) -> Any:
        """The loaded model of `kind` called `name` (None: the one of that kind), else OpenAI's 404."""
        model = {"embed": self.embed, "generate": self.generate, "rerank": self.rerank}[kind]
        what = {"embed": "embedding", "generate": "generation", "rerank": "reranking"}[kind]
        served = ", ".join(m.name for m in self.all()) or "none"
        if model is None:
            hint = " (start it with --rerank-model MODEL)" if kind == "rerank" else ""
            raise APIError(404, f"this server has no {what} model loaded{hint} (models: {served})",
                           "model_not_found", "model")
        if name is None or name in model.aliases:
            return model
        raise APIError(404, f"the model {name!r} does not exist or is not a {what} model served here "
                            f"(models: {served})", "model_not_found", "model")

    def close(self) -> None:
        """Stop the worker threads."""
        if self.embed is not None and self.embed.batcher is not None:
            self.embed.batcher.close()
        if self.generate is not None and self.generate.scheduler is not None:
            self.generate.scheduler.close()


def _aliases(given: str, path: Path) -> set[str]:
    return {given, served_name(given), path.name, path.stem}


# A warm-up prompt this long runs each weight type's small-batch kernel (which starts at <= 8 rows), its first
# decode step the one-row kernels.
WARM_UP_TOKENS = 16


def _warm_up(engine: Any) -> None:
    """The tokenizer's tables, the chat template and one short generation before the server says it is ready (as
    llama-server's warm-up decode), so the first request does not pay for building or loading them (~1.3 s for
    SmolLM2's tokenizer, seconds for the compiled kernels on a small machine)."""
    from embedkit.errors import EmbedkitError
    from embedkit.generate.sampler import SamplerParams

    engine.tokenize("warm up")
    try:
        engine.chat_prompt([{"role": "user", "content": "warm up"}])
    except EmbedkitError:
        pass  # no usable template: chat requests get this error themselves
    n = min(WARM_UP_TOKENS, engine.n_ctx_slot - 1)
    if n >= 1:
        engine.submit([1] * n, n_predict=2, sampler=SamplerParams(temp=0), ignore_eos=True,
                      reuse_prefix=False).result()


def step_tokens(placement: Any) -> int:
    """Most tokens in one forward of the server's generation engine (its per-step budget, llama-server's
    `--ubatch-size`): on the CPU the most rows the several-row kernels take, so admitting prompts beside running
    streams never makes a step that falls to dequantized tiles + BLAS, which a batched step holds to one thread
    (measured at 4 streams: time to first token 435-517 ms instead of 987-989); 512 where a layer runs on a GPU."""
    from embedkit.kernels.cpu.matmul import MAX_MULTIROW_TOKENS

    on_gpu = any(getattr(be, "name", "") == "cuda" for be in getattr(placement, "backends", ()))
    return 512 if on_gpu else MAX_MULTIROW_TOKENS


def load_models(config: ServerConfig, metrics: ServerMetrics) -> ServedModels:
    """Resolve and load the configured models, and start one worker thread per model."""
    from embedkit.backend.placement import make_placement
    from embedkit.catalog import resolve_model
    from embedkit.embed import Embedder
    from embedkit.generate import BatchGenerator
    from embedkit.generate.generator import default_ctx, load_generative
    from embedkit.kernels import set_num_threads
    from embedkit.kernels.cpu.threads import bound_spin_waits

    bound_spin_waits()  # before the first parallel kernel
    if config.threads is not None:
        set_num_threads(config.threads)
    embed = generate = None
    if config.embed_model is not None:
        path = resolve_model(config.embed_model, kind="embed")
        emb = Embedder(path, placement=make_placement(config.device, config.gpu_layers, input_on_gpu=True))
        name = served_name(config.embed_model)
        from embedkit.catalog import KNOWN_MODELS

        recorded = config.embed_model if config.embed_model in KNOWN_MODELS else str(Path(path).resolve())
        embed = EmbeddingModel(name, _aliases(config.embed_model, path), "embed", path, embedder=emb,
                               catalog_name=recorded)
        emb.embed_tokens([emb.tokenize("warm up")])  # tokenizer tables and kernels, before the server is ready
        embed.batcher = EmbeddingBatcher(emb, name, metrics, config.batch_window_ms, config.batch_tokens)
    if config.gen_model is not None:
        path = resolve_model(config.gen_model, kind="generate")
        name = served_name(config.gen_model)
        placement = make_placement(config.device, config.gpu_layers, cpu_math=config.cpu_math,
                                   split_mode=config.split_mode, tensor_split=config.tensor_split,
                                   main_gpu=config.main_gpu)
        f, m, tok = load_generative(path, config.threads, placement)
        per_slot = config.ctx_size or default_ctx(m.params.n_ctx_train)  # -c is per slot, as llama-server's
        engine = BatchGenerator.from_parts(f, m, tok, n_ctx=per_slot * config.parallel, n_parallel=config.parallel,
                                           n_threads=config.threads, reuse_prefixes=True,
                                           n_batch=step_tokens(placement))
        _warm_up(engine)
        generate = GenerationModel(name, _aliases(config.gen_model, path), "generate", path)
        generate.scheduler = GenerationScheduler(engine, config.max_queue, metrics, name)
    rerank = None
    if config.rerank_model is not None:
        from embedkit.embed.reranker import Reranker

        path = resolve_model(config.rerank_model, kind="embed")
        rerank = RerankModel(served_name(config.rerank_model), _aliases(config.rerank_model, path), "rerank", path,
                             reranker=Reranker(path))
    return ServedModels(embed, generate, rerank)
