"""Drive `qsparse chat` through a pseudo-terminal as a person would: ask, read the streamed
reply, use slash commands, type while a reply streams (the keys must not land inside it),
interrupt a long reply with Ctrl-C (the program must survive it), paste a block of several
lines (one message), quit with Ctrl-D. Usage: chat_pty.py QSPARSE_BINARY MODEL_PATH. Exit 0 when every step held;
the transcript is printed either way."""

import os
import pty
import select
import sys
import termios
import time

binary, model = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.execv(binary, [binary, "chat", "-m", model, "--temp", "0", "--max-tokens", "400"])

transcript = bytearray()


def read_until(needle, timeout=120.0, start=None):
    """Read until `needle` appears after byte offset `start`; return the offset after it."""
    start = len(transcript) if start is None else start
    end = time.time() + timeout
    while True:
        at = transcript.find(needle.encode(), start)
        if at >= 0:
            return at + len(needle)
        left = end - time.time()
        if left <= 0:
            fail(f"timed out waiting for {needle!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                fail(f"the program ended while waiting for {needle!r}")
            transcript.extend(chunk)


def send(text):
    os.write(fd, text.encode())


def fail(why):
    print(transcript.decode(errors="replace"))
    print(f"FAIL: {why}")
    sys.exit(1)


read_until("qsparse chat", start=0)
read_until("> ", start=0)

mark = len(transcript)
send("What is the capital of France?\r")
read_until("Paris", start=mark)
read_until("> ", start=mark)

mark = len(transcript)
send("/stats\r")
read_until("tok/s", start=mark)
read_until("reused from the cache", start=mark)
read_until("> ", start=mark)

# A long reply, interrupted once it has started streaming.
mark = len(transcript)
send("Write a very long story about a dragon who learns to read, with many chapters.\r")
read_until("\n", start=mark)  # the echoed line ends
started = len(transcript)
deadline = time.time() + 120
while len(transcript) < started + 40:  # some of the reply has streamed
    r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
    if not r:
        fail("the reply did not start")
    transcript.extend(os.read(fd, 4096))
send("keys-typed-meanwhile")  # typed while the reply streams: not echoed into it
time.sleep(0.5)
send("\x03")
stopped = read_until("(stopped)", start=started)
read_until("> ", start=started)
if b"keys-typed-meanwhile" in transcript[started:stopped]:
    fail("keys typed during the reply appeared inside it")

# A multi-line paste (bracketed paste, as terminals send it) is one message.
mark = len(transcript)
send("\x1b[200~I have a question about geography.\nWhat is the capital of France?\x1b[201~\r")
read_until("Paris", start=mark)
read_until("> ", start=mark)
if transcript[mark:].count(b"> ") != 1:
    fail("a pasted block of two lines was answered as more than one message")

# Still alive and answering after the interrupt.
mark = len(transcript)
send("/sparsity 0.25\r")
read_until("sparsity 0.25", start=mark)
read_until("> ", start=mark)

# Ctrl-D quits. Sent only once the line editor has the terminal in raw mode: in canonical mode
# the line discipline would turn it into an end-of-file that the switch to raw mode discards,
# and the program would wait for input forever.
end = time.time() + 30
while termios.tcgetattr(fd)[3] & termios.ICANON:
    if time.time() > end:
        fail("the line editor did not take the terminal for the next message")
    time.sleep(0.01)
send("\x04")
end = time.time() + 60
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    if time.time() > end:
        os.kill(pid, 9)
        fail("Ctrl-D did not quit within 60 s")
    r, _, _ = select.select([fd], [], [], 0.1)
    if r:
        try:
            transcript.extend(os.read(fd, 4096))
        except OSError:
            pass
code = os.waitstatus_to_exitcode(status)
print(transcript.decode(errors="replace"))
if code != 0:
    print(f"FAIL: exit code {code}")
    sys.exit(1)
print("OK")
