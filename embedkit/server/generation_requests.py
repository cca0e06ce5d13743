"""Request bodies of /v1/completions and /v1/chat/completions (OpenAI's fields, llama-server's extensions), and
their translation into sampling settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from embedkit.generate.sampler import SamplerParams
from embedkit.server.errors import APIError
from embedkit.server.logprobs import MAX_TOP_LOGPROBS


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by both routes. Unset sampling fields take llama.cpp's defaults (as llama-server)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="A loaded generation model (default: the one loaded).")
    max_tokens: int | None = Field(None, ge=1, description="Tokens to generate at most; capped by the context.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="Only 1 is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = Field(None, description="Up to 4 stop strings.")
    seed: int | None = Field(None, ge=-1, lt=2**64)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    user: str | None = None
    # llama-server's extensions
    top_k: int | None = Field(None, description="llama.cpp: top-k (<= 0: off).")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="llama.cpp: min-p.")
    repeat_penalty: float | None = Field(None, gt=0.0, description="llama.cpp: repetition penalty.")
    ignore_eos: bool = Field(False, description="llama.cpp: keep generating past end-of-generation tokens.")
    cache_prompt: bool = Field(True, description="llama.cpp: start after the part of the prompt a slot's cache "
                                                 "already holds (false: process the whole prompt).")

    def stops(self) -> list[str]:
        """The stop strings as a list (at most 4, as OpenAI)."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, f"stop has {len(stops)} strings; at most 4 are allowed", "invalid_value", "stop")
        return [s for s in stops if s]

    def sampler_params(self) -> SamplerParams:
        """SamplerParams from the request (llama.cpp's defaults for what it leaves out)."""
        d = SamplerParams()
        return SamplerParams(
            temp=d.temp if self.temperature is None else self.temperature,
            top_k=d.top_k if self.top_k is None else self.top_k,
            top_p=d.top_p if self.top_p is None else self.top_p,
            min_p=d.min_p if self.min_p is None else self.min_p,
            repeat_penalty=d.repeat_penalty if self.repeat_penalty is None else self.repeat_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=self.seed,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingFields):
    """OpenAI's (legacy) text completion request."""

    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]] = Field(
        description="A string or a token-id array (a list of one is accepted too).")
    max_tokens: int | None = Field(16, ge=1, description="Tokens to generate at most (OpenAI's default 16); "
                                                         "capped by the context.")
    logprobs: int | None = Field(None, ge=0, le=5, description="Report this many alternatives per token.")
    echo: bool = False
    suffix: str | None = None

    def prompt_item(self) -> str | list[int]:
        """The one prompt, as text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return p
        if not p:
            raise APIError(400, "prompt is an empty list", "invalid_value", "prompt")
        if isinstance(p[0], int):
            return list(p)
        if len(p) != 1:
            raise APIError(400, f"prompt holds {len(p)} prompts; this server answers one per request",
                           "invalid_value", "prompt")
        return p[0]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatRequest(SamplingFields):
    """OpenAI's chat completion request."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="Same as max_tokens (newer name).")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def template_messages(self) -> list[dict[str, str]]:
        """Messages as the chat template takes them: role and text ('developer' is 'system')."""
        out = []
        for i, m in enumerate(self.messages):
            if isinstance(m.content, list):
                texts = []
                for part in m.content:
                    if part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise APIError(400, f"messages[{i}].content: only text parts are supported, got "
                                            f"{part.get('type')!r}", "invalid_value", f"messages.{i}.content")
                    texts.append(part["text"])
                content = "".join(texts)
            else:
                content = m.content or ""
            out.append({"role": "system" if m.role == "developer" else m.role, "content": content})
        return out

    def budget(self) -> int | None:
        """max_completion_tokens, else max_tokens (None: until the context is full)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def top_n(self) -> int | None:
        """Alternatives per token to report (None: no logprobs)."""
        if not self.logprobs:
            if self.top_logprobs is not None:
                raise APIError(400, "top_logprobs needs logprobs: true", "invalid_value", "top_logprobs")
            return None
        return self.top_logprobs or 0
