"""`embedkit info MODEL`: what a GGUF file holds."""

from __future__ import annotations

import json

import click

from embedkit.catalog import resolve_model
from embedkit.gguf import GGUFFile
from embedkit.gguf.summary import describe, tensor_table


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


@click.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--tensors", is_flag=True, help="Also list every tensor.")
def command(model: str, as_json: bool, tensors: bool) -> None:
    """Show what the GGUF model MODEL (a path or a known name) holds."""
    with GGUFFile(resolve_model(model)) as f:
        info = describe(f)
        if tensors:
            info["tensor_list"] = tensor_table(f)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    rows = [
        ("file", info["path"]),
        ("architecture", info["architecture"]),
        ("name", info["name"]),
        ("size label", info["size_label"]),
        ("parameters", _params(info["parameters"])),
        ("file type", info["file_type"]),
        ("context length", info["context_length"]),
        ("embedding length", info["embedding_length"]),
        ("layers", info["layers"]),
        ("heads / kv heads", f"{info['heads']} / {info['kv_heads']}"),
        ("vocab size", info["vocab_size"]),
        ("tokenizer", info["tokenizer_model"] + (f" (pre {info['tokenizer_pre']})" if info["tokenizer_pre"] else "")
         if info["tokenizer_model"] else None),
        ("pooling", info["pooling"]),
        ("chat template", "yes" if info["chat_template"] else "no"),
        ("license", f"{info['license'] or '-'}: {info['license_status']}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {'-' if value is None else value}")
    click.echo("\nquantization mix:")
    click.echo(f"  {'type':<8} {'tensors':>7} {'bytes':>12}")
    for m in info["quantization_mix"]:
        click.echo(f"  {m['type']:<8} {m['tensors']:>7} {_size(m['bytes']):>12}")
    if tensors:
        click.echo("\ntensors:")
        for t in info["tensor_list"]:
            shape = "x".join(str(d) for d in t["shape"])
            click.echo(f"  {t['name']:<40} {t['type']:<6} {shape:<16} {_size(t['bytes']):>10}")
