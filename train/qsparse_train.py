"""Q-Sparse fine-tuning for qsparse, in PyTorch on the CPU.

`qsparse finetune` runs this program; it is not meant to be started by hand. qsparse prepares a
job directory (job.json: the model's shape and the recipe; base.gguf: every tensor of the model
in f32, named as in the model file; train.u32 / heldout.u32: the corpus as token ids) and, once
this program has written trained.gguf there, builds the output model from it. Reading model
files and writing the model users run stay in qsparse; this file only trains.

Sparsity is applied as qsparse's runtime applies it (src/model/llama/sparsify.rs): the input of
each projection (q/k/v share one, gate/up share one, o, down) keeps its K = round((1-S)·d)
largest magnitudes per token; with int8 activations the 32 largest stay exact and the rest are
quantized by their own absmax. The backward pass is the straight-through estimator of Q-Sparse
(`x + (sparse - x).detach()`): the gradient reaches every input as if nothing had been dropped.
"""

import argparse
import json
import math
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import gguf

PROJ_STACKS = ("qkv", "o", "gate_up", "down")


# ---------------------------------------------------------------- sparsity


def keep_count(d, s):
    """K of the runtime (kernels/src/topk.rs: keep_count)."""
    k = math.floor((1.0 - s) * d + 0.5)  # halves away from zero, as Rust's f64::round
    return max(0, min(d, int(k)))


def sparse_input(x, s, act, outliers):
    """x with all but its K largest magnitudes per row zeroed (values as the runtime multiplies
    them), and the straight-through estimator's gradient (identity).

    An unsorted top-k in x's own dtype, then a scatter: 1.5-2.4x less time than a sorted top-k
    in f32 (bf16 rows, 2048 of 576 or 1536 values, one thread), which had been the larger part
    of a step."""
    d = x.shape[-1]
    k = keep_count(d, s)
    if k >= d and act != "int8":
        return x
    with torch.no_grad():
        a = x.abs()
        idx = a.topk(k, dim=-1, sorted=False).indices
        vals = x.gather(-1, idx)
        m = min(outliers, k)
        if act == "int8" and m < d:
            # The m largest stay exact; the rest are rounded to the int8 grid of their own absmax
            # γ, the (m+1)-th largest magnitude.
            among = vals.abs() if m < k else a  # the (m+1)-th largest is among the K kept
            gamma = among.topk(m + 1, dim=-1).values[..., m:].float().clamp_min(1e-30)
            v = vals.float()
            q = torch.round(v * (127.0 / gamma)).clamp(-127, 127) * (gamma / 127.0)
            vals = torch.where(v.abs() > gamma, v, q).to(x.dtype)
        y = torch.zeros_like(x).scatter_(-1, idx, vals)
    return x + (y - x).detach()


def ternary(w, scale):
    """Ternary weights in the forward pass: round(clip(W/s, -1, 1))·s, straight-through in the
    backward pass. s is the base model's own scale (its largest |W|), fixed: the latent weights
    start at the base's values, whose codes they reproduce exactly until training moves one
    across ±s/2."""
    with torch.no_grad():
        q = (w / scale).round().clamp(-1, 1) * scale
    return w + (q - w).detach()


# ---------------------------------------------------------------- model


