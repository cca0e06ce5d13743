"""The `embedkit` click group: commands load lazily, and every EmbedkitError becomes one line."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings

import click

from embedkit import __version__
from embedkit.errors import EmbedkitError

# command name -> (module under embedkit.cli, attribute, short help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "info": ("info", "command", "Show what a GGUF model holds."),
    "tokenize": ("tokenize", "command", "Turn text into token ids."),
    "embed": ("embed", "command", "Embed texts into vectors."),
    "convert": ("convert", "command", "Convert a Hugging Face model to GGUF."),
    "models": ("models", "command", "List known and installed models."),
    "index": ("index", "command", "Index files into a collection."),
    "search": ("search", "command", "Search a collection."),
    "similar": ("similar", "command", "Find documents similar to a document or chunk."),
    "eval": ("evaluate", "command", "Measure search quality on a BEIR-format test set."),
    "recommend": ("recommend", "command", "Find documents like some examples and unlike others."),
    "rerank": ("rerank", "command", "Score candidate texts for a query with a cross-encoder."),
    "db": ("db", "group", "Manage the database."),
    "generate": ("generate", "command", "Generate text from a prompt."),
    "chat": ("chat", "command", "Chat with a model interactively."),
    "perplexity": ("perplexity", "command", "Perplexity of a model over a text (as llama-perplexity)."),
    "serve": ("serve", "command", "Serve OpenAI-compatible embeddings and generation, and search, over HTTP."),
}


class _StdoutClosed(Exception):
    """The reader of stdout went away (e.g. `| head`); carried past click, which would exit 1 on it."""


class _Interrupted(Exception):
    """Ctrl-C in a command; carried past click, which would print a blank line and 'Aborted!'."""


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used (keeps `embedkit --help` fast)."""

    def invoke(self, ctx: click.Context):
        # click's own handlers (standalone or not) turn a broken pipe into a silent exit 1 and Ctrl-C into
        # Abort; main() gives both their conventional outcome instead.
        try:
            return super().invoke(ctx)
        except BrokenPipeError as e:
            raise _StdoutClosed() from e
        except KeyboardInterrupt as e:
            raise _Interrupted() from e

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (mod, _, _) in COMMANDS.items() if _module_exists(mod)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not _module_exists(COMMANDS[name][0]):
            return None
        mod, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"embedkit.cli.{mod}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(mod: str) -> bool:
    return importlib.util.find_spec(f"embedkit.cli.{mod}") is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="embedkit")
def cli() -> None:
    """embedkit: run GGUF models with a Numba engine and search text with PostgreSQL+pgvector."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `embedkit` console script."""
    if not sys.warnoptions and not os.environ.get("EMBEDKIT_DEBUG"):
        # numpy's floating-point warnings inside the kernels (NaN weights of a damaged file, say) are no news to
        # a command-line user: what they lead to is checked and reported as one error line
        warnings.filterwarnings("ignore", r"(invalid value|overflow|divide by zero) encountered", RuntimeWarning,
                                r"embedkit\.")
    try:
        cli.main(args=argv, prog_name="embedkit", standalone_mode=False)
    except EmbedkitError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, _Interrupted):
        click.echo("interrupted", err=True)
        sys.exit(130)
    except (BrokenPipeError, _StdoutClosed):
        # stdout closed early (e.g. `| head`): not an error for a command-line tool
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        if os.environ.get("EMBEDKIT_DEBUG"):
            raise
        click.echo(f"error: internal error ({type(e).__name__}: {e}); set EMBEDKIT_DEBUG=1 for details", err=True)
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    main()
