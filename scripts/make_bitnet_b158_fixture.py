#!/usr/bin/env python3
"""BitNet b1.58 as bitnet.cpp writes it (`bitnet-b1.58`, I2_S projections) against Hugging Face
`transformers`' own implementation (`BitNetForCausalLM`), on a small random model:

    python3 scripts/make_bitnet_b158_fixture.py      # installs transformers if needed

1. builds a random `BitNetForCausalLM` (2 blocks, d_model 128, FFN 256, 4 heads sharing 2 kv
   heads, squared-ReLU FFN, tied embeddings, RoPE base 500000, a 256-token byte vocabulary);
2. writes it as bitnet.cpp's converter (utils/convert-hf-to-gguf-bitnet.py, class BitnetModel)
   does: architecture `bitnet-b1.58`, its metadata keys, llama.cpp's tensor names, every
   projection ternarized per tensor (round(clip(W / mean|W|, -1, 1)) * mean|W|) and stored as I2_S
   (bitnet.cpp's type id 36: 2-bit codes, one f32 scale), F16 token embedding, F32 norms
   -> tests/fixtures/bitnet_b158.gguf;
3. runs transformers on 3 prompts with the projections replaced by its own `AutoBitLinear` in
   online mode (the same ternarization, and int8 absmax activations per token, as BitNet b1.58
   runs; keys and values rounded to f16 as a KV cache holds them), and once without the
   activation quantization: the logits after each prompt and 32 greedy tokens
   -> tests/fixtures/bitnet_b158_hf.json.

tests/bitnet.rs runs the file and compares.
"""
import json
import os
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GGUF_OUT = os.path.join(ROOT, "tests", "fixtures", "bitnet_b158.gguf")
JSON_OUT = os.path.join(ROOT, "tests", "fixtures", "bitnet_b158_hf.json")
TRANSFORMERS = "transformers==5.23.0"
ARCH = "bitnet-b1.58"
PROMPTS = [[72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100],  # "Hello world" as bytes
           [1, 2, 3, 4, 5, 6, 7, 8],
           [200, 17, 99, 42]]
GREEDY = 32


def import_transformers():
    try:
        import transformers
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", TRANSFORMERS])
        import transformers
    return transformers


