"""Check our real-model logits against Hugging Face transformers on the same DEquantized weights (dev tool).

Run: .venv/bin/python tests/data/models/check_hf_agreement.py MODEL.gguf GOLDEN.logits.npz
Builds a transformers Gemma3ForCausalLM or LlamaForCausalLM from the GGUF metadata, loads the weights
dequantized by gguf.quants (norms minus 1 for Gemma, whose GGUF stores 1 + w; Q/K un-permuted for
llama), and prints max |ours - hf| per prompt and the top-1 agreement of hf, ours and llama.cpp.
"""

import sys

import gguf
import numpy as np
import torch
import transformers

from embedkit.models import load_model

path, gold = sys.argv[1], sys.argv[2]
r = gguf.GGUFReader(path)
W = {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32) for t in r.tensors}
m = load_model(path)
hp = m.params


def unperm(w, nh):
    return w.reshape(nh, w.shape[0] // nh // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


sd = {"model.embed_tokens.weight": W["token_embd.weight"]}
if hp.arch == "gemma3":
    cfg = transformers.Gemma3TextConfig(
        vocab_size=hp.n_vocab,
        hidden_size=hp.n_embd,
        intermediate_size=hp.n_ff,
        num_hidden_layers=hp.n_layer,
        num_attention_heads=hp.n_head,
        num_key_value_heads=hp.n_head_kv,
        head_dim=hp.head_dim,
        query_pre_attn_scalar=hp.head_dim,
        sliding_window=512,
        rope_theta=hp.rope_base,
        rope_local_base_freq=10000.0,
        rms_norm_eps=hp.norm_eps,
        max_position_embeddings=2048,
        layer_types=["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(hp.n_layer)],
        tie_word_embeddings=True,
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
        hidden_activation="gelu_pytorch_tanh",
    )
    model = transformers.Gemma3ForCausalLM(cfg)
    one = 1.0
    names = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
    }
else:
    cfg = transformers.LlamaConfig(
        vocab_size=hp.n_vocab,
        hidden_size=hp.n_embd,
        intermediate_size=hp.n_ff,
        num_hidden_layers=hp.n_layer,
        num_attention_heads=hp.n_head,
        num_key_value_heads=hp.n_head_kv,
        rms_norm_eps=hp.norm_eps,
        rope_theta=hp.rope_base,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    )
    model = transformers.LlamaForCausalLM(cfg)
    one = 0.0
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
for i in range(hp.n_layer):
    p, q = f"model.layers.{i}.", f"blk.{i}."
    wq, wk = W[q + "attn_q.weight"], W[q + "attn_k.weight"]
    if hp.arch == "llama":
        wq, wk = unperm(wq, hp.n_head), unperm(wk, hp.n_head_kv)
    sd[p + "self_attn.q_proj.weight"] = wq
    sd[p + "self_attn.k_proj.weight"] = wk
    sd[p + "self_attn.v_proj.weight"] = W[q + "attn_v.weight"]
    sd[p + "self_attn.o_proj.weight"] = W[q + "attn_output.weight"]
    for a, b in names.items():
        sd[p + a + ".weight"] = W[q + b + ".weight"] - one
    sd[p + "mlp.gate_proj.weight"] = W[q + "ffn_gate.weight"]
    sd[p + "mlp.up_proj.weight"] = W[q + "ffn_up.weight"]
    sd[p + "mlp.down_proj.weight"] = W[q + "ffn_down.weight"]
sd["model.norm.weight"] = W["output_norm.weight"] - one
sd["lm_head.weight"] = W["token_embd.weight"]
mi, un = model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
print("missing", [x for x in mi if "rotary" not in x], "unexpected", un)
model.config._attn_implementation = "eager"
model.eval()
g = np.load(gold)
tot = {"hf_vs_lcpp": [], "ours_vs_lcpp": [], "ours_vs_hf": []}
for name in ["en", "zh", "code"]:
    toks = g[f"{name}/tokens"]
    ids = g[f"{name}/top_ids"]
    with torch.no_grad():
        h = model(torch.from_numpy(toks[None].astype(np.int64))).logits[0].float().numpy()
    o = m.forward(toks, m.new_state(len(toks)), 0, all_positions=True)
    tot["hf_vs_lcpp"].append(h.argmax(1) == ids[:, 0])
    tot["ours_vs_lcpp"].append(o.argmax(1) == ids[:, 0])
    tot["ours_vs_hf"].append(o.argmax(1) == h.argmax(1))
    err = np.abs(o - h).max()
    print(name, f"ours-hf max abs {err:.4f} rel {err / np.abs(h).max():.2e}")
print({k: round(float(np.concatenate(v).mean()), 4) for k, v in tot.items()})
