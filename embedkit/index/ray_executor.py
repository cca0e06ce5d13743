"""Indexing on a Ray cluster: the driver diffs against the store and writes; Ray actors chunk and embed.

The driver (this process) walks, hashes and diffs as the single-process pipeline does, then sends the
changed documents' texts to embedder actors in bounded batches (no shared filesystem: texts travel through
Ray's object store) and writes each embedded document in its own transaction with binary COPY.

Why plain actors with a bounded in-flight window rather than Ray Data for files: the documents come from a
generator on the driver (the diff), and Ray Data would first materialise them all as a dataset; the window
(`in_flight` batches per actor) keeps the driver's memory flat on any tree and lets the driver write each
batch as soon as it returns. A dataset that already lives on the cluster (Parquet, a table) goes through
Ray Data's `map_batches` with an actor pool instead (`run_dataset`), which streams it with backpressure.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from embedkit.errors import CollectionMismatchError, EmbedkitError, InputError
from embedkit.index.chunk import TextChunk
from embedkit.index.keys import shown_path
from embedkit.index.pipeline import DocumentText, IndexProgress, IndexReport, write_embedded
from embedkit.index.ray_worker import DatasetEmbedder, EmbedWorker, GivenEmbedder, ModelLoader
from embedkit.store import Store
from embedkit.store.collections import CollectionInfo, ModelIdentity, mismatch
from embedkit.store.writes import DocumentRecord

RAY_MISSING = "indexing on Ray needs the ray package: pip install 'embedkit[ray]'"


def import_ray() -> Any:
    """The ray module, or an InputError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(RAY_MISSING) from None
    return ray


