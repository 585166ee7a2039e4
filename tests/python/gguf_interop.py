"""Interop with the official Python `gguf` package (ggml's gguf-py).

  write PATH  write a GGUF with every value type and a few tensors using gguf.GGUFWriter, and
              print as JSON what was written
  read PATH   read a GGUF with gguf.GGUFReader and print its metadata and tensors as JSON
  list PATH   read a (large) GGUF with gguf.GGUFReader and print its metadata keys, alignment,
              and each tensor's name, type, shape, size and the sha256 of its bytes

Used by tests/gguf_python.rs: our reader must read what gguf-py writes, and gguf-py must read
what our writer writes, value for value and byte for byte.
"""
import hashlib
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFReader, GGUFValueType as T, GGUFWriter

TYPE_NAMES = {T.UINT8: "u8", T.INT8: "i8", T.UINT16: "u16", T.INT16: "i16", T.UINT32: "u32",
              T.INT32: "i32", T.FLOAT32: "f32", T.BOOL: "bool", T.STRING: "string",
              T.ARRAY: "array", T.UINT64: "u64", T.INT64: "i64", T.FLOAT64: "f64"}

# (key, value, type, array element type)
VALUES = [
    ("py.u8", 255, T.UINT8, None),
    ("py.i8", -128, T.INT8, None),
    ("py.u16", 65535, T.UINT16, None),
    ("py.i16", -32768, T.INT16, None),
    ("py.u32", 4294967295, T.UINT32, None),
    ("py.i32", -2147483648, T.INT32, None),
    ("py.f32", 0.25, T.FLOAT32, None),
    ("py.bool", True, T.BOOL, None),
    ("py.string", "héllo 世界 🦀", T.STRING, None),
    ("py.u64", 18446744073709551615, T.UINT64, None),
    ("py.i64", -9223372036854775808, T.INT64, None),
    ("py.f64", 3.141592653589793, T.FLOAT64, None),
    ("py.arr.u8", [0, 1, 255], T.ARRAY, T.UINT8),
    ("py.arr.i8", [-128, 127], T.ARRAY, T.INT8),
    ("py.arr.u16", [1, 65535], T.ARRAY, T.UINT16),
    ("py.arr.i16", [-1, 2], T.ARRAY, T.INT16),
    ("py.arr.u32", [1, 2, 3], T.ARRAY, T.UINT32),
    ("py.arr.i32", [-7, 7], T.ARRAY, T.INT32),
    ("py.arr.f32", [0.5, -1.25], T.ARRAY, T.FLOAT32),
    ("py.arr.bool", [True, False], T.ARRAY, T.BOOL),
    ("py.arr.string", ["<|im_start|>", "Ġthe", "日本", ""], T.ARRAY, T.STRING),
    ("py.arr.u64", [0, 18446744073709551615], T.ARRAY, T.UINT64),
    ("py.arr.i64", [-9223372036854775808, 5], T.ARRAY, T.INT64),
    ("py.arr.f64", [1e300, -2.5], T.ARRAY, T.FLOAT64),
    ("py.arr.nested", [[1, 2], [3]], T.ARRAY, T.ARRAY),
]


def tensors():
    rng = np.random.default_rng(7)
    return [
        ("t.f32", rng.standard_normal((3, 8)).astype(np.float32), None),
        ("t.f16", rng.standard_normal((2, 16)).astype(np.float16), None),
        ("t.q8_0", rng.integers(0, 256, size=(2, 34), dtype=np.uint8), Q.Q8_0),
    ]


def write(path):
    w = GGUFWriter(path, "interop")
    for key, value, vtype, sub in VALUES:
        w.add_key_value(key, value, vtype, sub_type=sub)
    for name, data, raw_dtype in tensors():
        w.add_tensor(name, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    kv = {"general.architecture": {"type": "string", "value": "interop"}}
    for key, value, vtype, sub in VALUES:
        kv[key] = {"type": type_name(vtype, sub), "value": value}
    out = [{"name": n, "data_hex": d.tobytes().hex()} for n, d, _ in tensors()]
    print(json.dumps({"kv": kv, "tensors": out}))


def type_name(vtype, sub):
    """Our reader's description of a value type, e.g. `array of u32`. gguf-py's reader does not
    keep the element type of an empty array: that is reported as `array of ?`."""
    if vtype == T.ARRAY and sub is None:
        return "array of ?"
    return f"array of {TYPE_NAMES[sub]}" if vtype == T.ARRAY else TYPE_NAMES[vtype]


def read(path):
    r = GGUFReader(path)
    kv = {}
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        sub = field.types[1] if len(field.types) > 1 else None
        # gguf-py flattens nested arrays in contents(); the Rust test compares accordingly.
        kv[name] = {"type": type_name(field.types[0], sub), "value": field.contents()}
    out = []
    for t in r.tensors:
        out.append({
            "name": t.name,
            "type": t.tensor_type.name,
            "shape": [int(d) for d in t.shape],
            "data_hex": bytes(t.data.tobytes()).hex(),
        })
    print(json.dumps({"kv": kv, "tensors": out}))


def list_file(path):
    r = GGUFReader(path)
    keys = sorted(k for k in r.fields if not k.startswith("GGUF."))
    out = []
    for t in r.tensors:
        data = bytes(t.data.tobytes())
        out.append({
            "name": t.name,
            "type": t.tensor_type.name,
            "shape": [int(d) for d in t.shape],
            "n_bytes": int(t.n_bytes),
            "sha256": hashlib.sha256(data).hexdigest(),
        })
    print(json.dumps({"keys": keys, "alignment": int(r.alignment), "tensors": out}))


if __name__ == "__main__":
    {"write": write, "read": read, "list": list_file}[sys.argv[1]](sys.argv[2])