class Model(torch.nn.Module):
    """The llama/bitnet transformer qsparse runs (src/model/llama/forward.rs), on GGUF tensors:
    matrices as GGUF stores them ([d_out, d_in] in numpy order), RoPE on consecutive pairs
    (llama) or halves (bitnet), BitNet's sub-norms and squared ReLU where the model has them."""

    def __init__(self, shape, tensors, trainable):
        super().__init__()
        self.c = shape
        self.names = []
        for name, array in tensors.items():
            p = torch.nn.Parameter(torch.from_numpy(np.array(array, dtype=np.float32)))
            p.requires_grad_(trainable(name))
            self.register_parameter(name.replace(".", "__"), p)
            self.names.append(name)
        c = shape
        self.scales = {}
        if c["ternary"]:
            for name in self.names:
                if is_projection(name):
                    self.scales[name] = float(self.t(name).detach().abs().max().clamp_min(1e-8))
        rope_dim = c["rope_dim"]
        freqs = 1.0 / (c["rope_base"] ** (torch.arange(0, rope_dim, 2, dtype=torch.float64) / rope_dim))
        self.register_buffer("freqs", freqs.float(), persistent=False)

    def t(self, name):
        return getattr(self, name.replace(".", "__"))

    def has(self, name):
        return hasattr(self, name.replace(".", "__"))

    def weight(self, name):
        """A projection's weights as the forward pass multiplies them."""
        w = self.t(name)
        return ternary(w, self.scales[name]) if name in self.scales else w

    def rope(self, x, pos):
        """Rotate the first rope_dim entries of each head of x [B, H, T, hd]."""
        rd = self.c["rope_dim"]
        ang = pos[:, None].float() * self.freqs[None, :]
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        head, rest = x[..., :rd], x[..., rd:]
        if self.c["rope_neox"]:
            a, b = head[..., : rd // 2], head[..., rd // 2 :]
            rot = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
        else:
            a, b = head[..., 0::2], head[..., 1::2]
            rot = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
        return torch.cat([rot, rest], dim=-1)

    def norm(self, x, name):
        return F.rms_norm(x, (x.shape[-1],), self.t(name), self.c["rms_eps"])

    def forward(self, ids, ratios, act="f32", outliers=0):
        """Logits [B, T, vocab] of token ids [B, T] with per-layer ratios (a list of 4-tuples for
        qkv, o, gate_up, down; None for dense)."""
        c = self.c
        B, T = ids.shape
        H, KV, hd = c["n_heads"], c["n_kv_heads"], c["head_dim"]
        x = F.embedding(ids, self.t("token_embd.weight"))
        pos = torch.arange(T)
        for l in range(c["n_layers"]):
            blk = f"blk.{l}."
            s = ratios[l] if ratios is not None else (0.0, 0.0, 0.0, 0.0)

            def sp(v, i):
                return sparse_input(v, s[i], act, outliers) if (s[i] > 0 or act == "int8") else v

            h = sp(self.norm(x, blk + "attn_norm.weight"), 0)
            q = F.linear(h, self.weight(blk + "attn_q.weight")).view(B, T, H, hd).transpose(1, 2)
            k = F.linear(h, self.weight(blk + "attn_k.weight")).view(B, T, KV, hd).transpose(1, 2)
            v = F.linear(h, self.weight(blk + "attn_v.weight")).view(B, T, KV, hd).transpose(1, 2)
            q, k = self.rope(q, pos), self.rope(k, pos)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != KV)
            y = y.transpose(1, 2).reshape(B, T, H * hd)
            if self.has(blk + "attn_sub_norm.weight"):
                y = self.norm(y, blk + "attn_sub_norm.weight")
            x = x + F.linear(sp(y, 1), self.weight(blk + "attn_output.weight"))
            h = sp(self.norm(x, blk + "ffn_norm.weight"), 2)
            gate = F.linear(h, self.weight(blk + "ffn_gate.weight"))
            up = F.linear(h, self.weight(blk + "ffn_up.weight"))
            f = (F.relu(gate) ** 2 if c["ffn"] == "relu2" else F.silu(gate)) * up
            if self.has(blk + "ffn_sub_norm.weight"):
                f = self.norm(f, blk + "ffn_sub_norm.weight")
            x = x + F.linear(sp(f, 3), self.weight(blk + "ffn_down.weight"))
        x = self.norm(x, "output_norm.weight")
        head = "output.weight" if self.has("output.weight") else "token_embd.weight"
        return F.linear(x, self.t(head))