class RayExecutor:
    """Runs the chunk-embed step of indexing on Ray actors (see the module docstring).

    address: `auto` joins the running cluster (RAY_ADDRESS or the local head), `local` starts a cluster on
    this machine for the run, anything else is passed to `ray.init(address=...)`; ignored when Ray is
    already initialised in this process. actors: how many embedder actors (default: one per GPU with
    `gpus_per_actor`, else as many as fit with `cpus_per_actor` CPUs each). cpus_per_actor: CPUs (and
    kernel threads) per actor (default: all the CPUs of the smallest node, or the cluster's CPUs shared
    among `actors`). gpus_per_actor: 1 puts each actor on a GPU and embeds there. batch_docs/batch_chars:
    one task's size; in_flight: tasks queued per actor. loader: a zero-argument callable building the
    embedder on a worker (default: the collection's model, by catalog name or absolute path).
    """

    def __init__(self, address: str = "auto", actors: int | None = None, cpus_per_actor: int | None = None,
                 gpus_per_actor: float = 0, batch_docs: int = 16, batch_chars: int = 1_000_000,
                 in_flight: int = 2, loader: Any = None) -> None:
        if actors is not None and actors < 1:
            raise InputError(f"Ray actors: {actors}; expected at least 1")
        if batch_docs < 1:
            raise InputError(f"Ray batch: {batch_docs} documents; expected at least 1")
        if address not in ("auto", "local"):
            _host_port(address)
        self.address, self.actors, self.cpus_per_actor = address, actors, cpus_per_actor
        self.gpus_per_actor, self.batch_docs, self.batch_chars = gpus_per_actor, batch_docs, batch_chars
        self.in_flight, self.loader = max(1, in_flight), loader
        self.batch_size = 32
        self.startup_seconds = 0.0  # of the last run: until every actor had loaded its model and warmed up

    # -- cluster -----------------------------------------------------------------------------
    def _connect(self, ray: Any) -> bool:
        """Initialise Ray unless it already is; True when this call started it (and must shut it down)."""
        if ray.is_initialized():
            return False
        if self.address not in ("auto", "local"):
            _probe(self.address)
        elif self.address == "auto" and os.environ.get("RAY_ADDRESS", "auto") not in ("auto", "local", ""):
            _probe(os.environ["RAY_ADDRESS"])
        try:
            if self.address == "local":
                ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
            else:
                ray.init(address=self.address, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise InputError(f"--ray {self.address}: no Ray cluster there ({str(exc).splitlines()[0]}); start one "
                             "with `ray start --head` or use --ray local") from None
        return True

    def _sizes(self, ray: Any) -> tuple[int, float, float]:
        """(actors, cpus per actor, gpus per actor) for this cluster."""
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        node_cpus = [int(r.get("CPU", 0)) for r in nodes if r.get("CPU", 0) >= 1] or [1]
        if self.gpus_per_actor:
            gpus = int(sum(r.get("GPU", 0) for r in nodes) // self.gpus_per_actor)
            if gpus < 1 and self.actors is None:
                raise InputError("--ray-gpu: the Ray cluster has no GPU")
            return self.actors or gpus, self.cpus_per_actor or 1, self.gpus_per_actor
        cpus = self.cpus_per_actor
        if cpus is None:
            cpus = max(1, sum(node_cpus) // self.actors) if self.actors else min(node_cpus)
        actors = self.actors or max(1, sum(c // cpus for c in node_cpus))
        return actors, cpus, 0

    def _remote_options(self, cpus: float, gpus: float) -> dict[str, Any]:
        # Kernel threads = the CPUs the actor holds, so actors on one node do not oversubscribe it. Nothing else
        # of the driver's environment is sent: each node keeps its own EMBEDKIT_MODELS and Python path.
        env = {"EMBEDKIT_THREADS": str(max(1, int(cpus)))}
        return {"num_cpus": cpus, "num_gpus": gpus, "runtime_env": {"env_vars": env}}

    def _loader(self, info: CollectionInfo, embedder: Any) -> Any:
        if self.loader is not None:
            return self.loader
        from embedkit.catalog import KNOWN_MODELS
        from embedkit.embed import Embedder

        device = "cuda" if self.gpus_per_actor else "cpu"
        if isinstance(embedder, Embedder):
            name = info.model.model_name
            return ModelLoader(name if name in KNOWN_MODELS else str(embedder.path.resolve()), device)
        return GivenEmbedder(embedder)  # e.g. a pure-Python embedder: sent pickled

    @staticmethod
    def _check(info: CollectionInfo, fingerprint: tuple[str, int, str, bool]) -> None:
        sha, dim, pooling, normalize = fingerprint
        have = ModelIdentity(info.model.model_name, info.model.model_file, sha, "", dim, pooling, normalize)
        diff = mismatch(info.model, have)
        if diff:
            raise CollectionMismatchError(
                f"a Ray worker's model differs from collection {info.name!r}: {diff}; give every node the same "
                "model file")

    # -- files and iterables -----------------------------------------------------------------
    def run(self, store: Store, info: CollectionInfo, embedder: Any, documents: Iterable[DocumentText],
            total: int | None, report: IndexReport, progress: IndexProgress | None) -> set[str]:
        """Chunk and embed `documents` on Ray actors and write each one here as its batch returns; returns
        the keys written. At most `in_flight` batches per actor are out at any time."""
        ray = import_ray()
        documents = iter(documents)
        first = next(documents, None)
        if first is None:  # nothing changed: no cluster to start or join
            return set()
        started = self._connect(ray)
        try:
            return self._run(ray, store, info, embedder, itertools.chain([first], documents), total, report,
                             progress)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray, store, info, embedder, documents, total, report, progress) -> set[str]:
        t0 = time.perf_counter()
        n_actors, cpus, gpus = self._sizes(ray)
        actor_cls = ray.remote(EmbedWorker).options(max_restarts=2, max_task_retries=2,
                                                    **self._remote_options(cpus, gpus))
        loader = self._loader(info, embedder)
        actors = [actor_cls.remote(loader, info.chunk_tokens, info.chunk_overlap, self.batch_size,
                                   info.document_prefix) for _ in range(n_actors)]
        meter = _Meter(total, progress)
        written: set[str] = set()
        try:
            for fp in _get(ray, [a.fingerprint.remote() for a in actors]):
                self._check(info, fp)
            self.startup_seconds = time.perf_counter() - t0
            out: dict[Any, tuple[int, list[DocumentText]]] = {}  # task -> (actor index, its documents)
            load = [0] * n_actors
            batches = _batches(documents, self.batch_docs, self.batch_chars)
            more = True
            with store.connect() as conn:
                while True:
                    while more and len(out) < n_actors * self.in_flight:
                        batch = next(batches, None)
                        if batch is None:
                            more = False
                            break
                        a = min(range(n_actors), key=load.__getitem__)
                        out[actors[a].embed_documents.remote([d.text for d in batch])] = (a, batch)
                        load[a] += 1
                    if not out:
                        break
                    (ready,), _ = ray.wait(list(out), num_returns=1)
                    a, batch = out.pop(ready)
                    load[a] -= 1
                    results = _get(ray, ready)
                    t = time.perf_counter()
                    for d, res in zip(batch, results, strict=True):
                        if isinstance(res, str):
                            report.skipped.append((shown_path(d.doc.path, d.doc.is_file), res))
                            meter.done()
                            continue
                        spans, vectors = res
                        chunks = [TextChunk(s, e, d.text[s:e], n) for s, e, n in spans.tolist()]
                        write_embedded(conn, info.id, d.doc, chunks, vectors, report)
                        written.add(d.doc.path)
                        report.chunks_embedded += len(chunks)
                        meter.chunks(len(chunks))
                        meter.done()
                    report.write_seconds += time.perf_counter() - t
        finally:
            for a in actors:
                ray.kill(a)
        # the embedding ran on the cluster, overlapped with the writes: its time is the phase's wall time
        report.embed_seconds += time.perf_counter() - t0
        return written

    # -- Ray Datasets ------------------------------------------------------------------------
    def run_dataset(self, store: Store, info: CollectionInfo, embedder: Any, dataset: Any, known: dict[str, str],
                    report: IndexReport, progress: IndexProgress | None) -> set[str]:
        """Index a Ray Dataset of texts (columns `key`, `text`, optional `metadata`) with Ray Data's
        `map_batches` over an actor pool; the driver writes the embedded rows as they stream back. Returns
        the keys now stored (written or unchanged)."""
        ray = import_ray()
        started = self._connect(ray)
        try:
            t0 = time.perf_counter()
            n_actors, cpus, gpus = self._sizes(ray)
            opts = self._remote_options(cpus, gpus)
            embedded = dataset.map_batches(
                DatasetEmbedder, fn_constructor_args=(self._loader(info, embedder), info.chunk_tokens,
                                                      info.chunk_overlap, self.batch_size, ray.put(known),
                                                      info.document_prefix),
                concurrency=n_actors, batch_size=self.batch_docs, batch_format="pyarrow",
                num_cpus=opts["num_cpus"], num_gpus=opts["num_gpus"] or None, runtime_env=opts["runtime_env"])
            meter = _Meter(None, progress)
            kept: set[str] = set()
            checked = False
            with store.connect() as conn:
                for batch in _raising_one_line(ray, embedded.iter_batches(batch_size=None, batch_format="pyarrow")):
                    t = time.perf_counter()
                    for row in batch.to_pylist():
                        kept.add(row["key"])
                        if not checked and row["status"] == "embed":
                            self._check(info, tuple(json.loads(row["fingerprint"])))
                            checked = True
                        if row["status"] == "unchanged":
                            report.unchanged += 1
                        elif row["status"] != "embed":
                            kept.discard(row["key"])
                            report.skipped.append((row["key"], row["status"]))
                        else:
                            spans = np.asarray(row["spans"], dtype=np.int64).reshape(-1, 3).tolist()
                            chunks = [TextChunk(s, e, tx, n) for (s, e, n), tx in zip(spans, row["chunk_texts"],
                                                                                      strict=True)]
                            vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(chunks), -1)
                            doc = DocumentRecord(row["key"], row["sha256"], 0.0, row["size"],
                                                 json.loads(row["metadata"]))
                            write_embedded(conn, info.id, doc, chunks, vectors, report)
                            report.chunks_embedded += len(chunks)
                            meter.chunks(len(chunks))
                            meter.done()
                    report.write_seconds += time.perf_counter() - t
            report.embed_seconds += time.perf_counter() - t0
            return kept
        finally:
            if started:
                ray.shutdown()


class _Meter:
    """Feeds the progress callbacks: documents planned (when known), chunks embedded, documents done (written
    or found to have no text)."""

    def __init__(self, total: int | None, progress: IndexProgress | None) -> None:
        self.progress = progress
        if progress is not None:
            progress.planned(total, None)

    def chunks(self, n: int) -> None:
        if self.progress is not None:
            self.progress.embedded(n)

    def done(self) -> None:
        if self.progress is not None:
            self.progress.written(1)


def _host_port(address: str) -> tuple[str, str]:
    """(host, port) of `address` (host:port or ray://host:port); an InputError if it is neither."""
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray {address}: expected auto, local, HOST:PORT or ray://HOST:PORT")
    return host, port


def _probe(address: str) -> None:
    """An InputError unless `address` accepts a TCP connection within a few seconds: Ray's own client retries
    an unreachable address for minutes."""
    host, port = _host_port(address)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise InputError(f"--ray {address}: cannot reach a Ray cluster there ({exc.strerror or exc}); start one "
                         "with `ray start --head` or use --ray local") from None


def _get(ray: Any, refs: Any) -> Any:
    """ray.get, with a worker's embedkit error re-raised as is and any other failure as one line."""
    try:
        return ray.get(refs)
    except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
        raise _one_line(ray, exc) from None


def _raising_one_line(ray: Any, it: Iterator[Any]) -> Iterator[Any]:
    """The items of `it`, a worker's failure raised as by `_get`."""
    try:
        yield from it
    except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
        raise _one_line(ray, exc) from None


def _one_line(ray: Any, exc: Exception) -> EmbedkitError:
    if isinstance(exc, ray.exceptions.RayActorError):
        if getattr(exc, "actor_init_failed", False):  # the cause is only kept as text: its traceback's last line
            lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
            kind, _, msg = lines[-1].partition(": ")
            return EmbedkitError(f"a Ray embedder actor could not start: {kind.rsplit('.', 1)[-1]}: {msg}")
        return EmbedkitError(f"a Ray embedder actor died: {str(exc).strip().splitlines()[0]}")
    cause = getattr(exc, "cause", None)
    while isinstance(cause, ray.exceptions.RayError) and getattr(cause, "__cause__", None) is not None:
        cause = cause.__cause__  # Ray Data wraps the UDF's exception in UserCodeException
    if isinstance(cause, EmbedkitError):
        return cause
    last = str(cause or exc).strip().splitlines()[-1] if str(cause or exc).strip() else ""
    return EmbedkitError(f"a Ray worker failed: {type(cause).__name__ if cause else 'error'}: {last}")


def _batches(documents: Iterable[DocumentText], max_docs: int, max_chars: int) -> Iterator[list[DocumentText]]:
    """Consecutive groups of at most `max_docs` documents and about `max_chars` characters (a larger
    document goes alone)."""
    batch: list[DocumentText] = []
    chars = 0
    for d in documents:
        if batch and (len(batch) >= max_docs or chars + len(d.text) > max_chars):
            yield batch
            batch, chars = [], 0
        batch.append(d)
        chars += len(d.text)
    if batch:
        yield batch
