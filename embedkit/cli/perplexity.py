"""`embedkit perplexity`: perplexity of a model over a text file, as llama.cpp's llama-perplexity computes it."""

from __future__ import annotations

import json

import click

from embedkit.cli.device_options import device_options, placement_from_options
from embedkit.errors import InputError


def _read_text(file: str) -> str:
    try:
        with open(file, encoding="utf-8") as fh:
            return fh.read()
    except OSError as e:
        raise InputError(f"-f {file}: cannot read ({e.strerror})") from e
    except UnicodeDecodeError:
        raise InputError(f"-f {file}: expected UTF-8 text") from None


def _print_kl(kl: dict) -> None:
    click.echo(f"Mean PPL(base)   : {kl['ppl_base']:10.6f}")
    click.echo(f"Mean    KLD      : {kl['kld_mean']:10.6f} ± {kl['kld_mean_unc']:10.6f}")
    click.echo(f"Maximum KLD      : {kl['kld_max']:10.6f}")
    for p in ("99.9", "99", "95", "90"):
        click.echo(f"{p + '%':<6}   KLD    : {kl['kld_p' + p]:10.6f}")
    click.echo(f"Median  KLD      : {kl['kld_median']:10.6f}")
    for p in ("10", "5", "1", "0.1"):
        click.echo(f"{p + '%':<6}   KLD    : {kl['kld_p' + p]:10.6f}")
    click.echo(f"Minimum KLD      : {kl['kld_min']:10.6f}")
    click.echo(f"RMS Δp           : {100 * kl['p_diff_rms']:6.3f} %")
    click.echo(f"Same top p       : {100 * kl['same_top']:6.3f} ± {100 * kl['same_top_unc']:5.3f} %")


@click.command()
@click.option("-m", "--model", default=None, help="GGUF path or known model name (default: gemma3-270m).")
@click.option("-f", "--file", "file", default=None, type=click.Path(dir_okay=False), help="The text to score (UTF-8).")
@click.option("-c", "--ctx-size", "n_ctx", default=512, show_default=True, type=int,
              help="Tokens per chunk; each chunk is scored on its second half.")
@click.option("-b", "--batch-size", "n_batch", default=2048, show_default=True, type=int,
              help="Tokens per forward pass (at most one chunk).")
@click.option("--chunks", "n_chunks", default=None, type=click.IntRange(min=1),
              help="Score only the first N chunks (default: all).")
@click.option("-t", "--threads", default=None, type=click.IntRange(min=1),
              help="CPU threads (default: EMBEDKIT_THREADS or all).")
@click.option("--save-logits", default=None, type=click.Path(dir_okay=False),
              help="Save the scored log-probabilities to FILE (llama-perplexity's --kl-divergence-base format).")
@click.option("--kl-base", default=None, type=click.Path(dir_okay=False),
              help="Compare with a saved base (its text and -c): KL divergence, same top-1 (as --kl-divergence).")
@click.option("--json", "as_json", is_flag=True, help='Print {"ppl", "n_chunks", "tokens_scored"} (and "kl").')
@click.option("-q", "--quiet", is_flag=True, help="No per-chunk progress on stderr.")
@device_options
def command(model, file, n_ctx, n_batch, n_chunks, threads, save_logits, kl_base, as_json, quiet,
            device, gpu_layers, cpu_math) -> None:
    """Perplexity of MODEL over a text (-f FILE), in chunks of -c tokens as llama-perplexity computes it."""
    from embedkit.catalog import resolve_model
    from embedkit.evaluate import evaluate_perplexity
    from embedkit.kernels import set_num_threads

    if file is None and kl_base is None:
        raise InputError("no text: give -f FILE (or --kl-base FILE, which holds its own tokens)")
    if file is not None and kl_base is not None:
        raise InputError("--kl-base FILE holds its own tokens and chunk size: drop -f")
    text = _read_text(file) if file is not None else None
    if threads is not None:
        set_num_threads(threads)
    path = resolve_model(model, kind="generate")
    placement = placement_from_options(device, gpu_layers, cpu_math=cpu_math)

    def progress(chunk: int, ppl: float) -> None:
        click.echo(f"[{chunk}]{ppl:.4f},", err=True, nl=False)

    res = evaluate_perplexity(str(path), text, n_ctx=n_ctx, n_batch=n_batch, n_chunks=n_chunks,
                              save_logits=save_logits, kl_base=kl_base, placement=placement,
                              progress=None if (quiet or as_json) else progress)
    if not (quiet or as_json):
        click.echo("", err=True)
    if as_json:
        click.echo(json.dumps(res.as_dict()))
        return
    click.echo(f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_unc:.5f} "
               f"({res.n_chunks} chunks, {res.tokens_scored} tokens scored)")
    if res.kl is not None:
        _print_kl(res.kl)
