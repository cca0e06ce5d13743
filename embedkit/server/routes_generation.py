"""POST /v1/completions and /v1/chat/completions, as OpenAI's (streamed as server-sent events when asked), with
llama-server's `timings`. The routes talk to the model only through `GenerationScheduler.submit`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from embedkit.errors import EmbedkitError
from embedkit.server.errors import APIError, from_embedkit
from embedkit.server.generation_requests import ChatRequest, CompletionRequest
from embedkit.server.logprobs import chat_logprobs, completion_logprobs
from embedkit.server.models import GenerationModel
from embedkit.server.scheduler import GenerationEvent, GenerationHandle, GenerationRequest, QueueFull
from embedkit.server.state import ServerState, State

router = APIRouter()

POLL_SECONDS = 0.25  # how often a non-streamed request checks that its client is still there
CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection before the answer"
# Prompts up to this many characters are tokenized (and chat templates rendered) on the event loop: a hand-off to
# a worker thread and back costs more than the work, and on a busy machine each hop waits for a core.
INLINE_TOKENIZE_CHARS = 4096


def _budget(model: GenerationModel, prompt_ids: list[int], max_tokens: int | None, param: str) -> int:
    """Tokens to generate: max_tokens capped by the room the context leaves after the prompt."""
    n_ctx = model.scheduler.n_ctx
    if len(prompt_ids) >= n_ctx:
        raise APIError(400, f"the prompt has {len(prompt_ids)} tokens, but the model's context holds {n_ctx} "
                            "tokens (prompt plus completion); shorten it", "context_length_exceeded", param)
    room = n_ctx - len(prompt_ids)
    return room if max_tokens is None else min(max_tokens, room)


def _submit(state: ServerState, model: GenerationModel, req: GenerationRequest) -> GenerationHandle:
    try:
        return model.scheduler.submit(req)
    except QueueFull:
        cfg = state.config
        raise APIError(429, f"all {cfg.parallel} generation slots are busy and {cfg.max_queue} requests are "
                            "waiting (--max-queue); retry later", "queue_full",
                       headers={"Retry-After": "1"}) from None


def _raise_event_error(ev: GenerationEvent) -> None:
    if ev.error is not None:
        raise ev.error


def _usage(ev: GenerationEvent) -> dict[str, int]:
    return {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens,
            "total_tokens": ev.prompt_tokens + ev.completion_tokens}


async def _collect(handle: GenerationHandle, request: Request) -> tuple[str, list, GenerationEvent] | None:
    """Text, token log-probabilities and the final event of a generation; None if the client went away (the
    generation is then cancelled)."""
    parts, records = [], []
    checked = time.monotonic()
    try:
        while True:
            ev = await handle.next_event(POLL_SECONDS)
            # look for a gone client between events too: a busy engine may never leave a quiet interval
            if ev is None or time.monotonic() - checked >= POLL_SECONDS:
                checked = time.monotonic()
                if await request.is_disconnected():
                    return None
            if ev is None:
                continue
            _raise_event_error(ev)
            parts.append(ev.text)
            records.extend(ev.logprobs)
            if ev.done:
                return "".join(parts), records, ev
    finally:
        handle.cancel()  # a no-op once the generation has ended


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _stream(handle: GenerationHandle, chunk: Callable[[GenerationEvent], dict | None],
                  first: dict | None, usage_chunk: Callable[[GenerationEvent], dict] | None) -> AsyncIterator[str]:
    """Server-sent events: `first`, one chunk per event, the usage chunk if asked, then `[DONE]`. Leaving early
    (the client disconnected: the task is cancelled) cancels the generation."""
    try:
        if first is not None:
            yield _sse(first)
        async for ev in handle.events():
            if ev.error is not None:
                err = ev.error
                api = from_embedkit(err) if isinstance(err, EmbedkitError) else \
                    APIError(500, f"internal error ({type(err).__name__})", "internal_error")
                yield _sse(api.body())
                break
            body = chunk(ev)
            if body is not None:
                yield _sse(body)
            if ev.done and usage_chunk is not None:
                yield _sse(usage_chunk(ev))
        yield "data: [DONE]\n\n"
    finally:
        handle.cancel()  # a no-op once the generation has ended


def _stream_response(gen: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- /v1/completions -----------------------------------------------------------------------------
@router.post("/v1/completions", summary="Create a text completion (OpenAI, legacy)")
async def create_completion(req: CompletionRequest, request: Request,
                            state: State) -> Response:
    """Continue `prompt`; `stream: true` answers with server-sent events ending in `data: [DONE]`."""
    model = state.require_models().find(req.model, "generate")
    gen = model.generator
    item = req.prompt_item()
    if isinstance(item, str):
        prompt_ids = gen.tokenize(item) if len(item) <= INLINE_TOKENIZE_CHARS else \
            await run_in_threadpool(gen.tokenize, item)
        prompt_text = item
    else:
        prompt_ids = item
        prompt_text = await run_in_threadpool(gen.tokenizer.decode, item) if req.echo else ""
    if not prompt_ids:
        raise APIError(400, "the prompt has no tokens", "invalid_value", "prompt")
    if req.suffix:
        raise APIError(400, "suffix (fill-in-the-middle) is not supported", "unsupported_parameter", "suffix")
    greq = GenerationRequest(prompt_ids, _budget(model, prompt_ids, req.max_tokens, "prompt"),
                             req.sampler_params(), req.stops(), req.logprobs, req.ignore_eos, req.cache_prompt)
    try:
        greq.sampler.check()
    except EmbedkitError as e:
        raise from_embedkit(e) from None
    handle = _submit(state, model, greq)
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    echo = prompt_text if req.echo else ""

    def envelope(choices: list, **extra: Any) -> dict:
        return {"id": cid, "object": "text_completion", "created": created, "model": model.name,
                "system_fingerprint": None, "choices": choices, **extra}

    if not req.stream:
        got = await _collect(handle, request)
        if got is None:
            return Response(status_code=CLIENT_CLOSED)
        text, records, end = got
        lp = completion_logprobs(records, len(echo)) if req.logprobs is not None else None
        return JSONResponse(envelope([{"index": 0, "text": echo + text, "logprobs": lp,
                                       "finish_reason": end.finish_reason}],
                                     usage=_usage(end), timings=end.timings))

    offset = len(echo)

    def chunk(ev: GenerationEvent) -> dict | None:
        nonlocal offset
        lp = completion_logprobs(ev.logprobs, offset) if req.logprobs is not None else None
        offset += len(ev.text)
        if not ev.text and not ev.done and not ev.logprobs:
            return None
        extra = {"timings": ev.timings} if ev.done else {}
        if req.include_usage:
            extra["usage"] = None
        return envelope([{"index": 0, "text": ev.text, "logprobs": lp,
                          "finish_reason": ev.finish_reason if ev.done else None}], **extra)

    first = envelope([{"index": 0, "text": echo, "logprobs": None, "finish_reason": None}]) if echo else None
    usage = (lambda ev: envelope([], usage=_usage(ev))) if req.include_usage else None
    return _stream_response(_stream(handle, chunk, first, usage))


# -- /v1/chat/completions ------------------------------------------------------------------------
@router.post("/v1/chat/completions", summary="Create a chat completion (OpenAI)")
async def create_chat_completion(req: ChatRequest, request: Request,
                                 state: State) -> Response:
    """Answer `messages` through the model's chat template (sandboxed); `stream: true` answers with server-sent
    events ending in `data: [DONE]`."""
    model = state.require_models().find(req.model, "generate")
    gen = model.generator
    top_n = req.top_n()
    messages = req.template_messages()
    n_chars = sum(len(m["content"]) for m in messages)
    prompt_ids = gen.chat_prompt(messages) if n_chars <= INLINE_TOKENIZE_CHARS else \
        await run_in_threadpool(gen.chat_prompt, messages)
    stops = [*req.stops(), *gen.chat_template.stops]
    greq = GenerationRequest(prompt_ids, _budget(model, prompt_ids, req.budget(), "messages"),
                             req.sampler_params(), stops, top_n, req.ignore_eos, req.cache_prompt)
    try:
        greq.sampler.check()
    except EmbedkitError as e:
        raise from_embedkit(e) from None
    handle = _submit(state, model, greq)
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def envelope(obj: str, choices: list, **extra: Any) -> dict:
        return {"id": cid, "object": obj, "created": created, "model": model.name, "system_fingerprint": None,
                "choices": choices, **extra}

    if not req.stream:
        got = await _collect(handle, request)
        if got is None:
            return Response(status_code=CLIENT_CLOSED)
        text, records, end = got
        return JSONResponse(envelope("chat.completion", [{
            "index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": chat_logprobs(records) if top_n is not None else None,
            "finish_reason": end.finish_reason}], usage=_usage(end), timings=end.timings))

    def chunk(ev: GenerationEvent) -> dict | None:
        if not ev.text and not ev.done and not ev.logprobs:
            return None
        delta = {"content": ev.text} if ev.text else {}
        extra = {"timings": ev.timings} if ev.done else {}
        if req.include_usage:
            extra["usage"] = None
        return envelope("chat.completion.chunk", [{
            "index": 0, "delta": delta, "logprobs": chat_logprobs(ev.logprobs) if top_n is not None else None,
            "finish_reason": ev.finish_reason if ev.done else None}], **extra)

    first = envelope("chat.completion.chunk", [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                "logprobs": None, "finish_reason": None}],
                     **({"usage": None} if req.include_usage else {}))
    usage = (lambda ev: envelope("chat.completion.chunk", [], usage=_usage(ev))) if req.include_usage else None
    return _stream_response(_stream(handle, chunk, first, usage))
