"""`embedkit embed`: texts -> vectors, one JSON array per line (input order) or a .npy file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from embedkit.cli.device_options import device_options, placement_from_options
from embedkit.errors import InputError


def _read_jsonl(source: str) -> list[str]:
    """One JSON string per line from a file or stdin ('-'); blank lines are skipped."""
    fh = sys.stdin if source == "-" else None
    try:
        lines = (fh or open(source, encoding="utf-8")).read().splitlines()
    except OSError as e:
        raise InputError(f"{source}: cannot read ({e.strerror})") from e
    except UnicodeDecodeError:
        raise InputError(f"{source}: not UTF-8 text; expected one JSON string per line") from None
    texts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{source}:{n}: expected one JSON string per line") from None
        if not isinstance(value, str):
            raise InputError(f"{source}:{n}: expected a JSON string, got {type(value).__name__}")
        texts.append(value)
    return texts


@click.command()
@click.argument("texts", nargs=-1)
@click.option("-m", "--model", default=None, help="GGUF path or known model name (default: all-minilm-l6-v2).")
@click.option("--jsonl", "jsonl", default=None, help="Read texts from FILE, one JSON string per line ('-': stdin).")
@click.option("--npy", "npy", default=None, type=click.Path(dir_okay=False),
              help="Write float32 vectors to FILE.npy instead.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="CPU threads (default: EMBEDKIT_THREADS or all).")
@click.option("--pooling", type=click.Choice(["mean", "cls", "last", "none"]), default=None,
              help="Override the model's pooling.")
@click.option("--no-normalize", is_flag=True, help="Keep raw pooled vectors (no L2 normalisation).")
@click.option("--max-tokens", default=None, type=click.IntRange(min=2), help="Truncate texts to N tokens.")
@click.option("--quiet", "-q", is_flag=True, help="No summary on stderr.")
@device_options
def command(texts, model, jsonl, npy, batch_size, threads, pooling, no_normalize, max_tokens, quiet,
            device, gpu_layers, cpu_math) -> None:
    """Embed TEXT arguments (or --jsonl input) with an embedding model."""
    from embedkit.catalog import resolve_model
    from embedkit.embed import Embedder
    from embedkit.kernels import set_num_threads

    items = list(texts)
    if jsonl is not None:
        items += _read_jsonl(jsonl)
    if not items:
        raise InputError("no texts: give TEXT arguments or --jsonl FILE")
    if npy is not None and not Path(npy).parent.is_dir():  # before the work, not after it
        raise InputError(f"--npy {npy}: {str(Path(npy).parent)!r} is not an existing folder")
    if threads is not None:
        set_num_threads(threads)
    path = resolve_model(model, kind="embed")
    placement = placement_from_options(device, gpu_layers, input_on_gpu=True, cpu_math=cpu_math)
    with Embedder(path, pooling=pooling, normalize=not no_normalize, max_tokens=max_tokens,
                  placement=placement) as emb:
        vectors = emb.embed(items, batch_size=batch_size)
        stats = emb.stats
    if npy is not None:
        try:
            np.save(npy, vectors)
        except OSError as e:
            raise InputError(f"--npy {npy}: cannot write ({e.strerror})") from e
    else:
        for v in vectors:
            click.echo(json.dumps(v.tolist()))
    if not quiet:
        note = f", {stats.truncated} truncated to {emb.max_tokens} tokens" if stats.truncated else ""
        click.echo(f"embedded {stats.texts} texts ({stats.tokens} tokens, dim {emb.dim}, "
                   f"pooling {emb.pooling}{', normalized' if emb.normalize else ''}){note}", err=True)
