"""The trainer's Top-K and straight-through estimator (train/qsparse_train.py): the forward keeps
exactly the K = round((1-S)·d) largest magnitudes of each row (int8 activations: the largest
`outliers` exact, the rest on the absmax grid of what remains), and the gradient reaching the
input equals the gradient at the sparse output, element for element.

    python3 tests/python/train_ste.py QSPARSE_BIN MODEL     (arguments unused)
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "train"))
import qsparse_train as qt  # noqa: E402

torch.manual_seed(0)
for act, outliers in (("f32", 0), ("int8", 0), ("int8", 4)):
    for s in (0.0, 0.25, 0.5, 0.9):
        x = torch.randn(6, 96, dtype=torch.float32, requires_grad=True)
        y = qt.sparse_input(x, s, act, outliers)
        g = torch.randn_like(x)
        (y * g).sum().backward()
        assert torch.equal(x.grad, g), f"{act} S {s}: gradient is not the identity"
        k = qt.keep_count(96, s)
        with torch.no_grad():
            for row_x, row_y in zip(x, y):
                kept = set(torch.nonzero(row_y).flatten().tolist())
                largest = set(row_x.abs().topk(k).indices.tolist())
                assert kept <= largest, f"{act} S {s}: kept an input outside the top K"
                if act == "f32":
                    assert kept == largest
                    assert torch.equal(row_y[list(kept)], row_x[list(kept)])
                else:
                    order = row_x.abs().argsort(descending=True)
                    exact = order[:outliers]
                    assert torch.equal(row_y[exact], row_x[exact]), "outliers are kept exact"
                    gamma = row_x.abs()[order[outliers]]
                    rest = order[outliers:k]
                    err = (row_y[rest] - row_x[rest]).abs().max() if len(rest) else 0.0
                    assert err <= gamma / 254 + 1e-6, f"{act} S {s}: off the int8 grid by {err}"
                    steps = row_y[rest] / (gamma / 127)
                    assert torch.allclose(steps, steps.round(), atol=1e-3), "values on the grid"
assert qt.keep_count(576, 0.6) == 230 and qt.keep_count(10, 1.0) == 0
print("OK")
