"""`embedkit index PATH...`: index files into a collection, incrementally."""

from __future__ import annotations

import json
import sys

import click

from embedkit.index.chunk import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP


class _Bar:
    """A rich progress bar on stderr: files written, chunks embedded, chunks/s and ETA."""

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

    def planned(self, files: int, chunks: int) -> None:
        self.files_total = files
        if files:
            self.progress.start()
            self.task = self.progress.add_task("index", total=chunks, files=f"0/{files}", rate="-")

    def embedded(self, chunks: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, chunks)
            speed = self.progress.tasks[0].speed
            self.progress.update(self.task, rate=f"{speed:.3g}" if speed else "-")

    def written(self, files: int) -> None:
        self.files_done += files
        if self.task is not None:
            self.progress.update(self.task, files=f"{self.files_done}/{self.files_total}")

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the counts.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
def command(paths, collection, model, include, exclude, chunk_tokens, overlap, batch_size, prune, reembed,
            follow_symlinks, as_json, quiet) -> None:
    """Index files and folders (PATHS) into a collection: walk, chunk, embed, store.

    Unchanged files are skipped by content hash; changed files have their chunks replaced. Hidden and VCS
    folders are skipped, and a `.embedkitignore` (gitignore syntax) excludes more.
    """
    from embedkit.index import index

    # rich draws nothing useful where stderr is no terminal, but leaves a blank line there
    bar = None if quiet or not sys.stderr.isatty() else _Bar()
    try:
        report = index(
            paths, collection=collection, model=model, include=include, exclude=exclude,
            chunk_tokens=chunk_tokens, overlap=overlap, prune=prune, reembed=reembed, batch_size=batch_size,
            progress=bar, follow_symlinks=follow_symlinks,
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
