"""`qsparse serve` against the official `openai` client, on loopback with the real model:
models, non-streaming and streaming chat, completions with stop strings, the qsparse extension,
8 concurrent clients, a client disconnecting mid-stream (its generation must stop), bad requests
(400/404/405/413 with OpenAI error bodies), a full queue (503 + Retry-After), and graceful
shutdown on SIGINT. Usage: serve_openai.py QSPARSE_BINARY MODEL_PATH. Exit 0 when all held."""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import openai

binary, model = sys.argv[1], sys.argv[2]
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def start(*extra):
    p = subprocess.Popen(
        [binary, "serve", "-m", model, "--port", "0", *extra],
        stderr=subprocess.PIPE, text=True)
    line = ""
    deadline = time.time() + 120
    while time.time() < deadline:
        line = p.stderr.readline()
        m = re.search(r"http://([0-9.]+):(\d+)/v1", line)
        if m:
            # Keep draining stderr so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, m.group(1), int(m.group(2))
        if p.poll() is not None:
            break
    raise SystemExit(f"the server did not start: {line!r}")


def raw(host, port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection(host, port, timeout=120)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict(r.getheaders()), data


proc, host, port = start("--ctx", "512")
base = f"http://{host}:{port}/v1"
client = openai.OpenAI(base_url=base, api_key="none", max_retries=0, timeout=120)
MSG = [{"role": "user", "content": "What is the capital of France?"}]

# Models and health.
ids = [m.id for m in client.models.list().data]
check(ids == ["SmolLM2-135M-Instruct.Q4_1"] or len(ids) == 1, f"models.list -> {ids}")
status, _, body = raw(host, port, "GET", "/health")
check(status == 200 and json.loads(body)["status"] == "ok", "GET /health")

# Non-streaming chat.
r = client.chat.completions.create(model=ids[0], messages=MSG, max_tokens=16, temperature=0)
text = r.choices[0].message.content
dense_answer = text
check("Paris" in text, f"chat answer mentions Paris: {text!r}")
check(r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length",
      f"usage {r.usage} finish {r.choices[0].finish_reason}")
check(r.usage.prompt_tokens > 10 and r.usage.total_tokens == r.usage.prompt_tokens + 16, "usage totals")

# Streaming chat gives the same greedy text, token by token.
chunks = list(client.chat.completions.create(
    model=ids[0], messages=MSG, max_tokens=16, temperature=0, stream=True,
    stream_options={"include_usage": True}))
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(streamed == text, f"streamed == non-streamed: {streamed!r}")
check(sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 8, "streamed in many chunks")
check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16, "stream usage chunk")

# Completions with a stop string; seed reproduces a sampled completion.
c = client.completions.create(model=ids[0], prompt="The capital of France is", max_tokens=30,
                              temperature=0, stop=["."])
check("." not in c.choices[0].text and c.choices[0].finish_reason == "stop",
      f"stop string cut: {c.choices[0].text!r} ({c.choices[0].finish_reason})")
a = client.completions.create(model=ids[0], prompt="Once upon a time", max_tokens=12, temperature=1.0, seed=7)
b = client.completions.create(model=ids[0], prompt="Once upon a time", max_tokens=12, temperature=1.0, seed=7)
check(a.choices[0].text == b.choices[0].text, "same seed, same completion")

# The qsparse extension.
s = client.chat.completions.create(model=ids[0], messages=MSG, max_tokens=8, temperature=0,
                                   extra_body={"qsparse": {"sparsity": 0.5}})
check(s.usage.completion_tokens >= 1, f"sparsity 0.5 via extension: {s.choices[0].message.content!r}")
sparse_answer = s.choices[0].message.content
try:
    client.chat.completions.create(model=ids[0], messages=MSG, extra_body={"qsparse": {"sparsity": 1.5}})
    check(False, "sparsity 1.5 refused")
except openai.BadRequestError as e:
    check("sparsity" in str(e), "sparsity 1.5 refused with 400")

# Log-probabilities through the client: the chosen token's and the top candidates, greedy
# tokens first among them; completions in their own form.
r = client.chat.completions.create(model=ids[0], messages=MSG, max_tokens=4, temperature=0,
                                   logprobs=True, top_logprobs=3)
