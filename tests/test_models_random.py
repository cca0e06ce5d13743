"""Tiny random-weight llama (+ sliding window), qwen2, falcon and gemma3 models vs Hugging Face transformers.

Each model is written by `embedkit.testing.random_models` in F32, F16, Q8_0, Q4_0 and Q4_K; the
transformers model (torch, float64 on CPU) is built from a config and loaded with the same
weights DEquantized by `gguf.quants` (the reference), so any difference is our activation
arithmetic. Error = max |ours - hf| / max |hf| over all positions' logits.
Tolerances: F32 < 1e-4; F16 < 2e-3; Q8_0 < 2e-2; Q4_0 and Q4_K < 5e-2 (quantized matmuls may round
activations to 8 bits, as llama.cpp does). Top-1 must agree at every position for F32.
The same files against llama.cpp's logits (recorded with llama-cpp-python, data/models/make_random_goldens.py)
in `test_logits_match_llama_cpp`, tolerances there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from embedkit.models import load_model  # noqa: E402
from embedkit.testing.random_models import write_random_model  # noqa: E402

SHAPE = dict(n_vocab=320, n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512, n_ctx=64, rope_base=10000.0)
CASES = {
    "llama": ("llama", {}),
    "llama_swa": ("llama", {"sliding_window": 5}),
    "qwen2": ("qwen2", {}),
    "falcon": ("falcon", {"n_head_kv": 1}),
    # 6 layers: 5 local (window 5, RoPE base 10000) and 1 global, as Gemma 3's pattern
    "gemma3": ("gemma3", {"n_layer": 6, "n_head_kv": 1, "sliding_window": 5, "rope_base": 1e6, "eps": 1e-6}),
}
TOLERANCE = {"F32": 1e-4, "F16": 2e-3, "Q8_0": 2e-2, "Q4_0": 5e-2, "Q4_K": 5e-2}
N_TOKENS = 14


def _dequantized(path: Path) -> dict[str, np.ndarray]:
    r = gguf.GGUFReader(path)
    return {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float64) for t in r.tensors}


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf's Q/K row permutation (HF rotate_half -> llama.cpp adjacent pairs)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_model(arch: str, s: dict, w: dict[str, np.ndarray]):
    hd = s["n_embd"] // s["n_head"]
    common = dict(
        vocab_size=s["n_vocab"], hidden_size=s["n_embd"], num_hidden_layers=s["n_layer"],
        num_attention_heads=s["n_head"], max_position_embeddings=s["n_ctx"], rope_theta=s["rope_base"],
    )  # fmt: skip
    sd: dict[str, np.ndarray] = {}
    if arch == "gemma3":
        return _hf_gemma3(s, w, hd, common)
    if arch == "falcon":
        cfg = transformers.FalconConfig(
            **common, multi_query=True, new_decoder_architecture=False, parallel_attn=True, bias=False,
            alibi=False, layer_norm_epsilon=1e-5, ffn_hidden_size=s["n_ff"], tie_word_embeddings=False,
        )  # fmt: skip
        model = transformers.FalconForCausalLM(cfg)
        sd["transformer.word_embeddings.weight"] = w["token_embd.weight"]
        for i in range(s["n_layer"]):
            p, q = f"transformer.h.{i}.", f"blk.{i}."
            sd[p + "input_layernorm.weight"] = w[q + "attn_norm.weight"]
            sd[p + "input_layernorm.bias"] = w[q + "attn_norm.bias"]
            sd[p + "self_attention.query_key_value.weight"] = w[q + "attn_qkv.weight"]
            sd[p + "self_attention.dense.weight"] = w[q + "attn_output.weight"]
            sd[p + "mlp.dense_h_to_4h.weight"] = w[q + "ffn_up.weight"]
            sd[p + "mlp.dense_4h_to_h.weight"] = w[q + "ffn_down.weight"]
        sd["transformer.ln_f.weight"] = w["output_norm.weight"]
        sd["transformer.ln_f.bias"] = w["output_norm.bias"]
    else:
        kw = dict(
            **common, intermediate_size=s["n_ff"], num_key_value_heads=s["n_head_kv"], rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        )  # fmt: skip
        if arch == "qwen2":
            model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw, use_sliding_window=False))
        elif s.get("sliding_window"):
            cfg = transformers.MistralConfig(**kw, sliding_window=s["sliding_window"], head_dim=hd)
            model = transformers.MistralForCausalLM(cfg)
        else:
            model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw, head_dim=hd))
        sd["model.embed_tokens.weight"] = w["token_embd.weight"]
        for i in range(s["n_layer"]):
            p, q = f"model.layers.{i}.", f"blk.{i}."
            wq, wk = w[q + "attn_q.weight"], w[q + "attn_k.weight"]
            if arch == "llama":
                wq, wk = _unpermute(wq, s["n_head"]), _unpermute(wk, s["n_head_kv"])
            sd[p + "self_attn.q_proj.weight"] = wq
            sd[p + "self_attn.k_proj.weight"] = wk
            sd[p + "self_attn.v_proj.weight"] = w[q + "attn_v.weight"]
            if arch == "qwen2":
                for x in "qkv":
                    sd[p + f"self_attn.{x}_proj.bias"] = w[q + f"attn_{x}.bias"]
            sd[p + "self_attn.o_proj.weight"] = w[q + "attn_output.weight"]
            sd[p + "input_layernorm.weight"] = w[q + "attn_norm.weight"]
            sd[p + "post_attention_layernorm.weight"] = w[q + "ffn_norm.weight"]
            sd[p + "mlp.gate_proj.weight"] = w[q + "ffn_gate.weight"]
            sd[p + "mlp.up_proj.weight"] = w[q + "ffn_up.weight"]
            sd[p + "mlp.down_proj.weight"] = w[q + "ffn_down.weight"]
        sd["model.norm.weight"] = w["output_norm.weight"]
    sd["lm_head.weight"] = w["output.weight"]
    model = model.to(torch.float64).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    model.config._attn_implementation = "eager"
    return model


def _hf_gemma3(s: dict, w: dict[str, np.ndarray], hd: int, common: dict):
    """Gemma3ForCausalLM; HF's RMSNorm multiplies by (1 + w) where the GGUF stores 1 + w."""
    cfg = transformers.Gemma3TextConfig(
        **{k: v for k, v in common.items() if k != "rope_theta"}, intermediate_size=s["n_ff"],
        num_key_value_heads=s["n_head_kv"], head_dim=hd, query_pre_attn_scalar=hd, rms_norm_eps=s["eps"],
        sliding_window=s["sliding_window"], rope_theta=s["rope_base"], rope_local_base_freq=10000.0,
        layer_types=["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(s["n_layer"])],
        tie_word_embeddings=True, final_logit_softcapping=None, attn_logit_softcapping=None,
        hidden_activation="gelu_pytorch_tanh",
    )  # fmt: skip
    model = transformers.Gemma3ForCausalLM(cfg)
    norms = {
        "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
        "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    }  # fmt: skip
    sd = {"model.embed_tokens.weight": w["token_embd.weight"], "model.norm.weight": w["output_norm.weight"] - 1}
    for i in range(s["n_layer"]):
        p, q = f"model.layers.{i}.", f"blk.{i}."
        for hf, g in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")):
            sd[f"{p}self_attn.{hf}.weight"] = w[f"{q}{g}.weight"]
        for hf, g in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
            sd[f"{p}mlp.{hf}.weight"] = w[f"{q}{g}.weight"]
        for hf, g in norms.items():
            sd[f"{p}{hf}.weight"] = w[f"{q}{g}.weight"] - 1
    sd["lm_head.weight"] = w["token_embd.weight"]
    model = model.to(torch.float64).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    model.config._attn_implementation = "eager"
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """(case, type) -> (gguf path, shape); written lazily."""
    return {"dir": tmp_path_factory.mktemp("random_models")}


def case_seed(case: str, gtype: str) -> int:
    """The random-weight seed of one (case, type) model (also used by data/models/make_random_goldens.py)."""
    return sorted(CASES).index(case) * 10 + list(TOLERANCE).index(gtype)


def prompt_ids(s: dict) -> np.ndarray:
    """The 14 token ids every case is evaluated on."""
    return np.random.default_rng(1234).integers(3, s["n_vocab"], size=N_TOKENS).astype(np.int32)


def _case(models: dict, case: str, gtype: str) -> tuple[Path, dict, str]:
    arch, extra = CASES[case]
    s = {**SHAPE, **extra}
    key = (case, gtype)
    if key not in models:
        path = models["dir"] / f"{case}-{gtype}.gguf"
        models[key] = write_random_model(path, arch, s, gtype, seed=case_seed(case, gtype))
    return models[key], s, arch


@pytest.mark.parametrize("gtype", list(TOLERANCE))
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(models: dict, case: str, gtype: str) -> None:
    """All-position logits of a 14-token prompt, then the KV-cache path (prompt + 4 decode steps)."""
    path, s, arch = _case(models, case, gtype)
    ids = prompt_ids(s)
    with torch.no_grad():
        ref = _hf_model(arch, s, _dequantized(path))(torch.from_numpy(ids[None].astype(np.int64))).logits[0].numpy()
    m = load_model(path)
    ours = m.forward(ids, m.new_state(32), 0, all_positions=True)
    scale = np.abs(ref).max()
    err = np.abs(ours - ref).max() / scale
    assert err < TOLERANCE[gtype], f"{case} {gtype}: relative error {err:.2e}"
    if gtype == "F32":
        assert (ours.argmax(1) == ref.argmax(1)).all()
    # the same logits through the cache: a prompt batch, then token-by-token decode
    state = m.new_state(32)
    m.forward(ids[:10], state, 0)
    for pos in range(10, N_TOKENS):
        last = m.forward(ids[pos : pos + 1], state, pos)
    err = np.abs(last[0] - ref[-1]).max() / scale
    assert err < TOLERANCE[gtype], f"{case} {gtype} decode: relative error {err:.2e}"


LLAMA_CPP = Path(__file__).resolve().parent / "data" / "models" / "random_llamacpp.npz"
# llama.cpp keeps K/V (and Q, and the softmax weights, in its matmuls) in float16 and, for quantized weights,
# rounds activations to 8 bits. With --cpu-math ggml (selected here), quantized llama/qwen2/gemma3 models run
# on the backend with llama.cpp's arithmetic and must equal its logits bit for bit; F32 models (float32
# arithmetic) measured 2e-4 to 4e-4; falcon (its LayerNorm and GELU are not emulated) 7e-3 (Q8_0) and 1.3e-2 (Q4_K).
LLAMA_CPP_TOLERANCE = {"F32": 1e-3, "Q8_0": 3e-2, "Q4_K": 4e-2}
BIT_EXACT_CASES = ("llama", "qwen2", "gemma3")


@pytest.mark.parametrize("gtype", list(LLAMA_CPP_TOLERANCE))
@pytest.mark.parametrize("case", [c for c in CASES if c != "llama_swa"])
def test_logits_match_llama_cpp(models: dict, case: str, gtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """All-position logits vs llama.cpp's on the same file (goldens: data/models/make_random_goldens.py).
    `llama_swa` is left out: llama.cpp ignores `llama.attention.sliding_window` (we apply it, as transformers'
    Mistral does; real Mistral GGUFs don't carry the key). Top-1 agrees wherever llama.cpp's top-2 margin
    exceeds twice the tolerance."""
    path, s, _ = _case(models, case, gtype)
    golden = np.load(LLAMA_CPP)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == str(golden[f"{case}/{gtype}/sha256"]), "model bytes changed: rerun make_random_goldens.py"
    ref = golden[f"{case}/{gtype}/logits"]
    monkeypatch.setenv("EMBEDKIT_CPU_MATH", "ggml")
    m = load_model(path)
    ours = m.forward(prompt_ids(s), m.new_state(32), 0, all_positions=True)
    scale = np.abs(ref).max()
    err = np.abs(ours - ref).max() / scale
    assert err < LLAMA_CPP_TOLERANCE[gtype], f"{case} {gtype}: relative error {err:.2e} vs llama.cpp"
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * LLAMA_CPP_TOLERANCE[gtype] * scale
    assert (ours.argmax(1) == ref.argmax(1))[clear].all()
    if gtype != "F32" and case in BIT_EXACT_CASES:
        assert type(m.placement.layer(0)).__name__ == "GGMLCPUBackend"
        assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32)), f"{case} {gtype}: not bit-identical"


def test_unknown_architecture_lists_supported() -> None:
    from embedkit.errors import UnsupportedModelError
    from embedkit.models import model_class

    with pytest.raises(UnsupportedModelError, match="supported: .*falcon.*gemma3.*llama.*mistral.*qwen2"):
        model_class("gpt2")
    assert model_class("mistral") is model_class("llama")


def test_context_overflow_is_an_error(models: dict) -> None:
    from embedkit.errors import GenerationError

    path, _, _ = _case(models, "llama", "F32")
    m = load_model(path)
    state = m.new_state(8)
    m.forward(np.arange(3, 9, dtype=np.int32), state, 0)
    with pytest.raises(GenerationError, match="n_ctx=8"):
        m.forward(np.arange(3, 6, dtype=np.int32), state, 6)
