"""`embedkit tokenize`: text to token ids with a model's own tokenizer."""

from __future__ import annotations

import json
import sys

import click

from embedkit.catalog import resolve_model
from embedkit.errors import InputError
from embedkit.gguf import GGUFFile
from embedkit.tokenizer import Tokenizer, load_tokenizer


@click.command()
@click.argument("text", required=False)
@click.option("-m", "--model", default=None,
              help="GGUF path or known model name (default: the default generation model).")
@click.option("--no-bos", is_flag=True, help="Do not add BOS/EOS (or CLS/SEP) even if the model asks for them.")
@click.option("--parse-special", is_flag=True, help="Recognise control tokens written in the text, e.g. <|im_start|>.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with ids and pieces.")
@click.option("--pieces", is_flag=True, help="Print one token per line: id and the text it stands for.")
@click.option("--jsonl", "jsonl", type=click.File("r", encoding="utf-8"), default=None,
              help="Batch mode: one JSON string per line in FILE ('-' for stdin), one JSON array of ids per line out.")
def command(text: str | None, model: str | None, no_bos: bool, parse_special: bool, as_json: bool,
            pieces: bool, jsonl) -> None:
    """Turn TEXT (or standard input) into the token ids of MODEL."""
    path = resolve_model(model)
    with GGUFFile(path) as f:
        tok = load_tokenizer(f)
    if as_json and pieces:
        raise InputError("give either --json or --pieces, not both")
    if jsonl is not None:
        if text is not None:
            raise InputError("give either TEXT or --jsonl, not both")
        if as_json or pieces:
            raise InputError("--jsonl prints one JSON array of ids per line: drop --json/--pieces")
        _batch(tok, jsonl, add_special=not no_bos, parse_special=parse_special)
        return
    if text is None:
        text = sys.stdin.read()
    ids = tok.encode(text, add_special=not no_bos, parse_special=parse_special)
    if as_json:
        out = {"model": str(path), "n_tokens": len(ids), "ids": ids,
               "pieces": [tok.token_to_piece(i).decode("utf-8", "replace") for i in ids]}
        click.echo(json.dumps(out, ensure_ascii=False))
    elif pieces:
        for i in ids:
            click.echo(f"{i:>8}  {_show(tok.token_to_piece(i))}")
    else:
        click.echo(" ".join(map(str, ids)))


def _show(piece: bytes) -> str:
    """A piece for humans: its text quoted, or its bytes where it is part of a character."""
    try:
        return repr(piece.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(piece)


def _batch(tok: Tokenizer, lines, add_special: bool, parse_special: bool) -> None:
    name = getattr(lines, "name", "-")
    for n, line in _numbered_lines(lines, name):
        if not line.strip():
            continue
        try:
            text = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{name}: line {n} is not JSON ({e.msg}); expected one JSON string per line") from None
        if not isinstance(text, str):
            raise InputError(f"{name}: line {n} holds a {type(text).__name__}; expected a JSON string")
        click.echo(json.dumps(tok.encode(text, add_special=add_special, parse_special=parse_special)))


def _numbered_lines(lines, name: str):
    """(line number, line) of a text file opened as UTF-8; an InputError naming the file if it is not UTF-8."""
    try:
        yield from enumerate(lines, 1)
    except UnicodeDecodeError:
        raise InputError(f"{name}: not UTF-8 text; expected one JSON string per line") from None
