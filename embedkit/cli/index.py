"""`embedkit index PATH...`: index files into a collection, incrementally."""

from __future__ import annotations

import json
import sys

import click

from embedkit.index.chunk import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP


class _Bar:
    """A rich progress bar on stderr: files written, chunks embedded, chunks/s and ETA. When the chunk count
    is not known in advance (chunking on Ray workers), the bar and the ETA follow the documents."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]indexing"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[files]} files"),
            TextColumn("{task.completed:.0f}/{task.total:.0f} chunks"),
            TextColumn("{task.fields[rate]} chunks/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task = None
        self.files_done = 0
        self.files_total = 0
        self.by_files = False  # the bar counts documents, not chunks
        self.chunks_done = 0
        self.t0 = 0.0

    def planned(self, files: int | None, chunks: int | None) -> None:
        import time

        self.files_total = files or 0
        self.by_files = chunks is None
        self.t0 = time.monotonic()
        if files or files is None:
            self.progress.start()
            if self.by_files:
                from rich.progress import TextColumn

                cols = list(self.progress.columns)
                cols[3:5] = [TextColumn("{task.completed:.0f}/{task.total} documents"),
                             TextColumn("{task.fields[chunks]} chunks")]
                self.progress.columns = tuple(cols)
            self.task = self.progress.add_task("index", total=files if self.by_files else chunks,
                                               files=f"0/{files}", chunks="0", rate="-")

    def embedded(self, chunks: int) -> None:
        import time

        if self.task is None:
            return
        self.chunks_done += chunks
        if self.by_files:
            elapsed = time.monotonic() - self.t0
            self.progress.update(self.task, chunks=str(self.chunks_done),
                                 rate=f"{self.chunks_done / elapsed:.3g}" if elapsed > 0 else "-")
            return
        self.progress.advance(self.task, chunks)
        speed = self.progress.tasks[0].speed
        self.progress.update(self.task, rate=f"{speed:.3g}" if speed else "-")

    def written(self, files: int) -> None:
        self.files_done += files
        if self.task is None:
            return
        if self.by_files:
            self.progress.advance(self.task, files)
        else:
            self.progress.update(self.task, files=f"{self.files_done}/{self.files_total}")

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()


@click.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("-c", "--collection", default="default", show_default=True, help="Collection to index into.")
@click.option("-m", "--model", default=None,
              help="Embedding model (known name or GGUF path). [default: all-minilm-l6-v2]")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only files matching this gitignore-style glob (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching this glob (repeatable).")
@click.option("--chunk-tokens", type=click.IntRange(8, 8192), default=DEFAULT_CHUNK_TOKENS, show_default=True,
              help="Tokens per chunk (capped by the model's window). An existing collection keeps the chunking "
                   "it was created with; --reembed applies new values.")
@click.option("--overlap", type=click.IntRange(0, 4096), default=DEFAULT_OVERLAP, show_default=True,
              help="Tokens shared by consecutive chunks (at most half a chunk).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Texts per embedding batch.")
@click.option("--prune", is_flag=True, help="Remove documents under PATHS whose files are gone.")
@click.option("--reembed", is_flag=True,
              help="Re-embed the collection (e.g. with another model); the old content stays searchable until done.")
@click.option("--follow-symlinks", is_flag=True,
              help="Also index what links lead to outside PATHS (files and folders); by default they are skipped.")
@click.option("--query-prefix", default=None, metavar="TEXT",
              help="Text prepended to queries before embedding, recorded by a new collection (default: the "
                   "model's, e.g. e5's 'query: ').")
@click.option("--document-prefix", default=None, metavar="TEXT",
              help="Text prepended to chunks before embedding (default: the model's, e.g. e5's 'passage: ').")
@click.option("--jsonl", "jsonl", default=None, metavar="FILE",
              help='Index the documents of a JSON-lines corpus (BEIR corpus.jsonl: "_id", "title", "text" per '
                   "line) instead of files, each stored under its _id; with --prune, ids absent from FILE go.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Chunk and embed on a Ray cluster: auto joins the running one, local starts one here for the "
                   "run, or a cluster address. Needs pip install 'embedkit[ray]'.")
@click.option("--ray-actors", type=click.IntRange(1, 100000), default=None, metavar="N",
              help="Embedder actors on Ray. [default: one per GPU with --ray-gpu, else one per node]")
@click.option("--ray-batch", type=click.IntRange(1, 100000), default=16, show_default=True, metavar="N",
              help="Documents per Ray task.")
@click.option("--ray-gpu", is_flag=True, help="One GPU per Ray actor, embedding on CUDA.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the counts.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
def command(paths, collection, model, include, exclude, chunk_tokens, overlap, batch_size, prune, reembed,
            follow_symlinks, query_prefix, document_prefix, jsonl, ray_address, ray_actors, ray_batch, ray_gpu, as_json,
            quiet) -> None:
    """Index files and folders (PATHS) into a collection: walk, chunk, embed, store.

    Unchanged files are skipped by content hash; changed files have their chunks replaced. Hidden and VCS
    folders are skipped, and a `.embedkitignore` (gitignore syntax) excludes more.
    """
    from embedkit.errors import InputError
    from embedkit.index import index, index_jsonl

    if bool(paths) == bool(jsonl):
        raise InputError("give PATHS to index files, or --jsonl FILE for a JSON-lines corpus (not both)")
    executor = None
    if ray_address is not None or ray_actors is not None or ray_gpu:
        if jsonl:
            raise InputError("--jsonl runs in this process; index the corpus on Ray from Python (index_texts)")
        from embedkit.index.ray_executor import RayExecutor, import_ray

        import_ray()  # before the database and the model: one line saying how to install it
        executor = RayExecutor(ray_address or "auto", actors=ray_actors, gpus_per_actor=1 if ray_gpu else 0,
                               batch_docs=ray_batch)
    # rich draws nothing useful where stderr is no terminal, but leaves a blank line there
    bar = None if quiet or not sys.stderr.isatty() else _Bar()
    try:
        if jsonl:
            report = index_jsonl(jsonl, collection=collection, model=model, chunk_tokens=chunk_tokens,
                                 overlap=overlap, prune=prune, reembed=reembed, batch_size=batch_size, progress=bar,
                                 query_prefix=query_prefix, document_prefix=document_prefix)
        else:
            report = index(
                paths, collection=collection, model=model, include=include, exclude=exclude,
                chunk_tokens=chunk_tokens, overlap=overlap, prune=prune, reembed=reembed, batch_size=batch_size,
                progress=bar, query_prefix=query_prefix, document_prefix=document_prefix, executor=executor,
                follow_symlinks=follow_symlinks,
            )
    finally:
        if bar is not None:
            bar.stop()
    if as_json:
        click.echo(json.dumps(report.to_json()))
        return
    if quiet:
        return
    rate = report.chunks_embedded / report.embed_seconds if report.embed_seconds else 0.0
    click.echo(
        f"{report.collection}: {report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
        f"{report.removed} removed, {len(report.skipped)} skipped; {report.chunks_embedded} chunks embedded "
        f"in {report.embed_seconds:.1f} s ({rate:.3g} chunks/s), written in {report.write_seconds:.1f} s"
    )
    for p, why in report.skipped:
        click.echo(f"  skipped {p}: {why}")