def is_projection(name):
    return name.startswith("blk.") and name.split(".")[2] in (
        "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def load_tensors(path):
    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        out[t.name] = np.asarray(t.data, dtype=np.float32).reshape(shape)
    return out


def write_tensors(path, model, names):
    """The trained tensors, f32, to path (atomically)."""
    tmp = path + ".tmp"
    w = gguf.GGUFWriter(tmp, "qsparse-finetune")
    for name in names:
        with torch.no_grad():
            value = model.weight(name) if is_projection(name) else model.t(name)
        w.add_tensor(name, value.detach().float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)


# ---------------------------------------------------------------- training


class Progress:
    """One line on stderr, redrawn: step, loss, tokens/s and time left."""

    def __init__(self, total):
        self.total = total
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, step, loss, tok_s, left_s, force=False):
        now = time.time()
        if not force and now - self.last < (0.5 if self.tty else 30.0):
            return
        self.last = now
        width = 24
        done = int(width * step / max(1, self.total))
        bar = "#" * done + "." * (width - done)
        left = f"{int(left_s // 60)}:{int(left_s % 60):02d}" if left_s is not None else "?"
        line = f"step {step}/{self.total} [{bar}] loss {loss:.3f}  {tok_s:.0f} tok/s  {left} left"
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def say(self, text):
        if self.tty:
            sys.stderr.write("\r\x1b[2K")
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def lr_at(step, total, warmup, peak):
    """Linear warm-up, then cosine down to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, p))))


def batch_at(tokens, step, micro, job):
    """The micro-batch `micro` of step `step`: a function of the seed and the step only, so that
    a resumed run sees the batches an uninterrupted one would."""
    seq, b = job["seq"], job["batch"]
    rng = np.random.default_rng([job["seed"], step, micro])
    starts = rng.integers(0, len(tokens) - seq - 1, size=b)
    rows = np.stack([tokens[s : s + seq + 1] for s in starts]).astype(np.int64)
    return torch.from_numpy(rows)


def evaluate(model, tokens, ratios, job, n_tokens):
    """Mean next-token NLL over non-overlapping windows of the first n_tokens."""
    seq = job["seq"]
    n_win = max(1, min(len(tokens) - 1, n_tokens) // seq)
    total, count = 0.0, 0
    with torch.no_grad(), autocast(job):
        for w in range(n_win):
            row = torch.from_numpy(tokens[w * seq : w * seq + seq + 1].astype(np.int64))[None]
            if row.shape[1] < 2:
                break
            logits = model(row[:, :-1], ratios, job["act"], job["outliers"]).float()
            total += F.cross_entropy(logits[0], row[0, 1:], reduction="sum").item()
            count += row.shape[1] - 1
    return total / max(1, count)


def autocast(job):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=job["bf16"])


def layer_ratios(job):
    if job.get("profile"):
        return [tuple(r) for r in job["profile"]["layers"]]
    s = job["sparsity"]
    return [(s, s, s, s)] * job["model"]["n_layers"]


def save_checkpoint(path, model, opt, step, state):
    tmp = path + ".tmp"
    trainable = {n: model.t(n).detach().clone() for n in model.names if model.t(n).requires_grad}
    torch.save({"step": step, "params": trainable, "opt": opt.state_dict(), **state}, tmp)
    os.replace(tmp, path)


class Stop:
    """Ctrl-C (SIGINT) or SIGTERM asks the run to stop after the current step, checkpointed
    (both may come for one request: qsparse passes a Ctrl-C on as SIGTERM)."""

    def __init__(self):
        self.asked = False
        signal.signal(signal.SIGINT, self.ask)
        signal.signal(signal.SIGTERM, self.ask)

    def ask(self, *_):
        self.asked = True


def train(job_dir):
    job = json.load(open(os.path.join(job_dir, "job.json")))
    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    c = job["model"]
    c["ternary"] = c["arch"] == "bitnet"
    stop = Stop()
    progress_log = open(os.path.join(job_dir, "log.jsonl"), "a")

    def trainable(name):
        if name in ("token_embd.weight", "output.weight"):
            return job["train_embeddings"]
        if name.endswith("norm.weight"):
            return not job["freeze_norms"]
        return True

    tensors = load_tensors(os.path.join(job_dir, "base.gguf"))
    model = Model(c, tensors, trainable)
    teacher = None
    if job["distill"]:
        teacher = Model(c, tensors, lambda _: False)
        teacher.to(torch.bfloat16 if job["bf16"] else torch.float32)
    del tensors
    train_tokens = np.fromfile(os.path.join(job_dir, "train.u32"), dtype=np.uint32)
    held = np.fromfile(os.path.join(job_dir, "heldout.u32"), dtype=np.uint32)
    seq = job["seq"]
    if len(train_tokens) < seq + 2:
        sys.exit(f"error: the training text has {len(train_tokens)} tokens, fewer than one sequence of {seq} + 1")
    ratios = layer_ratios(job)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=job["lr"], betas=(0.9, 0.95), weight_decay=0.0)
    per_step = seq * job["batch"] * job["accumulate"]
    total = max(1, job["tokens"] // per_step)
    ckpt = os.path.join(job_dir, "checkpoint.pt")
    step, elapsed = 0, 0.0
    if os.path.exists(ckpt):
        state = torch.load(ckpt, weights_only=False)
        with torch.no_grad():
            for n, v in state["params"].items():
                model.t(n).copy_(v)
        opt.load_state_dict(state["opt"])
        step, elapsed = state["step"], state["elapsed"]
    progress = Progress(total)
    if step == 0:
        nll = evaluate(model, held, ratios, job, job["eval_tokens"])
        dense = evaluate(model, held, None, job, job["eval_tokens"])
        record = {"step": 0, "tokens": 0, "eval_ppl": math.exp(nll), "eval_dense_ppl": math.exp(dense), "elapsed_s": 0.0}
        progress_log.write(json.dumps(record) + "\n")
        progress_log.flush()
        progress.say(f"held-out perplexity before training: {math.exp(nll):.2f} at S, {math.exp(dense):.2f} dense")
    else:
        progress.say(f"resumed at step {step} of {total}")
    deadline = time.time() + job["minutes"] * 60 if job.get("minutes") else None
    loss_avg = None
    started = time.time() - elapsed
    t_rate, tok_rate = time.time(), 0
    while step < total and not stop.asked:
        if deadline is not None and time.time() >= deadline:
            progress.say("time budget reached")
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, job["warmup"], job["lr"])
        step_loss = 0.0
        for micro in range(job["accumulate"]):
            rows = batch_at(train_tokens, step, micro, job)
            inp, tgt = rows[:, :-1], rows[:, 1:]
            with autocast(job):
                logits = model(inp, ratios, job["act"], job["outliers"]).float()
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(inp, None, job["act"], job["outliers"]).float()
                    loss = F.kl_div(
                        F.log_softmax(logits, -1).flatten(0, 1),
                        F.log_softmax(t_logits, -1).flatten(0, 1),
                        log_target=True,
                        reduction="batchmean",
                    )
                else:
                    loss = F.cross_entropy(logits.flatten(0, 1), tgt.flatten())
            (loss / job["accumulate"]).backward()
            step_loss += loss.item() / job["accumulate"]
        torch.nn.utils.clip_grad_norm_(params, job["clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tok_rate += per_step
        loss_avg = step_loss if loss_avg is None else 0.9 * loss_avg + 0.1 * step_loss
        now = time.time()
        rate = tok_rate / max(1e-9, now - t_rate)
        left = (total - step) * per_step / max(1e-9, rate)
        if deadline is not None:
            left = min(left, max(0.0, deadline - now))
        progress.show(step, loss_avg, rate, left)
        record = {"step": step, "tokens": step * per_step, "loss": step_loss, "lr": opt.param_groups[0]["lr"], "elapsed_s": now - started}
        if step % job["eval_every"] == 0 or step == total:
            nll = evaluate(model, held, ratios, job, job["eval_tokens"])
            record["eval_ppl"] = math.exp(nll)
            progress.say(f"step {step}: held-out perplexity at S {math.exp(nll):.2f} (train loss {loss_avg:.3f}, {rate:.0f} tok/s)")
        if job.get("stop_at") and step >= job["stop_at"]:
            stop.asked = True
        if step % job["checkpoint_every"] == 0:
            save_checkpoint(ckpt, model, opt, step, {"elapsed": now - started})
        progress_log.write(json.dumps(record) + "\n")
        progress_log.flush()
    save_checkpoint(ckpt, model, opt, step, {"elapsed": time.time() - started})
    if loss_avg is not None:
        progress.show(step, loss_avg, 0.0, 0.0, force=True)
    if stop.asked:
        progress.say(f"stopped at step {step}; checkpoint saved (resume with --resume {job_dir})")
        sys.exit(130)
    write_tensors(os.path.join(job_dir, "trained.gguf"), model, [n for n in model.names if model.t(n).requires_grad])
    progress.say(f"trained {step} steps, {step * per_step} tokens, in {(time.time() - started) / 60:.1f} min")


def logits(job_dir, ids_path, out_path, sparsity, profile=False):
    """Next-token logits of the base weights at `sparsity` (or, with `profile`, at the job's
    per-layer ratios) (f32, no autocast) for one sequence: the trainer's side of the train/infer
    parity test."""
    job = json.load(open(os.path.join(job_dir, "job.json")))
    torch.set_num_threads(job["threads"])
    c = job["model"]
    c["ternary"] = c["arch"] == "bitnet"
    model = Model(c, load_tensors(os.path.join(job_dir, "base.gguf")), lambda _: False)
    ids = torch.from_numpy(np.fromfile(ids_path, dtype=np.uint32).astype(np.int64))[None]
    n = c["n_layers"]
    ratios = [(sparsity,) * 4] * n if sparsity > 0 else None
    if profile:
        ratios = layer_ratios(job)
    with torch.no_grad():
        out = model(ids, ratios, job["act"], job["outliers"])[0].float().numpy()
    out.astype(np.float32).tofile(out_path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("job_dir")
    lg = sub.add_parser("logits")
    lg.add_argument("job_dir")
    lg.add_argument("ids")
    lg.add_argument("out")
    lg.add_argument("--sparsity", type=float, default=0.0)
    lg.add_argument("--profile", action="store_true", help="the job's per-layer ratios")
    a = ap.parse_args()
    if a.cmd == "train":
        train(a.job_dir)
    else:
        logits(a.job_dir, a.ids, a.out, a.sparsity, a.profile)


if __name__ == "__main__":
    main()