def byte_tokens():
    """GPT-2's printable character for each byte (its byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


# --- a minimal GGUF v3 writer (gguf-py has no id for bitnet.cpp's I2_S) ---
T_U32, T_F32, T_BOOL, T_STR, T_ARR = 4, 6, 7, 8, 9
GGML_F32, GGML_F16, BITNET_I2_S = 0, 1, 36
ALIGN = 32


def s_(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, typ, val):
    out = s_(key) + struct.pack("<I", typ)
    if typ == T_U32:
        return out + struct.pack("<I", val)
    if typ == T_F32:
        return out + struct.pack("<f", val)
    if typ == T_BOOL:
        return out + struct.pack("<B", 1 if val else 0)
    if typ == T_STR:
        return out + s_(val)
    elem, items = val
    out += struct.pack("<IQ", elem, len(items))
    for it in items:
        out += s_(it) if elem == T_STR else struct.pack("<i", it)
    return out


def i2_s(codes, scale):
    """bitnet.cpp I2_S (x86): codes w+1 in 128-element blocks of 32 bytes, byte j holding elements
    j, j+32, j+64, j+96 in bits 7:6, 5:4, 3:2, 1:0; then the f32 scale, padded to 32 bytes."""
    import numpy as np
    c = (codes.reshape(-1) + 1).astype(np.uint8).reshape(-1, 4, 32)
    packed = (c[:, 0] << 6) | (c[:, 1] << 4) | (c[:, 2] << 2) | c[:, 3]
    return packed.reshape(-1).tobytes() + struct.pack("<f", scale) + bytes(28)


def write_gguf(path, metadata, tensors):
    """tensors: [(name, ggml dims (ne0 first), type id, bytes)]."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    head += b"".join(kv(*m) for m in metadata)
    offset, infos, blobs = 0, b"", []
    for name, dims, ty, data in tensors:
        infos += s_(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ty, offset)
        pad = (-len(data)) % ALIGN
        blobs.append(data + bytes(pad))
        offset += len(data) + pad
    head += infos
    head += bytes((-len(head)) % ALIGN)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(head)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def main():
    import numpy as np
    import torch
    transformers = import_transformers()
    from transformers import BitNetConfig, BitNetForCausalLM
    from transformers.integrations.bitnet import AutoBitLinear

    torch.manual_seed(1234)
    cfg = BitNetConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="relu2",
                       rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
                       bos_token_id=0, eos_token_id=1, pad_token_id=None)
    model = BitNetForCausalLM(cfg).float().eval()
    with torch.no_grad():
        # Small embeddings (else the tied head mostly repeats the last token), norms around 1; the embedding rounded
        # to F16 as the file stores it.
        emb = (0.1 * torch.randn(256, 128)).half().float()
        model.model.embed_tokens.weight.copy_(emb)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * (torch.rand_like(p) * 2 - 1))
            elif name.startswith("model.layers.") and p.dim() == 2:
                # Large enough that every block moves the residual stream as much as the
                # embedding does (else the model only repeats its last token).
                p.copy_(torch.randn_like(p) * 2.0 / p.shape[1] ** 0.5)
    model.tie_weights()

    # The file, as the converter writes it.
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "self_attn.attn_sub_norm": "attn_sub_norm", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "mlp.ffn_sub_norm": "ffn_sub_norm"}
    tensors = [("token_embd.weight", [128, 256], GGML_F16, sd["model.embed_tokens.weight"].astype(np.float16).tobytes()),
               ("output_norm.weight", [128], GGML_F32, sd["model.norm.weight"].astype(np.float32).tobytes())]
    for layer in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            w = sd[f"model.layers.{layer}.{hf}.weight"]
            name = f"blk.{layer}.{gg}.weight"
            if w.ndim == 1:
                tensors.append((name, [w.shape[0]], GGML_F32, w.astype(np.float32).tobytes()))
            else:
                # weight_quant: s = 1 / mean|W|, round(clamp(W * s)) / s.
                scale = float(np.float32(1.0) / np.float32(max(np.abs(w).mean(dtype=np.float32), 1e-5)))
                codes = np.clip(np.round(w * scale), -1, 1).astype(np.int8)
                tensors.append((name, [w.shape[1], w.shape[0]], BITNET_I2_S, i2_s(codes, 1.0 / scale)))
    a = f"{ARCH}."
    metadata = [
        ("general.architecture", T_STR, ARCH), ("general.name", T_STR, "qsparse bitnet-b1.58 test"),
        (a + "vocab_size", T_U32, 256), (a + "context_length", T_U32, 256),
        (a + "embedding_length", T_U32, 128), (a + "feed_forward_length", T_U32, 256),
        (a + "block_count", T_U32, 2), (a + "attention.head_count", T_U32, 4),
        (a + "attention.head_count_kv", T_U32, 2), (a + "rope.freq_base", T_F32, 500000.0),
        (a + "attention.layer_norm_rms_epsilon", T_F32, 1e-5), (a + "rope.dimension_count", T_U32, 32),
        ("general.file_type", T_U32, 40),
        ("tokenizer.ggml.model", T_STR, "gpt2"), ("tokenizer.ggml.pre", T_STR, "gpt-2"),
        ("tokenizer.ggml.tokens", T_ARR, (T_STR, byte_tokens())),
        ("tokenizer.ggml.token_type", T_ARR, (5, [1] * 256)),
        ("tokenizer.ggml.merges", T_ARR, (T_STR, [])),
        ("tokenizer.ggml.bos_token_id", T_U32, 0), ("tokenizer.ggml.eos_token_id", T_U32, 1),
        ("tokenizer.ggml.add_bos_token", T_BOOL, False),
    ]
    write_gguf(GGUF_OUT, metadata, tensors)

    # transformers' BitNet b1.58: its AutoBitLinear on every projection (online: the weights
    # ternarized as above, activations int8 absmax per token), the lm_head in float.
    def bitnet_linears(model, act_quant):
        for name, mod in list(model.named_modules()):
            for child_name, child in list(mod.named_children()):
                if isinstance(child, torch.nn.Linear) and child_name != "lm_head":
                    new = AutoBitLinear(child.in_features, child.out_features, bias=False, online_quant=True)
                    new.weight = child.weight
                    if not act_quant:
                        new.forward = lambda x, new=new: torch.nn.functional.linear(
                            x, transformers.integrations.bitnet.WeightQuant.apply(new.weight))
                    setattr(mod, child_name, new)

    # With int8 activations, keys and values go through the f16 KV cache that qsparse (and
    # llama.cpp, bitnet.cpp) keep: at this size a perturbation that small already moves which
    # integer many activations round to, so the reference rounds them too.
    import transformers.models.bitnet.modeling_bitnet as modeling
    eager = modeling.eager_attention_forward

    def f16_kv_attention(module, q, k, v, *args, **kwargs):
        return eager(module, q, k.half().float(), v.half().float(), *args, **kwargs)

    out = {"transformers": transformers.__version__, "torch": torch.__version__}
    for key, act_quant in [("int8_activations", True), ("f32_activations", False)]:
        modeling.eager_attention_forward = f16_kv_attention if act_quant else eager
        cfg._attn_implementation = "eager"
        m = BitNetForCausalLM(cfg).float().eval()
        m.load_state_dict(model.state_dict())
        bitnet_linears(m, act_quant)
        cases = []
        with torch.no_grad():
            for prompt in PROMPTS:
                ids = list(prompt)
                logits = m(torch.tensor([ids])).logits[0, -1].double()
                top = torch.argsort(-logits)[:10]
                greedy = []
                for _ in range(GREEDY):
                    nxt = int(torch.argmax(m(torch.tensor([ids])).logits[0, -1]))
                    greedy.append(nxt)
                    ids.append(nxt)
                cases.append({"prompt_ids": prompt, "top10": [[int(i), float(logits[i])] for i in top],
                              "greedy32": greedy})
        out[key] = cases
    with open(JSON_OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {GGUF_OUT} ({os.path.getsize(GGUF_OUT)} bytes) and {JSON_OUT}")


if __name__ == "__main__":
    main()
