#!/usr/bin/env python3
"""Test HTTP server for drvrun specs: serves a directory on 127.0.0.1.

Prints the port it listens on as the first line of stdout. Special paths
(NAME is a file in the served directory):
  /status/CODE           answers CODE with a short body
  /flaky/N/NAME          answers 500 the first N times for this path, then NAME
  /slow/NAME             sends NAME in small chunks with pauses
  /truncated/NAME        promises NAME's full length, sends half, closes
  /norange/NAME          ignores Range headers (always 200 with the whole file)
  /stats                 JSON {path: bytes sent} of everything served so far
Range requests (206) are honoured elsewhere.
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = sys.argv[1] if len(sys.argv) > 1 else "."
SENT = {}
HITS = {}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def count(self, n):
        with LOCK:
            SENT[self.path] = SENT.get(self.path, 0) + n

    def send_body(self, code, body, ctype="text/plain", extra=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.count(len(body))

    def read_file(self, name):
        path = os.path.join(ROOT, os.path.basename(name))
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if parts[0] == "stats":
            with LOCK:
                body = json.dumps(SENT).encode()
            return self.send_body(200, body, "application/json")
        if parts[0] == "status":
            return self.send_body(int(parts[1]), b"status\n")
        if parts[0] == "flaky":
            with LOCK:
                HITS[self.path] = HITS.get(self.path, 0) + 1
                hit = HITS[self.path]
            if hit <= int(parts[1]):
                return self.send_body(500, b"try again\n")
            parts = parts[2:]
        mode = parts[0] if parts[0] in ("slow", "truncated", "norange") else None
        name = parts[-1]
        data = self.read_file(name)
        if data is None:
            return self.send_body(404, b"not found\n")
        if mode == "slow":
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for i in range(0, len(data), 1024):
                self.wfile.write(data[i:i + 1024])
                self.wfile.flush()
                self.count(len(data[i:i + 1024]))
                time.sleep(0.2)
            return None
        if mode == "truncated":
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.count(len(data) // 2)
            self.close_connection = True
            return None
        rng = self.headers.get("Range")
        if rng and mode != "norange" and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                return self.send_body(416, b"", extra={"Content-Range": "bytes */%d" % len(data)})
            return self.send_body(206, data[start:], "application/octet-stream",
                                  {"Content-Range": "bytes %d-%d/%d" % (start, len(data) - 1, len(data))})
        return self.send_body(200, data, "application/octet-stream")


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # clients that hang up early are part of the tests


def main():
    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
