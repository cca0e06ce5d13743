"""Chat templates: a GGUF file's ``tokenizer.chat_template`` rendered in a jinja2 sandbox, or a built-in one.

A GGUF file is untrusted input, so its template runs in jinja2's ``ImmutableSandboxedEnvironment`` (a
``SandboxedEnvironment`` that also forbids mutating lists and dicts), configured as Hugging Face
``transformers`` does (``apply_chat_template``): ``trim_blocks``, ``lstrip_blocks``, the ``loopcontrols``
extension, a ``tojson`` filter that keeps non-ASCII text, and the globals ``raise_exception`` and
``strftime_now``. A template that reaches for Python internals raises TemplateError, and so does one that asks
for a result larger than MAX_SIZE (repetition, powers, format widths, padding filters and methods).

Each render also has a budget, so that no template can take all memory or run forever: at most MAX_STEPS loop
iterations and calls, MAX_TEXT characters of output (counted as it is produced, into the result or into a
``{% set %}`` block) and in any one string or list it builds, and MAX_SECONDS of time. Past a bound, rendering
stops with a TemplateError that names it.
"""

from __future__ import annotations

import contextvars
import functools
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
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


# The largest size (characters, items, repetitions, digits) one template operation may ask for: jinja's sandbox
# blocks attribute escapes and huge ranges but not `'x' * 10**10`, `10**10**10`, `'x'.ljust(10**10)`,
# `'%0999999999d' % 1` or `'x'|center(10**10)`, each of which would hang or exhaust memory.
MAX_SIZE = 1_000_000
_WIDE_FORMAT = re.compile(r"\d{7,}|%[^a-zA-Z%]*\*")  # a width or precision of 7+ digits, or a '*' one


class _TooLarge(SecurityError):
    """A template operation would build a result beyond MAX_SIZE."""


# The budget of one render (see the module docstring): far above what real templates need (a 200-turn
# conversation of 10,000-character messages is about 2M characters and a few thousand steps).
MAX_STEPS = 250_000
MAX_TEXT = 16_000_000
MAX_SECONDS = 5.0


class _OverBudget(SecurityError):
    """A render went past one of its bounds (steps, characters, seconds)."""


class _Budget:
    """What one render has used so far."""

    def __init__(self) -> None:
        self.steps = 0
        self.chars = 0
        self.deadline = time.monotonic() + MAX_SECONDS

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise _OverBudget(f"more than {MAX_STEPS} loop steps and calls")
        self._check_time()

    def output(self, text: str) -> str:
        self.chars += len(text)
        if self.chars > MAX_TEXT:
            raise _OverBudget(f"more than {MAX_TEXT} characters of output")
        self._check_time()
        return text

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise _OverBudget(f"more than {MAX_SECONDS:g} seconds")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("chat_template_budget", default=None)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # rendered outside ChatTemplate.render: a budget of its own
        budget = _Budget()
        _BUDGET.set(budget)
    return budget


def _check_built(value: Any) -> Any:
    """`value` if it is not a string or container longer than MAX_TEXT (a result just built by the template)."""
    if isinstance(value, str | list | tuple | dict) and len(value) > MAX_TEXT:
        raise _OverBudget(f"a value of more than {MAX_TEXT} characters or items")
    return value


class _BudgetedCodeGenerator(CodeGenerator):
    """jinja's code generator with the render budget compiled in: a step per loop iteration, a size check on
    every `~` concatenation, and every piece of output counted (including text captured by `{% set %}`)."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        tick = nodes.ExprStmt(nodes.Call(nodes.EnvironmentAttribute("count_step"), [], [], None, None))
        tick.set_lineno(node.lineno)
        node.body = [tick, *node.body]
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.check_built(")
        super().visit_Concat(node, frame)
        self.write(")")

    def _output_const_repr(self, group: Any) -> str:
        return f"environment.count_output({super()._output_const_repr(group)})"

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        self.write("environment.count_output(")
        super()._output_child_pre(node, frame, finalize)

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        super()._output_child_post(node, frame, finalize)
        self.write(")")


def _check_arg(value: Any, what: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
        raise _TooLarge(f"{what} with {value} (more than {MAX_SIZE})")


def _check_format(fmt: Any, what: str) -> None:
    if isinstance(fmt, str) and _WIDE_FORMAT.search(fmt):
        raise _TooLarge(f"{what} with the format {fmt[:40]!r}: widths above {MAX_SIZE} are refused")


def _bounded_filter(name: str, f: Any) -> Any:
    """Filter `f` with its extra arguments (widths, counts) checked; `format` also checks its format string."""
    n_lead = 1 + (getattr(f, "jinja_pass_arg", None) is not None)  # the value, after a context/environment

    @functools.wraps(f)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        for a in (*args[n_lead:], *kwargs.values()):
            _check_arg(a, f"filter {name!r}")
        if name == "format" and len(args) >= n_lead:
            _check_format(args[n_lead - 1], "filter 'format'")
        return _check_built(f(*args, **kwargs))

    return bounded


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with the operations that can build huge results bounded by MAX_SIZE, and the
    render budget (steps, characters, seconds) enforced by the code it compiles."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _BudgetedCodeGenerator

    @staticmethod
    def count_step() -> None:
        """One loop iteration (compiled into every loop body)."""
        _budget().step()

    @staticmethod
    def count_output(text: str) -> str:
        """Output produced by the template, counted against MAX_TEXT."""
        return _budget().output(text)

    @staticmethod
    def check_built(value: Any) -> Any:
        """A concatenation's result, refused beyond MAX_TEXT."""
        return _check_built(value)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_SIZE:
                    raise _TooLarge(f"repeating {len(seq)} items {n} times (more than {MAX_SIZE})")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                if right * math.log10(abs(left)) > 10_000:
                    raise _TooLarge(f"{left} ** {right} (more than 10000 digits)")
        elif operator == "%":
            _check_format(left, "'%' formatting")
        return _check_built(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _budget().step()
        for a in (*args, *kwargs.values()):
            _check_arg(a, f"calling {getattr(__obj, '__name__', 'a function')}")
        return _check_built(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Any:
        _check_format(getattr(value, "__self__", None), "str.format")
        return super().wrap_str_format(value)


def _environment() -> ImmutableSandboxedEnvironment:
    env = _BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", _GenerationTag]
    )
    env.filters["tojson"] = _tojson
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
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
        token = _BUDGET.set(_Budget())
        try:
            return self._template.render(**context)
        except TemplateError:
            raise
        except _OverBudget as e:
            raise TemplateError(f"chat template {self.name!r} exceeded a bound of its render: {e}") from None
        except _TooLarge as e:
            raise TemplateError(f"chat template {self.name!r} asked for too large a result: {e}") from e
        except jinja2.exceptions.SecurityError as e:
            raise TemplateError(f"chat template {self.name!r} tried to leave the sandbox: {e}") from e
        except Exception as e:  # any failure inside untrusted template code
            raise TemplateError(f"chat template {self.name!r} failed: {type(e).__name__}: {e}") from e
        finally:
            _BUDGET.reset(token)


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
