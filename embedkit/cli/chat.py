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
    from embedkit.generate.conversation import Conversation

    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    gen = load_generator(kw)
    sampler = Sampler(sampler_params(kw))
    stops = gen.chat_template.stops
    convo = Conversation(system)
    # room kept for a reply when old turns must be dropped to fit the context
    reserve = min(kw["n_predict"] if kw["n_predict"] > 0 else 512, gen.n_ctx // 2)
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
        convo.add("user", line)
        run = None
        try:
            dropped = convo.dropped
            ids = convo.prompt_ids(gen, reserve)
            if convo.dropped > dropped:
                click.echo(f"(context full: forgot the {convo.dropped - dropped} oldest messages)", err=True)
            run = gen.start(ids, n_predict=kw["n_predict"], sampler=sampler, stop=stops)
            for piece in run:
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            out.write(" [stopped]")
        except GenerationError as e:
            click.echo(f"error: {e}", err=True)
            if run is None:
                convo.turns.pop()  # the message did not fit: forget it
                continue
        out.write("\n")
        out.flush()
        convo.add("assistant", run.text if run else "")
