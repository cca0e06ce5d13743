"""`embedkit generate`: continue a prompt; stdout carries only the generated text, streamed."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from embedkit.cli.device_options import device_options, placement_from_options, split_options
from embedkit.errors import InputError


def sampling_options(n_predict: int = 128) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Model, context and sampling options shared by `generate` and `chat` (llama.cpp's names)."""
    options = [
        click.option("-m", "--model", default=None, help="GGUF path or known model name (default: gemma3-270m)."),
        click.option("-n", "--n-predict", default=n_predict, show_default=True, type=click.IntRange(min=-1),
                     help="Tokens to generate (-1: until end of generation or a full context)."),
        click.option("--temp", default=0.8, show_default=True, type=float,
                     help="Temperature; 0 (or below, as llama.cpp) = greedy."),
        click.option("--top-k", default=40, show_default=True, type=int,
                     help="Top-k (0 or below, as llama.cpp: off)."),
        click.option("--top-p", default=0.95, show_default=True, type=float,
                     help="Top-p (1.0 or above, as llama.cpp: off)."),
        click.option("--min-p", default=0.05, show_default=True, type=float, help="Min-p (0.0 = off)."),
        click.option("--repeat-penalty", default=1.0, show_default=True, type=float,
                     help="Penalise repeated tokens (1.0 = off)."),
        click.option("--repeat-last-n", default=64, show_default=True, type=click.IntRange(min=-1),
                     help="Tokens of history the penalties look at (0 = off, -1 = all)."),
        click.option("--presence-penalty", default=0.0, show_default=True, type=float),
        click.option("--frequency-penalty", default=0.0, show_default=True, type=float),
        click.option("--seed", default=None, type=click.IntRange(-1, 2**64 - 1),
                     help="Random seed (default or -1: random)."),
        click.option("-t", "--threads", default=None, type=click.IntRange(min=1),
                     help="CPU threads (default: EMBEDKIT_THREADS or all)."),
        click.option("-c", "--ctx-size", default=None, type=click.IntRange(1, 2**31 - 1),
                     help="Context size in tokens (default: the model's, at most 4096)."),
        click.option("-b", "--batch-size", default=512, show_default=True, type=click.IntRange(min=1),
                     help="Prompt tokens processed per batch."),
    ]

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(options):
            f = opt(f)
        return device_options(f)

    return decorate


def sampler_params(kw: dict[str, Any]) -> Any:
    """SamplerParams from the parsed options."""
    from embedkit.generate import SamplerParams

    return SamplerParams(
        temp=kw["temp"], top_k=kw["top_k"], top_p=kw["top_p"], min_p=kw["min_p"],
        repeat_penalty=kw["repeat_penalty"], repeat_last_n=kw["repeat_last_n"],
        presence_penalty=kw["presence_penalty"], frequency_penalty=kw["frequency_penalty"], seed=kw["seed"],
    )


def load_generator(kw: dict[str, Any]) -> Any:
    """Resolve the model (path or known name) and load it with the context/batch/thread options."""
    from embedkit.catalog import resolve_model
    from embedkit.generate import Generator

    path = resolve_model(kw["model"], kind="generate")
    placement = placement_from_options(kw["device"], kw["gpu_layers"], cpu_math=kw["cpu_math"], **_split(kw))
    gen = Generator(path, n_ctx=kw["ctx_size"], n_batch=kw["batch_size"], n_threads=kw["threads"],
                    placement=placement)
    trained = int(getattr(gen.model.params, "n_ctx_train", 0) or 0)
    if trained and gen.n_ctx > trained:  # as llama.cpp does: allowed, but past the trained length quality drops
        click.echo(f"warning: the context of {gen.n_ctx} tokens (-c) is above the {trained} the model was trained "
                   "with; output past that length may degrade", err=True)
    return gen


def _split(kw: dict[str, Any]) -> dict[str, Any]:
    """The multi-GPU options (`generate` has them, `chat` not yet)."""
    return {k: kw.get(k) for k in ("split_mode", "tensor_split", "main_gpu")}


