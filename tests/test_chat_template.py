"""Chat templates: sandbox, HF-compatible globals, built-in formats, and the real models' templates vs llama.cpp.

Goldens in tests/data/generate/chat_*.json (see README there): `llama_cpp_cpp` is llama.cpp's C++
`llama_chat_apply_template`; `jinja2_formatter` is llama-cpp-python's jinja2 rendering of the file's template.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedkit.errors import TemplateError
from embedkit.generate.chat_template import (
    ChatTemplate,
    builtin_template,
    guess_builtin,
)

DATA = Path(__file__).resolve().parent / "data" / "generate"

CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mistral", "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] Bye [/INST]"),
        (
            "gemma",
            "<s><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n",
        ),
        (
            "chatml",
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            "Hello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            "alpaca",
            "<s>Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello!\n\n### Instruction:\nBye\n\n### Response:\n",
        ),
    ],
)
def test_builtin_templates(name, expected):
    assert builtin_template(name, bos_token="<s>", eos_token="</s>").render(CONVO) == expected


def test_builtin_alpaca_default_preamble_and_no_generation_prompt():
    t = builtin_template("alpaca")
    out = t.render([{"role": "user", "content": "Name a color."}], add_generation_prompt=False)
    assert out == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName a color.\n\n"
    )


def test_guess_builtin():
    assert guess_builtin("gemma3", []) == "gemma"
    assert guess_builtin("qwen2", ["a", "<|im_start|>", "<|im_end|>"]) == "chatml"
    assert guess_builtin("llama", ["<s>", "[INST]"]) == "mistral"
    assert guess_builtin("llama", ["<s>"], "Mistral-7B-v0.1") == "mistral"
    assert guess_builtin("llama", ["<s>"], "alpaca-7b") == "alpaca"
    with pytest.raises(TemplateError, match="unknown built-in"):
        builtin_template("vicuna")


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ raise_exception.__globals__['os'] }}",
        "{% set x = [] %}{{ x.append(1) }}",  # immutable sandbox: no mutation of containers
        "{{ messages[0].update({'role': 'x'}) }}",
    ],
)
def test_sandbox_escapes_fail_clearly(source):
    with pytest.raises(TemplateError, match="sandbox|unsafe|failed"):
        ChatTemplate(source).render(CONVO)


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 10**8 }}",
        "{{ 10**8 * 'x' }}",
        "{{ [1] * 10**7 }}",
        "{{ 10**(10**6) }}",
        "{{ 'x'.ljust(10**8) }}",
        "{{ '%0100000000d' % 1 }}",
        "{{ '%*d' % (10**8, 1) }}",
        "{{ '{:>100000000}'.format(1) }}",
        "{{ '%0100000000d'|format(1) }}",
        "{{ 'x'|center(10**8) }}",
        "{{ 'x'|indent(10**8) }}",
    ],
)
def test_huge_results_are_refused(source):
    """A GGUF's template could hang generate or exhaust memory with `'x' * 10**10` and the like (the tests use
    sizes that finish without the guard, so they fail by returning instead of hanging)."""
    with pytest.raises(TemplateError, match="asked for too large a result"):
        ChatTemplate(source).render(CONVO)


def test_ordinary_sizes_still_render():
    out = ChatTemplate(
        "{{ 'ab' * 3 }}|{{ 2**10 }}|{{ '%5d' % 3 }}|{{ 'x'|center(5) }}|{{ '{:>4}'.format(1) }}|{{ 12345678 }}|"
        "{{ '%s-%d'|format('a', 3) }}|{{ 'a'|indent(2, first=True) }}"
    ).render(CONVO)
    assert out == "ababab|1024|    3|  x  |   1|12345678|a-3|  a"


def test_hf_globals_and_filters():
    t = ChatTemplate(
        "{{ bos_token }}|{{ messages | tojson }}|{{ strftime_now('%Y') | length }}|"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}|"
        "{% generation %}{{ eos_token }}{% endgeneration %}|{{ add_generation_prompt }}",
        bos_token="<b>",
        eos_token="<e>",
    )
    out = t.render([{"role": "user", "content": "héllo 世界"}], add_generation_prompt=False)
    assert out == '<b>|[{"role": "user", "content": "héllo 世界"}]|4|user|<e>|False'


def test_raise_exception_and_syntax_errors():
    with pytest.raises(TemplateError, match="roles must alternate"):
        ChatTemplate("{{ raise_exception('roles must alternate') }}").render(CONVO)
    with pytest.raises(TemplateError, match="not valid jinja"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(TemplateError, match="message 0"):
        ChatTemplate("x").render([{"content": "no role"}])


def _golden(name: str) -> dict:
    return json.loads((DATA / f"chat_{name}.json").read_text())


class _NoModel:
    """Chat prompts need the file and tokenizer only; the generator still asks for a state."""

    class params:  # noqa: N801
        n_ctx_train = 128

    def new_state(self, n_ctx):
        return None


def _generator(path: Path):
    from embedkit.generate import Generator
    from embedkit.gguf import GGUFFile
    from embedkit.tokenizer import load_tokenizer

    f = GGUFFile(path)
    return Generator.from_parts(f, _NoModel(), load_tokenizer(f))


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["gemma_path", "smollm_path", "qwen_path"])
def test_model_templates_match_llama_cpp(fixture, request):
    """Each model's own template (Gemma 3 270M has none: the built-in Gemma turns) vs llama.cpp.

    Text must equal llama-cpp-python's jinja2 rendering of the same template, and the token ids we feed
    must equal those of llama.cpp's C++ rendering wherever that agrees with the template (it ignores the
    templates' default system prompt, and leaves BOS to the tokenizer).
    """
    name = {"gemma_path": "gemma3-270m", "smollm_path": "smollm2-135m", "qwen_path": "qwen2.5-coder-0.5b"}[fixture]
    gold = _golden(name)
    gen = _generator(request.getfixturevalue(fixture))
    template, tok = gen.chat_template, gen.tokenizer
    assert template.name == ("gemma" if gold["template"] is None else "gguf")
    compared_cpp = 0
    for case in gold["cases"]:
        ours = template.render(case["messages"])
        if case["jinja2_formatter"] is not None:
            assert ours == case["jinja2_formatter"]
        cpp = case["llama_cpp_cpp"]
        if case["jinja2_formatter"] in (None, cpp):
            writes_bos = "bos_token" in template.source
            assert (ours.removeprefix(template.tokens["bos_token"]) if writes_bos else ours) == cpp
            # llama.cpp tokenizes its rendering with BOS as the model asks and special tokens parsed
            assert gen.chat_prompt(case["messages"]) == tok.encode(cpp, add_special=True, parse_special=True)
            compared_cpp += 1
    assert compared_cpp >= 2
