#!/usr/bin/env python3
"""The review's two external systems in one small server (standard library only):

- POST /classify {"document", "text"} -> {"label"}; fails with 503 on the first FAIL_FIRST calls
  for each document (default 2), as a flaky service does.
- PUT /records/{document} {"approved", "reviewer", "handler", "token"} -> 200 when kept, 409 when
  refused: a write is kept only if its token is not lower than the highest token seen for that
  document (compare-and-set by token; the only deduplication this system does).
- GET /records -> every record and the counts: {"records": {...}, "kept": n, "refused": n,
  "refusals": [...], "classify_calls": n}.

Usage: services.py [--port 8901] [--fail-first 2]. Listens on 127.0.0.1 only."""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
records: dict[str, dict] = {}
highest: dict[str, int] = {}
counts = {"kept": 0, "refused": 0, "classify_calls": 0}
refusals: list[dict] = []
calls_per_document: dict[str, int] = {}
FAIL_FIRST = 2


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def answer(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_POST(self):
        if self.path != "/classify":
            return self.answer(404, {"error": "no such path"})
        request = self.body()
        document = str(request.get("document", ""))
        with lock:
            counts["classify_calls"] += 1
            calls = calls_per_document.get(document, 0) + 1
            calls_per_document[document] = calls
        if calls <= FAIL_FIRST:
            return self.answer(503, {"error": "classifier busy"})
        text = str(request.get("text", "")).lower()
        label = "contract" if "contract" in text or "agreement" in text else "other"
        self.answer(200, {"label": label})

    def do_PUT(self):
        if not self.path.startswith("/records/"):
            return self.answer(404, {"error": "no such path"})
        document = self.path[len("/records/"):]
        request = self.body()
        token = int(request.get("token", 0))
        with lock:
            if token < highest.get(document, 0):
                counts["refused"] += 1
                refusals.append({"document": document, "token": token, "highest": highest[document]})
                return self.answer(409, {"error": "stale token", "highest": highest[document]})
            highest[document] = token
            counts["kept"] += 1
            writes = records.get(document, {}).get("writes", 0) + 1
            records[document] = {**request, "writes": writes}
        self.answer(200, {"kept": True})

    def do_GET(self):
        if self.path != "/records":
            return self.answer(404, {"error": "no such path"})
        with lock:
            self.answer(200, {"records": records, **counts, "refusals": refusals})


def main():
    global FAIL_FIRST
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8901)
    parser.add_argument("--fail-first", type=int, default=2)
    args = parser.parse_args()
    FAIL_FIRST = args.fail_first
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"services on http://127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
