"""Dequantization oracle: the Python `gguf` package's dequantizer on random blocks of every type
qsparse decodes, and on real blocks of the SmolLM2 file.

  random SEED       JSON {type: {"data": hex, "values": [...]}} for random blocks
  real MODEL N      JSON {tensor: {"type", "values": first N values}} for a few real tensors

Used by tests/dequant.rs.
"""
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFReader
from gguf.quants import dequantize

# Byte offsets of the f16 scale fields in each block, set to sane values (random bytes would
# give NaN/Inf scales).
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "TQ1_0": [52], "TQ2_0": [64],
}
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34, "Q2_K": 84, "Q3_K": 110,
               "Q4_K": 144, "Q5_K": 176, "Q6_K": 210, "TQ1_0": 54, "TQ2_0": 66}


def random_blocks(seed):
    rng = np.random.default_rng(seed)
    out = {}
    for name, fields in F16_FIELDS.items():
        blocks = rng.integers(0, 256, size=(8, BLOCK_BYTES[name]), dtype=np.uint8)
        for b in blocks:
            for at in fields:
                b[at:at + 2] = np.frombuffer(np.float16(rng.uniform(-0.1, 0.1)).tobytes(), np.uint8)
        flat = blocks.reshape(-1)
        values = dequantize(flat, Q[name]).reshape(-1)
        out[name] = {"data": flat.tobytes().hex(), "values": [float(v) for v in values]}
    # Plain float types.
    f = rng.standard_normal(64).astype(np.float32)
    out["F16"] = {"data": f.astype(np.float16).tobytes().hex(),
                  "values": [float(v) for v in f.astype(np.float16).astype(np.float32)]}
    return out


def real(model, n):
    r = GGUFReader(model)
    out = {}
    for t in r.tensors:
        if t.name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.7.ffn_down.weight", "output_norm.weight"):
            values = dequantize(t.data, t.tensor_type).reshape(-1)[:n]
            out[t.name] = {"type": t.tensor_type.name, "values": [float(v) for v in values]}
    return out


if __name__ == "__main__":
    if sys.argv[1] == "random":
        print(json.dumps(random_blocks(int(sys.argv[2]))))
    else:
        print(json.dumps(real(sys.argv[2], int(sys.argv[3]))))
