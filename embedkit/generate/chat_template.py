"""Chat templates: a GGUF file's ``tokenizer.chat_template`` rendered in a jinja2 sandbox, or a built-in one.

A GGUF file is untrusted input, so its template runs in jinja2's ``ImmutableSandboxedEnvironment`` (a
``SandboxedEnvironment`` that also forbids mutating lists and dicts), configured as Hugging Face
``transformers`` does (``apply_chat_template``): ``trim_blocks``, ``lstrip_blocks``, the ``loopcontrols``
extension, a ``tojson`` filter that keeps non-ASCII text, and the globals ``raise_exception`` and
``strftime_now``. A template that reaches for Python internals raises TemplateError.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from embedkit.errors import TemplateError

# Built-in templates for files without one (written in the Hugging Face jinja dialect).
BUILTIN_TEMPLATES: dict[str, str] = {
    # Mistral Instruct v0.1 style; a system message is prepended to the first user turn.
    "mistral": (
        "{{ bos_token }}"
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] + '\\n\\n' %}{% set messages = messages[1:] %}"
        "{% else %}{% set system = '' %}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
        "{% else %}{{ raise_exception('only user and assistant roles follow the system message') }}"
        "{% endif %}{% endfor %}"
    ),
    # Gemma turns; Gemma has no system role: it is prepended to the first user turn.
    "gemma": (
        "{{ bos_token }}"
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] + '\\n\\n' %}{% set messages = messages[1:] %}"
        "{% else %}{% set system = '' %}{% endif %}"
        "{% for message in messages %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\\n' + (system if loop.first else '') + message['content'] | trim }}"
        "{{ '<end_of_turn>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
    ),
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # Stanford Alpaca's instruction format.
    "alpaca": (
        "{{ bos_token }}"
        "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
        "{% set messages = messages[1:] %}"
        "{% else %}{{ 'Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\\n\\n' }}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + '\\n\\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
}

# Stop strings that end a reply for each built-in format, besides the model's end-of-generation tokens.
BUILTIN_STOPS: dict[str, tuple[str, ...]] = {
    "mistral": ("[INST]",),
    "gemma": ("<end_of_turn>",),
    "chatml": ("<|im_end|>",),
    "alpaca": ("### Instruction:",),
}


class _GenerationTag(Extension):
    """``{% generation %}...{% endgeneration %}`` (used by HF for assistant masks): renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise TemplateError(f"chat template: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", _GenerationTag]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate chat messages (each a mapping with a string ``role`` and ``content``) and copy them."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise TemplateError(f"message {i}: expected a mapping with a string 'role', got {m!r:.80}")
        if not isinstance(m.get("content", ""), str | list):
            raise TemplateError(f"message {i}: 'content' must be a string")
        out.append(dict(m))
    return out


class ChatTemplate:
    """A compiled chat template plus the special-token strings it is rendered with."""

    def __init__(
        self,
        source: str,
        *,
        name: str = "gguf",
        bos_token: str = "",
        eos_token: str = "",
        special_tokens: Mapping[str, str] | None = None,
        stops: Sequence[str] = (),
    ) -> None:
        """Compile ``source``; TemplateError if it is not valid jinja."""
        self.source = source
        self.name = name
        self.stops = tuple(stops)
        self.tokens = {"bos_token": bos_token, "eos_token": eos_token, **(special_tokens or {})}
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"chat template {name!r} is not valid jinja: {e.message} (line {e.lineno})") from e

    def render(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        """Render ``messages`` to the prompt text (HF ``apply_chat_template(tokenize=False)``)."""
        context = {
            **self.tokens,
            "messages": check_messages(messages),
            "add_generation_prompt": add_generation_prompt,
            "tools": None,
            "documents": None,
            **extra,
        }
        try:
            return self._template.render(**context)
        except TemplateError:
            raise
        except jinja2.exceptions.SecurityError as e:
            raise TemplateError(f"chat template {self.name!r} tried to leave the sandbox: {e}") from e
        except Exception as e:  # any failure inside untrusted template code
            raise TemplateError(f"chat template {self.name!r} failed: {type(e).__name__}: {e}") from e


def builtin_template(name: str, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
    """One of the built-in templates: ``mistral``, ``gemma``, ``chatml`` or ``alpaca``."""
    if name not in BUILTIN_TEMPLATES:
        raise TemplateError(f"unknown built-in chat template {name!r}; expected one of {sorted(BUILTIN_TEMPLATES)}")
    return ChatTemplate(
        BUILTIN_TEMPLATES[name], name=name, bos_token=bos_token, eos_token=eos_token, stops=BUILTIN_STOPS[name]
    )


def guess_builtin(architecture: str, vocab: Sequence[str], model_name: str = "") -> str:
    """Pick the built-in format that fits a model without a template, from its special tokens and name."""
    specials = {"<start_of_turn>", "<|im_start|>", "[INST]"}
    present = {t for t in vocab if t in specials} if len(vocab) else set()
    if "<start_of_turn>" in present or architecture.startswith("gemma"):
        return "gemma"
    if "<|im_start|>" in present:
        return "chatml"
    if "[INST]" in present or "mistral" in model_name.lower() or "mixtral" in model_name.lower():
        return "mistral"
    return "alpaca"


def template_for_gguf(metadata: Mapping[str, Any], architecture: str) -> ChatTemplate:
    """The chat template of a GGUF file: its own ``tokenizer.chat_template``, else a fitting built-in."""
    vocab = metadata.get("tokenizer.ggml.tokens")
    vocab = vocab.tolist() if hasattr(vocab, "tolist") else list(vocab or [])

    def token_text(key: str) -> str:
        i = metadata.get(key)
        return vocab[int(i)] if i is not None and 0 <= int(i) < len(vocab) else ""

    bos, eos = token_text("tokenizer.ggml.bos_token_id"), token_text("tokenizer.ggml.eos_token_id")
    source = metadata.get("tokenizer.chat_template")
    if isinstance(source, str) and source.strip():
        stops = [s for s in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>") if s in source]
        return ChatTemplate(source, name="gguf", bos_token=bos, eos_token=eos, stops=stops)
    name = str(metadata.get("general.name") or "")
    return builtin_template(guess_builtin(architecture, vocab, name), bos_token=bos, eos_token=eos)