def _read_prompt(prompt: str | None, file: str | None) -> str:
    if prompt is not None and file is not None:
        raise InputError("give the prompt with -p or -f, not both")
    if file is not None:
        try:
            with open(file, encoding="utf-8") as fh:
                return fh.read()
        except OSError as e:
            raise InputError(f"{file}: cannot read the prompt ({e.strerror})") from e
        except UnicodeDecodeError:
            raise InputError(f"{file}: expected UTF-8 text") from None
    if prompt is None:
        raise InputError("no prompt: give -p PROMPT or -f FILE")
    return prompt


@click.command()
@click.option("-p", "--prompt", default=None, help="The prompt (raw text; BOS added as the model asks).")
@click.option("-f", "--file", "file", default=None, type=click.Path(dir_okay=False), help="Read the prompt from FILE.")
@sampling_options()
@click.option("--stop", multiple=True, help="Stop when this string is generated (repeatable).")
@click.option("--echo", is_flag=True, help="Print the prompt before the generated text.")
@click.option("--ignore-eos", is_flag=True, help="Keep generating past end-of-generation tokens.")
@click.option("--chat", is_flag=True, help="Wrap the prompt as a user message in the model's chat template.")
@click.option("--system", default=None, help="System message (with --chat).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with text, tokens and timings.")
@click.option("-q", "--quiet", is_flag=True, help="No timing summary on stderr.")
@click.option("--batch", "batch_file", default=None,
              help="JSON lines of prompts ('-': stdin), generated together; one JSON result a line to stdout.")
@click.option("--parallel", default=4, show_default=True, type=click.IntRange(min=1),
              help="With --batch: sequences generated at once (-c is split between them).")
@split_options
def command(prompt, file, stop, echo, ignore_eos, chat, system, as_json, quiet, batch_file, parallel, **kw) -> None:
    """Generate text that continues a prompt; the text streams to stdout, timings go to stderr."""
    if system is not None and not chat:
        raise InputError("--system applies to the chat template: add --chat (or drop --system)")
    if batch_file is not None:
        _batch(batch_file, parallel, prompt, file, stop, echo, ignore_eos, chat, system, quiet, kw)
        return
    text = _read_prompt(prompt, file)
    params = sampler_params(kw)
    gen = load_generator(kw)
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        ids = gen.chat_prompt(messages)
        text = gen.chat_template.render(messages)
        stop = (*stop, *gen.chat_template.stops)
    else:
        ids = gen.tokenize(text)
    run = gen.start(ids, n_predict=kw["n_predict"], sampler=params, stop=stop, ignore_eos=ignore_eos)
    out = sys.stdout
    if as_json:
        for _ in run:
            pass
        res = run.result
        body = {"text": (text + res.text) if echo else res.text, "tokens": res.tokens,
                "timings": res.timings.as_dict()}
        out.write(json.dumps(body, ensure_ascii=False) + "\n")
        out.flush()
        return
    if echo:
        out.write(text)
        out.flush()
    for piece in run:
        out.write(piece)
        out.flush()
    if run.result.stop_reason == "context":
        click.echo(f"\nnote: stopped: the context ({gen.n_ctx} tokens, -c) is full", err=True)
    if not quiet:
        if sys.stderr.isatty():
            click.echo("", err=True)
        click.echo(run.result.timings.summary(), err=True)


def _batch(batch_file, parallel, prompt, file, stop, echo, ignore_eos, chat, system, quiet, kw) -> None:
    """--batch: every line of the file through one BatchGenerator (see cli/generate_batch.py)."""
    from embedkit.catalog import resolve_model
    from embedkit.cli.generate_batch import BatchLine, read_lines, run_batch
    from embedkit.generate import BatchGenerator

    if prompt is not None or file is not None:
        raise InputError("--batch reads the prompts from its file: drop -p/-f")
    if echo:
        raise InputError("--echo does not apply to --batch")
    defaults = BatchLine(0, None, "", kw["n_predict"], sampler_params(kw), list(stop), ignore_eos)
    lines = read_lines(batch_file, defaults)
    path = resolve_model(kw["model"], kind="generate")
    placement = placement_from_options(kw["device"], kw["gpu_layers"], **_split(kw))
    gen = BatchGenerator(path, n_ctx=kw["ctx_size"], n_parallel=parallel, n_batch=kw["batch_size"],
                         n_threads=kw["threads"], placement=placement, background=False)
    run_batch(gen, lines, chat, system, sys.stdout, quiet)
