"""`embedkit chat`: an interactive conversation. Ctrl-C stops a reply, Ctrl-D leaves."""

from __future__ import annotations

import sys

import click

from embedkit.cli.generate import load_generator, sampler_params, sampling_options
from embedkit.errors import GenerationError


def _read_line(prompt: str) -> str | None:
    """One line from the user; None at end of input (Ctrl-D)."""
    try:
        return input(prompt)
    except EOFError:
        return None


@click.command()
@sampling_options(n_predict=-1)
@click.option("--system", default=None, help="System message that opens the conversation.")
def command(system, **kw) -> None:
    """Chat with a model: type a message at the `> ` prompt; Ctrl-C stops a reply, Ctrl-D exits."""
    from embedkit.generate import Sampler

    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    gen = load_generator(kw)
    sampler = Sampler(sampler_params(kw))
    stops = gen.chat_template.stops
    messages = [{"role": "system", "content": system}] if system else []
    out = sys.stdout
    model_name = gen.file.path.name if gen.file is not None else "model"
    click.echo(f"chat with {model_name} (template: {gen.chat_template.name}); "
               "Ctrl-C stops a reply, Ctrl-D exits", err=True)
    while True:
        try:
            line = _read_line("> ")
        except KeyboardInterrupt:
            out.write("\n")
            continue
        if line is None:
            out.write("\n")
            break
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        run = None
        try:
            run = gen.start(gen.chat_prompt(messages), n_predict=kw["n_predict"], sampler=sampler, stop=stops)
            for piece in run:
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            out.write(" [stopped]")
        except GenerationError as e:
            click.echo(f"\nerror: {e}", err=True)
            if run is None or not run.text:
                messages.pop()  # the turn did not fit: forget it
                out.write("\n")
                continue
        out.write("\n")
        out.flush()
        messages.append({"role": "assistant", "content": run.text if run else ""})
