"""Reload latency at the wire: for each hibernated approval, the time from the POST /events request
arriving at the server's port to the first SSE `data:` frame leaving it (tcpdump on loopback, as
root), beside what the bench's lean client (leasehold_kit.reload) measured, and the split at the
POST's answer.

    .venv/bin/python bench/reload_wire.py DIST [COUNT]     (DIST: a scripts/build-release folder)

Loopback only; bounded (COUNT handlers, 30 s per stream at most). A stream that received nothing
within 30 s is counted as a client miss and left out of the client figures."""
import subprocess, sys, time, os, signal, json
import httpx
from pathlib import Path
from leasehold_kit.reload import Sender, event_to_first_stream_event
from leasehold_kit.replicas import launch

DIST, COUNT = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300
ROOT = str(Path(__file__).resolve().parents[1])
PORT = 18555
pg = "/tmp/leasehold-reload-wire-pg"
subprocess.run([f"{ROOT}/scripts/pg", "destroy", pg], capture_output=True)
url = subprocess.run([f"{ROOT}/scripts/pg", "start", pg, "--durable"], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
server = launch(Path("/tmp/leasehold-reload-wire-server.log"), args=["--database-url", url, "--port", PORT, "--idle-timeout", "300ms"],
                binary=f"{DIST}/leasehold", inherit=True, truncate=True)
base = f"http://127.0.0.1:{PORT}"
import atexit
atexit.register(lambda: (server.poll() is None and server.kill()))
for _ in range(200):
    try:
        if httpx.get(f"{base}/health").status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(0.1)
ids = []
for i in range(COUNT):
    r = httpx.post(f"{base}/workflows/approval/run-nowait", json={"start_event": {"request": f"r{i}"}}); ids.append(r.json()["handler_id"])
deadline = time.monotonic() + 120
while time.monotonic() < deadline and not all(httpx.get(f"{base}/cluster/handlers/{h}").json().get("hibernated") for h in ids):
    time.sleep(0.3)
CAP = "/tmp/leasehold-reload-wire.pcap"
cap = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-w", CAP, f"tcp port {PORT}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1.0)
client = []
sender = Sender(base)  # one kept-alive connection, as the bench's
for h in ids:
    got = event_to_first_stream_event(base, h, {"type": "HumanResponseEvent", "value": {"response": "yes"}}, sender)
    client.append(float("inf") if got["seconds"] is None else got["seconds"] * 1000)
sender.close()
time.sleep(1.0)
cap.send_signal(signal.SIGINT); cap.wait()
server.terminate(); server.wait()
subprocess.run([f"{ROOT}/scripts/pg", "destroy", pg], capture_output=True)
out = subprocess.run(["tshark", "-r", CAP, "-T", "fields", "-e", "frame.time_epoch", "-e", "tcp.stream",
                      "-e", "tcp.srcport", "-e", "tcp.payload"], capture_output=True, text=True).stdout
streams = {}   # tcp stream -> handler of its SSE GET
posts = {}     # handler -> time the POST arrived
responses = {} # handler -> time the POST's response left
firsts = {}    # handler -> time the first data: frame left
pending_post = {}  # tcp stream -> handler whose POST awaits its response
for line in out.splitlines():
    parts = line.split("\t")
    if len(parts) < 4 or not parts[3]:
        continue
    ts, stream, src, payload = float(parts[0]), parts[1], int(parts[2]), bytes.fromhex(parts[3].replace(":", ""))
    text = payload.decode("latin-1")
    if src != PORT:
        if text.startswith("GET /events/"):
            streams[stream] = text.split()[1].split("?")[0].rsplit("/", 1)[1]
        elif text.startswith("POST /events/"):
            h = text.split()[1].rsplit("/", 1)[1]
            posts[h] = ts; pending_post[stream] = h
    else:
        if stream in pending_post and text.startswith("HTTP/1.1"):
            responses[pending_post.pop(stream)] = ts
        h = streams.get(stream)
        if h and "data:" in text and h not in firsts and h in posts:
            firsts[h] = ts
def pct(values, p):
    v = sorted(values); return round(v[min(len(v) - 1, int(len(v) * p / 100))], 2)
ok = [c for c in client if c != float("inf")]
wire = [(firsts[h] - posts[h]) * 1000 for h in ids if h in firsts and h in posts]
answer = [(responses[h] - posts[h]) * 1000 for h in ids if h in responses and h in posts]
after_answer = [(firsts[h] - responses[h]) * 1000 for h in ids if h in firsts and h in responses]
print(json.dumps({"count": len(ids), "matched": len(wire),
                  "client_missed": sum(1 for c in client if c == float("inf")),
                  "client_ms": {"p50": pct(ok, 50), "p90": pct(ok, 90), "p99": pct(ok, 99), "max": round(max(ok), 2)},
                  "wire_ms": {"p50": pct(wire, 50), "p90": pct(wire, 90), "p99": pct(wire, 99), "max": round(max(wire), 2)},
                  "post_answer_ms": {"p50": pct(answer, 50), "p99": pct(answer, 99)},
                  "answer_to_first_event_ms": {"p50": pct(after_answer, 50), "p99": pct(after_answer, 99)}}))
