"""`embedkit convert HF_DIR OUT.gguf`: a Hugging Face model folder to GGUF (llama.cpp names and keys)."""

from __future__ import annotations

import json

import click

from embedkit.convert import OUTTYPES


@click.command()
@click.argument("hf_dir", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--outtype", type=click.Choice(list(OUTTYPES)), default="f32", show_default=True,
              help="Type of the 2-D weights (norms, biases, position embeddings stay f32, as llama.cpp).")
@click.option("--query-prefix", default=None, metavar="TEXT",
              help="Text the model expects before queries (default: sentence-transformers' prompts.query).")
@click.option("--document-prefix", default=None, metavar="TEXT",
              help="Text the model expects before documents (default: prompts.document or prompts.passage).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object describing the result.")
def command(hf_dir: str, out: str, outtype: str, query_prefix: str | None, document_prefix: str | None,
            as_json: bool) -> None:
    """Convert the safetensors model in HF_DIR to the GGUF file OUT."""
    from embedkit.convert import convert_hf_to_gguf
    from embedkit.gguf import GGUFFile

    path = convert_hf_to_gguf(hf_dir, out, outtype, progress=None if as_json else lambda m: click.echo(m, err=True),
                              query_prefix=query_prefix, document_prefix=document_prefix)
    with GGUFFile(path) as f:
        summary = {"path": str(path), "architecture": f.architecture, "outtype": outtype,
                   "tensors": len(f.tensors), "bytes": path.stat().st_size}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"wrote {path} ({summary['architecture']}, {outtype}, {summary['tensors']} tensors, "
                   f"{summary['bytes'] / 2**20:.1f} MiB)")
