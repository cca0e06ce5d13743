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


# A template is untrusted input from a downloaded file: these grew past 3 GB, grew to 11 GB in 86 s, and ran
# for minutes. Each runs in a child process with 1 GiB of address space and must fail within seconds.
RUNAWAY_TEMPLATES = {
    "doubling string": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}{{ ns.s|length }}",
    "doubling with +": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
                       "{% endfor %}{{ ns.s|length }}",
    "doubling list": "{% set ns = namespace(s=[1]) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
                     "{% endfor %}{{ ns.s|length }}",
    "doubling by replace": "{% set ns = namespace(s='a') %}{% for i in range(40) %}"
                           "{% set ns.s = ns.s.replace('a', 'aa') %}{% endfor %}{{ ns.s|length }}",
    "nested loops printing": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "nested loops into a block set": "{% set s %}{% for i in range(100000) %}{% for j in range(100000) %}"
                                     "{{ 'xyz' }}{% endfor %}{% endfor %}{% endset %}{{ s|length }}",
    "nested loops, empty body": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "recursive macro": "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
                       "{{ f(60) }}",
    "recursive loop": "{% for i in range(100000) recursive %}{% if loop.depth < 4 %}{{ loop(range(100000)) }}"
                      "{% endif %}{% endfor %}",
}

_RUNAWAY_CHILD = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from embedkit.errors import TemplateError
from embedkit.generate.chat_template import ChatTemplate
t0 = time.monotonic()
try:
    ChatTemplate(sys.argv[1]).render([{"role": "user", "content": "hi"}])
except TemplateError as e:
    print(f"{time.monotonic() - t0:.1f}", e, sep="\\n")
else:
    print("rendered")
"""


@pytest.mark.parametrize("name", sorted(RUNAWAY_TEMPLATES))
def test_runaway_templates_stop_at_a_named_bound(name):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-c", _RUNAWAY_CHILD, RUNAWAY_TEMPLATES[name]], cwd=repo,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    seconds, message = p.stdout.splitlines()
    assert float(seconds) < 10, (name, seconds, message)
    assert "\n" not in message and "chat template 'gguf' exceeded" in message, message
    assert any(b in message for b in ("characters", "steps", "seconds")), message


def test_bounds_leave_real_templates_alone():
    """A long conversation through a loop-heavy template renders: the bounds are far above real use."""
    convo = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 2000} for i in range(200)]
    t = ChatTemplate("{% for m in messages %}{% for i in range(3) %}{{ m.role|length }}{% endfor %}"
                     "{{ '<|' ~ m.role ~ '|>' }}{{ m.content|trim ~ '\n' }}{% endfor %}")
    assert len(t.render(convo)) > 2_000_000