lp = r.choices[0].logprobs.content
check(len(lp) == 4 and all(len(t.top_logprobs) == 3 for t in lp), f"chat logprobs: {lp!r}")
check(all(t.top_logprobs[0].token == t.token and t.logprob <= 0 for t in lp), "greedy = top candidate")
check("".join(t.token for t in lp) == r.choices[0].message.content, "logprob tokens spell the text")
c = client.completions.create(model=ids[0], prompt="The capital of France is", max_tokens=3,
                              temperature=0, logprobs=2)
check(len(c.choices[0].logprobs.tokens) == 3 and len(c.choices[0].logprobs.top_logprobs[0]) == 2,
      f"completion logprobs: {c.choices[0].logprobs!r}")
# llama.cpp's sampling extensions are honoured; an OpenAI parameter the server lacks is refused.
k = client.chat.completions.create(model=ids[0], messages=MSG, max_tokens=4, temperature=1.0, seed=3,
                                   extra_body={"top_k": 1})
check(k.choices[0].message.content == r.choices[0].message.content, "top_k 1 is greedy")
for params, name in [({"frequency_penalty": 0.5}, "frequency_penalty"),
                     ({"response_format": {"type": "json_object"}}, "response_format")]:
    try:
        client.chat.completions.create(model=ids[0], messages=MSG, max_tokens=2, **params)
        check(False, f"{name} refused")
    except openai.BadRequestError as e:
        check(name in str(e), f"{name} refused with 400: {e}")

# The model by id, tokenize and detokenize (llama.cpp's forms).
m = client.models.retrieve(ids[0])
check(m.id == ids[0], f"models.retrieve -> {m.id}")
status, _, _ = raw(host, port, "GET", "/v1/models/no-such-model")
check(status == 404, f"unknown model id -> {status}")
status, _, data = raw(host, port, "POST", "/tokenize", json.dumps({"content": "The capital of France"}).encode())
toks = json.loads(data).get("tokens", [])
check(status == 200 and len(toks) >= 4, f"tokenize -> {status} {toks}")
status, _, data = raw(host, port, "POST", "/detokenize", json.dumps({"tokens": toks}).encode())
check(status == 200 and json.loads(data).get("content") == "The capital of France",
      f"detokenize round trip -> {data[:80]!r}")
status, _, data = raw(host, port, "POST", "/detokenize", json.dumps({"tokens": [10**9]}).encode())
check(status == 400 and b"vocabulary" in data, f"detokenize of a bad id -> {status}")

# 8 concurrent clients all get answers.
results = [None] * 8


