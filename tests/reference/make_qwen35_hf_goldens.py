#!/usr/bin/env python3
"""A tiny random Qwen3.5 from HF transformers (`Qwen3_5ForCausalLM`, f32) as an independent reference for
Kiln's qwen35 model: logits at every position of a prompt.

Two steps, because torch + transformers live only on the GPU machine and the GGUF writer (PyPI `gguf`
0.19.0, numpy) here:

1. `reference` (GPU machine, CPU math in f32): builds the model from a seeded, well-scaled random init,
   runs the prompt, writes `hf.npz` (state dict, prompt ids, logits of every position) and `hf.json`
   (config, versions) to OUTDIR.
2. `convert` (here): turns `hf.npz` into tests/golden/qwen35-hf/qwen35-hf-tiny.gguf with llama.cpp's
   conversion transforms (norms +1 except the gated delta-rule norm, A_log -> -exp(A_log), conv1d
   squeezed, V heads reordered from grouped to tiled) and writes the logits golden beside it.

`node-agent/tests/qwen35.rs` (`matches_transformers`) compares Kiln's logits with the golden.
"""

import json
import math
import sys
from pathlib import Path

CONFIG = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,  # layers 0-2 linear attention (Gated DeltaNet), layer 3 full attention
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    linear_conv_kernel_dim=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    rms_norm_eps=1e-6,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
    full_attention_interval=4,
    rope_parameters=dict(rope_type="default", rope_theta=10_000_000.0, partial_rotary_factor=0.25,
                         mrope_section=[1, 1, 2], mrope_interleaved=True),
)
PROMPT = [(i * 37 + 11) % 256 for i in range(40)]
SEED = 1234


