"""`embedkit serve`: an OpenAI-compatible HTTP API for embeddings and generation, and search over the store."""

from __future__ import annotations

import os

import click

from embedkit.cli.device_options import device_options, split_options


def _check_bindable(host: str, port: int) -> None:
    """One clear line (before any model loads) when the address cannot be listened on."""
    import socket

    from embedkit.errors import InputError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise InputError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise InputError(f"cannot listen on {host}:{port}: {e.strerror}") from None


@click.command()
@click.option("-m", "--model", "gen_model", default=None,
              help="Generation model (known name or GGUF path); none: no generation routes.")
@click.option("--embed-model", default="all-minilm-l6-v2", show_default=True,
              help="Embedding model (known name or GGUF path); 'none': no embeddings or search.")
@click.option("--rerank-model", default=None,
              help="Cross-encoder for /v1/rerank (known name or GGUF path, e.g. from `embedkit convert` of a "
                   "BertForSequenceClassification); none: no reranking.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--api-key", default=None, envvar="EMBEDKIT_API_KEY",
              help="Require 'Authorization: Bearer KEY' on every route but /health (env: EMBEDKIT_API_KEY).")
@click.option("--no-auth", is_flag=True, help="Allow a non-loopback --host without --api-key.")
@click.option("--parallel", "-np", default=1, show_default=True, type=click.IntRange(min=1),
              help="Generation slots: requests generating at once.")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(min=0),
              help="Generation requests that may wait for a slot; more get 429.")
@click.option("-c", "--ctx-size", default=None, type=click.IntRange(1, 2**31 - 1),
              help="Context per generation slot in tokens (default: the model's, at most 4096).")
@click.option("-t", "--threads", default=None, type=click.IntRange(min=1),
              help="CPU threads (default: EMBEDKIT_THREADS or all).")
@click.option("--max-body", default=16 * 1024 * 1024, show_default=True, type=click.IntRange(min=1024),
              help="Largest request body in bytes.")
@device_options
@split_options
def command(gen_model, embed_model, rerank_model, host, port, api_key, no_auth, parallel, max_queue, ctx_size, threads,
            max_body, device, gpu_layers, cpu_math, split_mode, tensor_split, main_gpu) -> None:
    """Serve /v1/embeddings, /v1/completions, /v1/chat/completions (OpenAI's API), /v1/rerank and /v1/search."""
    import uvicorn

    from embedkit.catalog import resolve_model
    from embedkit.server import ServerConfig, create_app

    config = ServerConfig(
        gen_model=gen_model, embed_model=None if embed_model.lower() == "none" else embed_model,
        rerank_model=rerank_model, host=host,
        port=port, api_key=api_key, no_auth=no_auth, parallel=parallel, max_queue=max_queue, device=device,
        gpu_layers=gpu_layers, cpu_math=cpu_math, ctx_size=ctx_size, threads=threads, max_body_bytes=max_body,
        split_mode=split_mode, tensor_split=tensor_split, main_gpu=main_gpu,
    )
    config.check()
    _check_bindable(host, port)
    # resolve (and fetch once) before listening, so a wrong name is one line and no server
    for name, kind in ((config.embed_model, "embed"), (config.gen_model, "generate")):
        if name is not None:
            resolve_model(name, kind=kind)
    if config.rerank_model is not None:  # and a file that is no cross-encoder is one line, before listening
        from embedkit.embed.reranker import check_cross_encoder
        from embedkit.gguf import GGUFFile

        path = resolve_model(config.rerank_model, kind="embed")
        with GGUFFile(path) as f:
            check_cross_encoder(f, path)
    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(config, on_load_failure=stop)
    uconfig = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                             timeout_graceful_shutdown=5, lifespan="on")
    server = uvicorn.Server(uconfig)
    click.echo(f"embedkit serve: listening on http://{host}:{port} (pid {os.getpid()}); models loading, "
               "GET /health answers 200 when ready", err=True)
    server.run()
    state = app.state.server
    if state.load_error is not None:
        from embedkit.errors import EmbedkitError

        raise EmbedkitError(f"the models failed to load: {state.load_error}")
    if not server.started:
        from embedkit.errors import InputError

        raise InputError(f"could not listen on {host}:{port} (in use, or not an address of this machine?)")