def worker(i):
    try:
        r = client.chat.completions.create(
            model=ids[0], max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": f"Count to {i + 2}."}])
        results[i] = r.usage.completion_tokens
    except Exception as e:  # noqa: BLE001
        results[i] = repr(e)


threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
t0 = time.time()
[t.start() for t in threads]
[t.join() for t in threads]
check(all(isinstance(x, int) and x >= 1 for x in results), f"8 concurrent clients: {results}")
print(f"     8 concurrent requests in {time.time() - t0:.1f} s")

# A client that disconnects mid-stream: its generation stops.
before = json.loads(raw(host, port, "GET", "/health")[2])["cancelled"]
sock = socket.create_connection((host, port))
body = json.dumps({"messages": [{"role": "user", "content": "Write a very long story."}],
                   "max_tokens": 400, "stream": True}).encode()
sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
got = b""
while got.count(b"data:") < 5:
    got += sock.recv(4096)
sock.close()
deadline = time.time() + 30
cancelled = before
while time.time() < deadline and cancelled == before:
    time.sleep(0.2)
    cancelled = json.loads(raw(host, port, "GET", "/health")[2])["cancelled"]
check(cancelled == before + 1, f"disconnect mid-stream cancels the generation ({before} -> {cancelled})")

# A client that goes away while waiting for a non-streaming answer: its generation stops too,
# so the next request is not kept waiting behind it.
before = cancelled
sock = socket.create_connection((host, port))
body = json.dumps({"prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0,
                   "stop": ["never-in-the-text"]}).encode()
sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
time.sleep(0.3)
sock.close()
t0 = time.time()
r = client.completions.create(model=ids[0], prompt="Hello", max_tokens=4, temperature=0)
waited = time.time() - t0
cancelled = json.loads(raw(host, port, "GET", "/health")[2])["cancelled"]
check(cancelled == before + 1 and waited < 3,
      f"a vanished non-streaming client's generation stops: next request in {waited:.1f} s, "
      f"cancelled {before} -> {cancelled}")

# Bad requests.
for name, body, want in [
    ("malformed JSON", b"{not json", 400),
    ("wrong type", json.dumps({"messages": MSG, "max_tokens": "ten"}).encode(), 400),
    ("missing messages", b"{}", 400),
    ("temperature 5", json.dumps({"messages": MSG, "temperature": 5}).encode(), 400),
    ("max_tokens above the limit", json.dumps({"messages": MSG, "max_tokens": 100000}).encode(), 400),
    ("prompt beyond the context", json.dumps({"messages": [{"role": "user", "content": "word " * 2000}]}).encode(), 400),
    ("body over 1 MiB", b'{"messages": "' + b"x" * (2 << 20) + b'"}', 413),
]:
    status, _, data = raw(host, port, "POST", "/v1/chat/completions", body,
                          {"Content-Type": "application/json"})
    err = json.loads(data).get("error", {}) if data else {}
    check(status == want and err.get("message"), f"{name} -> {status} {err.get('message', '')[:70]!r}")
status, _, _ = raw(host, port, "GET", "/v1/nothing")
check(status == 404, "unknown path -> 404")
status, _, _ = raw(host, port, "GET", "/v1/chat/completions")
check(status == 405, "wrong method -> 405")
try:
    client.chat.completions.create(model=ids[0], messages=[{"role": "user", "content": "word " * 2000}])
    check(False, "context exceeded through the client")
except openai.BadRequestError as e:
    check(e.code == "context_length_exceeded", f"context_length_exceeded: {e.code}")

# Graceful shutdown.
proc.send_signal(signal.SIGINT)
try:
    code = proc.wait(timeout=30)
except subprocess.TimeoutExpired:
    proc.kill()
    code = None
check(code == 0, f"SIGINT ends the server cleanly (exit {code})")

# With --api-key every endpoint but /health needs the key; --cors lets a browser origin in
# (preflight needs no key: browsers send none).
proc, host, port = start("--api-key", "s3cret", "--cors", "http://app.test")
status, headers, _ = raw(host, port, "OPTIONS", "/v1/chat/completions",
                         headers={"Origin": "http://app.test",
                                  "Access-Control-Request-Method": "POST"})
check(status == 204 and headers.get("Access-Control-Allow-Origin") == "http://app.test"
      and "POST" in headers.get("Access-Control-Allow-Methods", "")
      and "Authorization" in headers.get("Access-Control-Allow-Headers", ""),
      f"CORS preflight -> {status} {headers}")
status, _, _ = raw(host, port, "GET", "/health")
check(status == 200, f"/health stays open -> {status}")
status, _, data = raw(host, port, "GET", "/v1/models")
check(status == 401 and b"invalid_api_key" in data, f"no key -> {status}")
status, _, _ = raw(host, port, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"})
check(status == 401, f"a wrong key -> {status}")
keyed = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="s3cret", max_retries=0, timeout=120)
check(len(keyed.models.list().data) == 1, "the right key is let in")
status, headers, _ = raw(host, port, "GET", "/v1/models", headers={"Authorization": "Bearer s3cret"})
check(headers.get("Access-Control-Allow-Origin") == "http://app.test", f"CORS header: {headers}")
reply = keyed.completions.create(model="x", prompt="The capital of France is", max_tokens=5,
                                 temperature=0)
status, headers, data = raw(host, port, "GET", "/metrics", headers={"Authorization": "Bearer s3cret"})
text = data.decode()
values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
check(status == 200 and headers.get("Content-Type", "").startswith("text/plain")
      and float(values.get("qsparse_completions_total", 0)) == 1
      and float(values.get("qsparse_completion_tokens_total", 0)) == reply.usage.completion_tokens
      and float(values.get('qsparse_http_responses_total{status="401"}', 0)) == 2
      and float(values.get("qsparse_time_to_first_token_seconds_total", 0)) > 0
      and values.get("qsparse_queue_depth") == "0",
      f"/metrics after one completion:\n{text}")
proc.send_signal(signal.SIGINT)
proc.wait(timeout=30)

# --sparsity-profile: requests that name no sparsity run the profile, the others uniform S. A
# profile whose ratios are all 0 at the bytes of S = 0.5 answers as the dense model does.
import hashlib
import tempfile
sha = hashlib.sha256(open(model, "rb").read()).hexdigest()
profile_path = os.path.join(tempfile.mkdtemp(), "zeros.json")
with open(profile_path, "w") as f:
    json.dump({"version": 1, "model": os.path.basename(model), "model_sha256": sha,
               "sparsity": 0.5, "select": "magnitude", "calibration_text": "test",
               "calibration_tokens": 0, "layers": [[0.0] * 4] * 30}, f)
proc, host, port = start("--ctx", "512", "--sparsity-profile", profile_path)
client = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="none", max_retries=0, timeout=120)
r = client.chat.completions.create(model=ids[0], messages=MSG, max_tokens=16, temperature=0)
check(r.choices[0].message.content == dense_answer,
      f"the profile answers a request without sparsity: {r.choices[0].message.content!r}")