def reference(out_dir):
    import numpy as np
    import torch
    import transformers
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    torch.manual_seed(SEED)
    layer_types = ["linear_attention"] * 3 + ["full_attention"]
    cfg = Qwen3_5TextConfig(layer_types=layer_types, **CONFIG)
    model = Qwen3_5ForCausalLM(cfg).float().eval()
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.empty(p.shape).uniform_(1.0, 16.0, generator=g)))
            elif name.endswith("dt_bias"):
                dt = torch.exp(torch.empty(p.shape).uniform_(math.log(1e-3), math.log(1e-1), generator=g))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            elif "norm" in name:
                # Qwen3NextRMSNorm multiplies by (1 + w); the gated delta-rule norm by w.
                base = 1.0 if name.endswith("linear_attn.norm.weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1] * (p.shape[1] if p.dim() == 3 else 1)
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        ids = torch.tensor([PROMPT])
        logits = model(input_ids=ids).logits[0].float().numpy()
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "hf.npz", logits=logits, prompt=np.array(PROMPT, dtype=np.int64),
             **{"w." + k: v for k, v in state.items()})
    (out / "hf.json").write_text(json.dumps({
        "config": cfg.to_dict(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "seed": SEED,
        "tensors": {k: list(v.shape) for k, v in state.items()},
    }, indent=1, default=str))
    print("wrote", out, logits.shape, float(np.abs(logits).max()))


def convert(in_dir):
    import numpy as np
    import gguf

    data = np.load(Path(in_dir) / "hf.npz")
    meta = json.loads((Path(in_dir) / "hf.json").read_text())
    w = {k[2:]: data[k] for k in data.files if k.startswith("w.")}
    c = CONFIG
    nk, nv, dk, dv = (c["linear_num_key_heads"], c["linear_num_value_heads"],
                      c["linear_key_head_dim"], c["linear_value_head_dim"])
    ratio = nv // nk
    # Tiled V-head j is grouped V-head (j % nk) * ratio + j // nk (so it reads Q/K head j % nk).
    perm = [(j % nk) * ratio + j // nk for j in range(nv)]

    def v_rows(x, per_head):  # reorder rows grouped by V head
        return x.reshape(nv, per_head, *x.shape[1:])[perm].reshape(x.shape)

    out_dir = Path(__file__).resolve().parents[1] / "golden" / "qwen35-hf"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "qwen35-hf-tiny.gguf"
    wr = gguf.GGUFWriter(str(path), "qwen35")
    n_layer = c["num_hidden_layers"]
    wr.add_name("Kiln HF transformers reference qwen35 tiny")
    wr.add_block_count(n_layer)
    wr.add_context_length(c["max_position_embeddings"])
    wr.add_embedding_length(c["hidden_size"])
    wr.add_feed_forward_length(c["intermediate_size"])
    wr.add_head_count(c["num_attention_heads"])
    wr.add_head_count_kv(c["num_key_value_heads"])
    wr.add_key_length(c["head_dim"])
    wr.add_value_length(c["head_dim"])
    wr.add_layer_norm_rms_eps(c["rms_norm_eps"])
    wr.add_rope_dimension_count(int(c["head_dim"] * c["rope_parameters"]["partial_rotary_factor"]))
    wr.add_rope_freq_base(c["rope_parameters"]["rope_theta"])
    wr.add_array("qwen35.rope.dimension_sections", c["rope_parameters"]["mrope_section"] + [0])
    wr.add_uint32("qwen35.full_attention_interval", c["full_attention_interval"])
    wr.add_uint32("qwen35.ssm.conv_kernel", c["linear_conv_kernel_dim"])
    wr.add_uint32("qwen35.ssm.state_size", dk)
    wr.add_uint32("qwen35.ssm.group_count", nk)
    wr.add_uint32("qwen35.ssm.time_step_rank", nv)
    wr.add_uint32("qwen35.ssm.inner_size", nv * dv)
    wr.add_file_type(0)

    def t(name, x):
        wr.add_tensor(name, np.ascontiguousarray(x, dtype=np.float32))

    t("token_embd.weight", w["model.embed_tokens.weight"])
    t("output_norm.weight", 1.0 + w["model.norm.weight"])
    t("output.weight", w["lm_head.weight"])
    kd = nk * dk
    for i in range(n_layer):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        t(b + "attn_norm.weight", 1.0 + w[p + "input_layernorm.weight"])
        t(b + "post_attention_norm.weight", 1.0 + w[p + "post_attention_layernorm.weight"])
        t(b + "ffn_gate.weight", w[p + "mlp.gate_proj.weight"])
        t(b + "ffn_up.weight", w[p + "mlp.up_proj.weight"])
        t(b + "ffn_down.weight", w[p + "mlp.down_proj.weight"])
        if (i + 1) % c["full_attention_interval"] == 0:
            a = p + "self_attn."
            t(b + "attn_q.weight", w[a + "q_proj.weight"])
            t(b + "attn_k.weight", w[a + "k_proj.weight"])
            t(b + "attn_v.weight", w[a + "v_proj.weight"])
            t(b + "attn_output.weight", w[a + "o_proj.weight"])
            t(b + "attn_q_norm.weight", 1.0 + w[a + "q_norm.weight"])
            t(b + "attn_k_norm.weight", 1.0 + w[a + "k_norm.weight"])
        else:
            a = p + "linear_attn."
            qkv = w[a + "in_proj_qkv.weight"]
            qkv = np.concatenate([qkv[: 2 * kd], v_rows(qkv[2 * kd:], dv)])
            t(b + "attn_qkv.weight", qkv)
            t(b + "attn_gate.weight", v_rows(w[a + "in_proj_z.weight"], dv))
            conv = w[a + "conv1d.weight"][:, 0, :]  # [channels, kernel]
            conv = np.concatenate([conv[: 2 * kd], v_rows(conv[2 * kd:], dv)])
            t(b + "ssm_conv1d.weight", conv)
            t(b + "ssm_beta.weight", v_rows(w[a + "in_proj_b.weight"], 1))
            t(b + "ssm_alpha.weight", v_rows(w[a + "in_proj_a.weight"], 1))
            t(b + "ssm_dt.bias", w[a + "dt_bias"][perm])
            t(b + "ssm_a", -np.exp(w[a + "A_log"][perm]))
            t(b + "ssm_norm.weight", w[a + "norm.weight"])
            out = w[a + "out_proj.weight"]  # [hidden, nv*dv]: reorder its columns
            out = out.reshape(out.shape[0], nv, dv)[:, perm, :].reshape(out.shape)
            t(b + "ssm_out.weight", out)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    logits = data["logits"]
    golden = {
        "reference": {k: meta[k] for k in ("torch", "transformers", "seed")},
        "config": CONFIG,
        "prompt_ids": [int(x) for x in data["prompt"]],
        "n_vocab": int(logits.shape[1]),
        "logits_file": "logits.f32",
        "max_abs_logit": float(np.abs(logits).max()),
    }
    logits.astype("<f4").tofile(out_dir / "logits.f32")
    (out_dir / "qwen35-hf-tiny.json").write_text(json.dumps(golden, indent=1) + "\n")
    print("wrote", path, out_dir / "logits.f32")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("reference", "convert"):
        sys.exit(__doc__)
    (reference if sys.argv[1] == "reference" else convert)(sys.argv[2])
