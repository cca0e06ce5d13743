"""What a server is started with: models, address, key, slots and the request limits."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from embedkit.errors import InputError

# OpenAI's limit on inputs per embeddings request.
MAX_EMBEDDING_INPUTS = 2048
# Documents per rerank request (Cohere's recommended maximum).
MAX_RERANK_DOCUMENTS = 1000
MAX_BODY_BYTES = 16 * 1024 * 1024
# The embeddings collector runs what is queued when it is free, waiting this long after the first request for
# others (0: no wait; under load the requests that came during a forward form the next batch), and closes a
# batch at this many tokens.
BATCH_WINDOW_MS = 0.0
BATCH_TOKENS = 8192


@dataclass
class ServerConfig:
    """Settings of one `embedkit serve` process."""

    gen_model: str | None = None  # known name or GGUF path; None: no generation
    embed_model: str | None = "all-minilm-l6-v2"  # None: no embeddings (and no search)
    rerank_model: str | None = None  # a cross-encoder (known name or GGUF path); None: no /v1/rerank
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    no_auth: bool = False
    parallel: int = 1
    max_queue: int = 64
    device: str = "auto"
    gpu_layers: int | None = None
    cpu_math: str | None = None  # decoders' CPU arithmetic (--cpu-math); None: EMBEDKIT_CPU_MATH or float32
    # the generation model over several GPUs (--split-mode, --tensor-split, --main-gpu; backend/split.py)
    split_mode: str | None = None
    tensor_split: str | None = None
    main_gpu: int | None = None
    ctx_size: int | None = None  # per generation slot
    threads: int | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    max_embedding_inputs: int = MAX_EMBEDDING_INPUTS
    max_rerank_documents: int = MAX_RERANK_DOCUMENTS
    batch_window_ms: float = BATCH_WINDOW_MS
    batch_tokens: int = BATCH_TOKENS

    def check(self) -> None:
        """InputError for settings that cannot be served (before anything loads)."""
        if self.gen_model is None and self.embed_model is None and self.rerank_model is None:
            raise InputError("nothing to serve: give -m GEN_MODEL, --embed-model MODEL and/or --rerank-model MODEL")
        if not 1 <= self.port <= 65535:
            raise InputError(f"--port {self.port}: expected 1..65535")
        if self.parallel < 1:
            raise InputError(f"--parallel {self.parallel}: expected at least 1")
        if self.max_queue < 0:
            raise InputError(f"--max-queue {self.max_queue}: expected 0 or more")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("--api-key is empty; give a secret, or leave the option out")
        if not is_loopback(self.host) and self.api_key is None and not self.no_auth:
            raise InputError(
                f"--host {self.host} is reachable from other machines and no --api-key was given; "
                "set --api-key KEY (or EMBEDKIT_API_KEY), or pass --no-auth to serve without one on purpose"
            )


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)
