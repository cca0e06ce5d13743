"""Indexing throughput: the single-process pipeline (the reference) vs Ray with N embedder actors.

Every side indexes the same files (the first --docs files of examples/corpus, sorted) into a fresh collection
of the same store, with the same model, and the table shows chunks/s over the whole run and, for Ray, the
actors' start-up (model load and kernel warm-up, once per actor) apart from the steady rate after it. The Ray
runs use a local cluster of this machine's CPUs (`ray.init(num_cpus=...)`), each actor holding
cores/actors CPUs and as many kernel threads.

--device cuda: the single-process side embeds on the GPU and Ray runs one actor per GPU (num_gpus=1); with
--random minilm-l6 or --random bert-large the model is a random-weight GGUF of that shape written by
embedkit.testing.random_models (no download), so GPU hosts can run it as is.

    python benchmarks/bench_index.py [--docs 21] [--actors 1,2] [--device cpu|cuda]
                                     [--model NAME_OR_GGUF | --random minilm-l6|bert-base|bert-large]
                                     [--batch-docs 4] [--no-store [--repeat K] [--embed-batch 32]]

--no-store measures the embed stage alone, for hosts without PostgreSQL: the same documents (each file
--repeat times) are chunked and embedded in this process (the reference) and on Ray actors created as
RayExecutor creates them (EmbedWorker, num_gpus=1 on --device cuda), the spans and vectors streamed back to
the driver, which slices the chunk texts as RayExecutor does; nothing is written.

Uses EMBEDKIT_DATABASE_URL if set, else an embedded server under a temporary EMBEDKIT_HOME (stopped at the end).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RANDOM_SHAPES = {
    "minilm-l6": "minilm-l6",
    "bert-base": dict(n_vocab=30522, n_embd=768, n_layer=12, n_head=12, n_ff=3072, n_ctx=512, eps=1e-12),
    "bert-large": dict(n_vocab=30522, n_embd=1024, n_layer=24, n_head=16, n_ff=4096, n_ctx=512, eps=1e-12),
}


def load(model: str | None, random: str | None, device: str, workdir: Path):
    """(embedder on the driver, model name or path to record, the loader actors use)."""
    from embedkit.backend.placement import make_placement
    from embedkit.catalog import resolve_model
    from embedkit.embed import Embedder
    from embedkit.index.ray_worker import ModelLoader

    if random:
        from embedkit.testing.random_models import write_random_model

        path = write_random_model(workdir / f"random-{random}.gguf", "bert", RANDOM_SHAPES[random], "F16", seed=0)
        name = str(path)
    else:
        path = resolve_model(model, kind="embed")
        name = model or "all-minilm-l6-v2"
    placement = make_placement(device, None) if device != "cpu" else None
    return Embedder(path, placement=placement), name, ModelLoader(name, device)


def embed_stage(files: list[Path], emb, loader, actor_counts: list[int], device: str, batch_docs: int,
                repeat: int, embed_batch: int) -> list[tuple[str, int, float, float]]:
    """The chunk+embed stage without the store: (label, chunks, wall s, actor start-up s) per side."""
    import ray

    from embedkit.index.chunk import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP
    from embedkit.index.ray_worker import EmbedWorker, chunk_and_embed

    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files] * repeat
    batches = [texts[i : i + batch_docs] for i in range(0, len(texts), batch_docs)]
    limit = getattr(emb, "max_tokens", None)  # as index.pipeline.default_chunk_tokens (not imported: no store)
    tokens, overlap = (min(DEFAULT_CHUNK_TOKENS, int(limit) - 4) if limit else DEFAULT_CHUNK_TOKENS), DEFAULT_OVERLAP
    rows = []
    t = time.perf_counter()
    chunks = sum(len(r[0]) for b in batches for r in chunk_and_embed(emb, b, tokens, overlap, embed_batch)
                 if not isinstance(r, str))  # fmt: skip
    rows.append(("single process (reference), no store", chunks, time.perf_counter() - t, 0.0))
    gpus = 1 if device == "cuda" else 0
    cpus = os.cpu_count() or 1
    for n in actor_counts:
        each_cpus = 1 if gpus else max(1, cpus // n)
        t0 = time.perf_counter()
        env = {"env_vars": {"EMBEDKIT_THREADS": str(each_cpus)}}
        cls = ray.remote(EmbedWorker).options(num_cpus=each_cpus, num_gpus=gpus, runtime_env=env)
        actors = [cls.remote(loader, tokens, overlap, embed_batch) for _ in range(n)]
        ray.get([a.fingerprint.remote() for a in actors])
        startup = time.perf_counter() - t0
        out, load, todo, chunks = {}, [0] * n, list(range(len(batches))), 0
        while todo or out:
            while todo and len(out) < 2 * n:  # two batches in flight per actor, as RayExecutor
                a = min(range(n), key=load.__getitem__)
                i = todo.pop(0)
                out[actors[a].embed_documents.remote(batches[i])] = (a, i)
                load[a] += 1
            (ready,), _ = ray.wait(list(out), num_returns=1)
            a, i = out.pop(ready)
            load[a] -= 1
            for text, res in zip(batches[i], ray.get(ready), strict=True):
                if not isinstance(res, str):
                    chunks += len([text[s:e] for s, e, _ in res[0].tolist()])
        wall = time.perf_counter() - t0
        for a in actors:
            ray.kill(a)
        each = "1 GPU" if gpus else f"{each_cpus} core{'s' if each_cpus > 1 else ''}"
        rows.append((f"Ray, {n} {'GPU' if gpus else 'CPU'} actor{'s' if n > 1 else ''} ({each} each), no store",
                     chunks, wall, startup))  # fmt: skip
    return rows


def print_table(title: str, rows: list[tuple[str, int, float, float]]) -> None:
    """The markdown table of the runs."""
    print(title + "\n")
    print("| run | chunks | wall s | chunks/s (wall) | actor start-up s | chunks/s after start-up |")
    print("|---|---|---|---|---|---|")
    for label, chunks, wall, startup in rows:
        after = chunks / max(wall - startup, 1e-9)
        print(f"| {label} | {chunks} | {wall:.1f} | {chunks / wall:.2f} | "
              f"{startup:.1f} | {after:.2f} |" if startup else
              f"| {label} | {chunks} | {wall:.1f} | {chunks / wall:.2f} | - | {after:.2f} |")


def main_no_store(args, files: list[Path]) -> None:
    """--no-store: the embed stage alone (see the module docstring)."""
    import ray

    workdir = Path(tempfile.mkdtemp(prefix="embedkit-bench-index-"))
    try:
        emb, _, loader = load(args.model, args.random, args.device, workdir)
        emb.embed(["warm up the kernels"])
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(num_cpus=os.cpu_count() or 1, num_gpus=None if args.device == "cuda" else 0,
                 include_dashboard=False, logging_level="WARNING", runtime_env={"env_vars": {"PYTHONPATH": path}})
        try:
            rows = embed_stage(files, emb, loader, [int(x) for x in args.actors.split(",") if x.strip()],
                               args.device, args.batch_docs, args.repeat, args.embed_batch)  # fmt: skip
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    model = f"random-weight {args.random} (F16)" if args.random else (args.model or "all-minilm-l6-v2")
    device = args.device
    if device == "cuda":
        from numba import cuda

        name = cuda.get_current_device().name
        device = f"cuda ({name.decode() if isinstance(name, bytes) else name})"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print_table(f"## Embed stage without the store (--no-store): {len(files)} files of examples/corpus x "
                f"{args.repeat}, {model}, device {device}, embed batch {args.embed_batch}, {platform.machine()} "
                f"{os.cpu_count()} CPUs, {when}", rows)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=21, help="files of examples/corpus to index (sorted, first N)")
    ap.add_argument("--actors", default="1,2", help="Ray actor counts to run, comma-separated")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model", default=None, help="embedding model (catalog name or GGUF) [all-minilm-l6-v2]")
    ap.add_argument("--random", choices=sorted(RANDOM_SHAPES), default=None, help="random-weight BERT of a shape")
    ap.add_argument("--batch-docs", type=int, default=4, help="documents per Ray task")
    ap.add_argument("--skip-single", action="store_true")
    ap.add_argument("--no-store", action="store_true", help="time the chunk+embed stage alone (no PostgreSQL)")
    ap.add_argument("--repeat", type=int, default=1, help="--no-store: send every file this many times")
    ap.add_argument("--embed-batch", type=int, default=32, help="--no-store: texts per embed call")
    args = ap.parse_args()
    files = sorted(p for p in (REPO / "examples" / "corpus").rglob("*") if p.is_file())[: args.docs]
    if args.no_store:
        main_no_store(args, files)
        return

    import ray

    from embedkit.index import RayExecutor, index_paths
    from embedkit.index.models import model_identity
    from embedkit.store import Store
    from embedkit.store.collections import drop_collection
    from embedkit.store.server import start_embedded, stop_embedded

    workdir = Path(tempfile.mkdtemp(prefix="embedkit-bench-index-"))
    home = None
    if not os.environ.get("EMBEDKIT_DATABASE_URL"):
        home = workdir / "home"
        os.chmod(workdir, 0o755)
    store = Store(start_embedded(home) if home else None)
    rows = []
    try:
        emb, name, loader = load(args.model, args.random, args.device, workdir)
        ident = model_identity(emb, name)
        emb.embed(["warm up the kernels"])

        def run(collection: str, executor=None):
            with store.connect() as conn:
                drop_collection(conn, collection)
            t = time.perf_counter()
            rep = index_paths(store, files, emb, ident, collection=collection, executor=executor)
            return rep, time.perf_counter() - t

        if not args.skip_single:
            rep, wall = run("bench-single")
            rows.append(("single process (reference)", rep.chunks_embedded, wall, 0.0))
        cpus = os.cpu_count() or 1
        gpus = 1 if args.device == "cuda" else 0
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(num_cpus=cpus, num_gpus=None if gpus else 0, include_dashboard=False, logging_level="WARNING",
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
        try:
            for n in [int(x) for x in args.actors.split(",") if x.strip()]:
                ex = RayExecutor(actors=n, gpus_per_actor=gpus, batch_docs=args.batch_docs, loader=loader,
                                 cpus_per_actor=1 if gpus else max(1, cpus // n))
                rep, wall = run(f"bench-ray-{n}", ex)
                each = "1 GPU" if gpus else f"{max(1, cpus // n)} core{'s' if cpus // n > 1 else ''}"
                rows.append((f"Ray, {n} {'GPU' if gpus else 'CPU'} actor{'s' if n > 1 else ''} ({each} each)",
                              rep.chunks_embedded, wall, ex.startup_seconds))
        finally:
            ray.shutdown()
    finally:
        store.close()
        if home:
            stop_embedded(home)
        shutil.rmtree(workdir, ignore_errors=True)

    model = f"random-weight {args.random} (F16)" if args.random else (args.model or "all-minilm-l6-v2")
    print_table(f"## Indexing throughput: {len(files)} files of examples/corpus, {model}, device {args.device}, "
                f"{platform.machine()} {os.cpu_count()} CPUs", rows)  # fmt: skip


if __name__ == "__main__":
    main()