r = client.chat.completions.create(model=ids[0], messages=MSG, max_tokens=8, temperature=0,
                                   extra_body={"qsparse": {"sparsity": 0.5}})
check(r.choices[0].message.content == sparse_answer,
      f"a request naming sparsity 0.5 runs uniform: {r.choices[0].message.content!r}")
proc.send_signal(signal.SIGINT)
proc.wait(timeout=30)

# --log-format json: every line on stderr is one JSON object.
log_path = os.path.join(tempfile.mkdtemp(), "serve.log")
with open(log_path, "w") as log_file:
    p = subprocess.Popen([binary, "serve", "-m", model, "--port", "0", "--log-format", "json"],
                         stderr=log_file)
deadline = time.time() + 120
url = None
while url is None and time.time() < deadline and p.poll() is None:
    time.sleep(0.1)
    for line in open(log_path):
        if line.startswith("{") and json.loads(line).get("event") == "listening":
            url = json.loads(line)["url"]
client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
client.completions.create(model=ids[0], prompt="Hello", max_tokens=3, temperature=0)
p.send_signal(signal.SIGINT)
p.wait(timeout=30)
lines = [l for l in open(log_path).read().splitlines() if l.strip()]
try:
    events = [json.loads(l) for l in lines]
    ok = (all(isinstance(e, dict) for e in events)
          and any(e.get("event") == "generation" and e.get("completion_tokens") == 3 for e in events)
          and any(e.get("event") == "request" and e.get("path") == "/v1/completions"
                  and e.get("status") == 200 and e.get("ms", 0) > 0 for e in events)
          and events[-1].get("event") == "stopped")
except ValueError:
    ok = False
check(ok, "--log-format json: one object a line:\n" + "\n".join(lines))

# A full queue is refused at once with 503 and Retry-After.
proc, host, port = start("--queue", "1")
codes = []


def hammer():
    body = json.dumps({"messages": MSG, "max_tokens": 64}).encode()
    status, headers, _ = raw(host, port, "POST", "/v1/chat/completions", body)
    codes.append((status, headers.get("Retry-After")))


threads = [threading.Thread(target=hammer) for _ in range(6)]
[t.start() for t in threads]
[t.join() for t in threads]
check(any(s == 503 and ra == "1" for s, ra in codes) and any(s == 200 for s, _ in codes),
      f"queue of 1 under 6 requests: {sorted(codes)}")
proc.send_signal(signal.SIGTERM)
check(proc.wait(timeout=60) == 0, "SIGTERM ends the server cleanly")

# SIGTERM during generation: the requests in progress (streaming and not) are answered in full,
# then the process exits 0.
proc, host, port = start()
client = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="none", max_retries=0, timeout=120)
answers = {}


def long_request(kind):
    try:
        if kind == "stream":
            chunks = list(client.completions.create(
                model=ids[0], prompt="Once upon a time", max_tokens=48, temperature=0,
                stop=["never-in-the-text"], stream=True, stream_options={"include_usage": True}))
            answers[kind] = chunks[-1].usage.completion_tokens
        else:
            r = client.completions.create(model=ids[0], prompt="Once upon a time", max_tokens=48,
                                          temperature=0, stop=["never-in-the-text"])
            answers[kind] = r.usage.completion_tokens
    except Exception as e:  # noqa: BLE001 - any failure is the finding
        answers[kind] = repr(e)


threads = [threading.Thread(target=long_request, args=(k,)) for k in ("stream", "whole")]
[t.start() for t in threads]
time.sleep(0.3)
proc.send_signal(signal.SIGTERM)
[t.join() for t in threads]
code = proc.wait(timeout=60)
check(code == 0 and answers == {"stream": 48, "whole": 48},
      f"SIGTERM during generation: in-flight requests finished ({answers}), exit {code}")

print("FAILED: " + "; ".join(failures) if failures else "OK")
sys.exit(1 if failures else 0)
