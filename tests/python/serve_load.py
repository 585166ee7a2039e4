"""`qsparse serve` under load and faults for a bounded time, on loopback with the real model:
8 clients for DURATION seconds (default 60), each sending a seeded mix of non-streaming and
streaming completions, streams it drops midway, malformed JSON and oversized bodies. Every
well-formed request must be answered once and correctly, or refused with 503 + Retry-After when
the queue is full; bad bodies get 400/413; the server's resident memory must stay flat; and it
must answer normally afterwards. Prints the counts and the peak RSS.
Usage: serve_load.py QSPARSE_BINARY MODEL_PATH [DURATION]. Exit 0 when all held."""

import http.client
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time

binary, model = sys.argv[1], sys.argv[2]
duration = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


proc = subprocess.Popen([binary, "serve", "-m", model, "--port", "0", "--queue", "4",
                         "--max-tokens", "64", "--ctx", "512"],
                        stderr=subprocess.PIPE, text=True)
host = port = None
deadline = time.time() + 120
while time.time() < deadline:
    line = proc.stderr.readline()
    m = re.search(r"http://([0-9.]+):(\d+)/v1", line)
    if m:
        host, port = m.group(1), int(m.group(2))
        break
    if proc.poll() is not None:
        break
if port is None:
    raise SystemExit("the server did not start")
threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()


def rss_kb(field):
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def request(method, path, body=b"", timeout=120):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    c.request(method, path, body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.getheader("Retry-After"), data


PROMPTS = ["Once upon a time", "The capital of France is", "List three colours:", "def add(a, b):"]
lock = threading.Lock()
counts = {}
problems = []


def note(kind, outcome):
    with lock:
        counts[(kind, outcome)] = counts.get((kind, outcome), 0) + 1


def problem(what):
    with lock:
        problems.append(what)


def client(seed):
    rng = random.Random(seed)
    end = time.time() + duration
    while time.time() < end:
        kind = rng.choices(["whole", "stream", "drop", "bad_json", "oversized"],
                           [40, 30, 10, 10, 10])[0]
        n = rng.randint(1, 24)
        body = json.dumps({"prompt": rng.choice(PROMPTS), "max_tokens": n, "temperature": 0.7,
                           "seed": rng.randint(0, 1 << 30), "stream": kind in ("stream", "drop")})
        try:
            if kind == "bad_json":
                status, _, _ = request("POST", "/v1/completions", b'{"prompt": "x", "max_tokens": ')
                note(kind, status)
                if status != 400:
                    problem(f"bad JSON answered {status}")
            elif kind == "oversized":
                status, _, _ = request("POST", "/v1/completions", b" " * (1 << 20) + b"{}")
                note(kind, status)
                if status != 413:
                    problem(f"an oversized body answered {status}")
            elif kind == "whole":
                status, retry, data = request("POST", "/v1/completions", body.encode())
                note(kind, status)
                if status == 503:
                    time.sleep(rng.uniform(0.2, 1.0))  # as Retry-After asks
                if status == 200:
                    r = json.loads(data)
                    used = r["usage"]["completion_tokens"]
                    if not (1 <= used <= n) or len(r["choices"]) != 1:
                        problem(f"a completion of {n} tokens answered {used}")
                elif status != 503 or retry != "1":
                    problem(f"a completion answered {status} (Retry-After {retry})")
            elif kind == "stream":
                c = http.client.HTTPConnection(host, port, timeout=120)
                c.request("POST", "/v1/completions", body=body.encode(),
                          headers={"Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read().decode()
                c.close()
                note(kind, r.status)
                if r.status == 503:
                    time.sleep(rng.uniform(0.2, 1.0))
                if r.status == 200:
                    events = [l[6:] for l in data.splitlines() if l.startswith("data: ")]
                    if not events or events[-1] != "[DONE]" or events.count("[DONE]") != 1:
                        problem(f"a stream ended without exactly one [DONE]: {events[-2:]}")
                elif r.status != 503 or r.getheader("Retry-After") != "1":
                    problem(f"a stream answered {r.status}")
            else:  # drop: read the first event, then vanish
                s = socket.create_connection((host, port), timeout=120)
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          + f"Content-Length: {len(body)}\r\n\r\n".encode() + body.encode())
                got = b""
                while b"data:" not in got and b"503" not in got[:20]:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                s.close()
                if b"data:" in got:
                    note(kind, "dropped mid-stream")
                else:
                    note(kind, got[9:12].decode(errors="replace") or "closed")
                    time.sleep(rng.uniform(0.2, 1.0))
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            problem(f"{kind}: {e!r}")


status, _, data = request("POST", "/v1/completions",
                          json.dumps({"prompt": "Hello", "max_tokens": 8}).encode())
check(status == 200, "warm-up request")
rss_start = rss_kb("VmRSS")
threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
t0 = time.time()
[t.start() for t in threads]
samples = []
while any(t.is_alive() for t in threads):
    time.sleep(1)
    samples.append(rss_kb("VmRSS"))
[t.join() for t in threads]
elapsed = time.time() - t0
time.sleep(1)
rss_end = rss_kb("VmRSS")
peak = rss_kb("VmHWM")
total = sum(counts.values())
print(f"     {total} requests in {elapsed:.0f} s: "
      + ", ".join(f"{k} {o}: {v}" for (k, o), v in sorted(counts.items(), key=str)))
print(f"     resident memory {rss_start // 1024} MB after warm-up, {rss_end // 1024} MB after the "
      f"load (largest sample {max(samples) // 1024} MB); peak RSS {peak // 1024} MB")
check(not problems, f"every request answered once and correctly: {problems[:5]}")
check(counts.get(("whole", 200), 0) > 0 and counts.get(("stream", 200), 0) > 0,
      "completions and streams were served")
check(rss_end <= rss_start * 1.25 + 64 * 1024, "resident memory stays flat")
status, _, data = request("POST", "/v1/completions",
                          json.dumps({"prompt": "Hello", "max_tokens": 4, "temperature": 0}).encode())
check(status == 200 and json.loads(data)["usage"]["completion_tokens"] >= 1,
      "it answers normally after the load")
status, _, data = request("GET", "/health")
check(status == 200 and json.loads(data)["status"] == "ok", "healthy after the load")
proc.send_signal(2)
check(proc.wait(timeout=60) == 0, "SIGINT ends it cleanly")
print("FAILED: " + "; ".join(failures) if failures else "OK")
sys.exit(1 if failures else 0)
