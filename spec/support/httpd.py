#!/usr/bin/env python3
"""httpd.py - a small HTTP(S) server for the drv.fetch specs.

usage: httpd.py ROOT [--tls CERT KEY]

Binds 127.0.0.1 on a free port and prints the port on stdout's first line and
its pid on the second. Exits when its parent goes away, so a crashed test run
leaves nothing behind. Serves files under ROOT, and these special paths
(NAME is a file under ROOT):

  /NAME                  the file; honours "Range: bytes=A-" and "bytes=A-B" (206, 416)
  /status/CODE           an empty response with that status
  /flaky/NAME?fail=N&code=C&retry_after=S
                         status C (default 500, with "Retry-After: S" if given)
                         for the first N requests of NAME, then the file
  /slow/NAME?delay=S&chunk=B   the file, B bytes (default 16) every S seconds (default 0.1)
  /truncated/NAME?send=B&times=N
                         the file's full Content-Length, then only B bytes (default
                         half) and close; with times, only for the first N requests
                         of NAME, then the file (with Range support)
  /stall/NAME?send=B&hold=S&times=N
                         the file (with Range support), but only its first B bytes
                         (default half) of the body asked for, then nothing for S
                         seconds (default 3600) with the connection open, then close;
                         with times, only for the first N requests of NAME, then
                         the file
  /norange/NAME          the file, always 200: Range is ignored
  /badrange/NAME         the file; a Range request gets 206 with the whole file
                         ("Content-Range: bytes 0-LAST/SIZE") whatever it asked for
  /hang/N?hold=S         no response at all for S seconds (default 3600), then close
  /redirect/N?to=URL     302 to URL (N is any label)
  /loop/N                302 to itself
  /stats/NAME            "REQUESTS BYTES\\n": requests for NAME so far (any path
                         above) and body bytes of NAME written to clients
"""
import os
import ssl
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

ROOT = None
LOCK = threading.Lock()
STATS = {}   # name -> [requests, bytes]
FLAKY = {}   # (kind, name) -> failures served so far


def count(name, requests=0, nbytes=0):
    with LOCK:
        s = STATS.setdefault(name, [0, 0])
        s[0] += requests
        s[1] += nbytes


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "drvrun-httpd/1"

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass   # the client went away: an aborted download

    def log_message(self, fmt, *args):
        if os.environ.get("HTTPD_DEBUG"):
            sys.stderr.write("httpd: " + (fmt % args) + "\n")

    def empty(self, code, headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def text(self, code, body):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def file_path(self, name):
        path = os.path.realpath(os.path.join(ROOT, name))
        if not path.startswith(os.path.realpath(ROOT) + os.sep) or not os.path.isfile(path):
            return None
        return path

    def send_body(self, name, f, length, chunk=1 << 20, delay=0.0):
        if not delay and not isinstance(self.connection, ssl.SSLSocket):
            self.wfile.flush()
            offset = f.tell()
            while length > 0:
                n = os.sendfile(self.connection.fileno(), f.fileno(), offset, min(length, 1 << 30))
                if n == 0:
                    break
                count(name, nbytes=n)
                offset += n
                length -= n
            return
        while length > 0:
            data = f.read(min(chunk, length))
            if not data:
                break
            self.wfile.write(data)
            count(name, nbytes=len(data))
            length -= len(data)
            if delay:
                self.wfile.flush()
                time.sleep(delay)

    def parse_range(self, size):
        """(start, end) inclusive for a single "bytes=" range, None without one,
        or "unsatisfiable"."""
        h = self.headers.get("Range")
        if not h or not h.startswith("bytes="):
            return None
        first, _, last = h[6:].partition("-")
        if "," in h or not first.isdigit():
            return None
        start = int(first)
        end = int(last) if last.isdigit() else size - 1
        if start >= size:
            return "unsatisfiable"
        return start, min(end, size - 1)

    def serve(self, name, ranges=True, wrong_range=False, stall_after=None, hold=None, **kw):
        path = self.file_path(name)
        if path is None:
            return self.empty(404)
        size = os.path.getsize(path)
        rng = self.parse_range(size) if ranges else None
        if wrong_range:
            rng = (0, size - 1)
        if rng == "unsatisfiable":
            return self.empty(416, [("Content-Range", "bytes */%d" % size)])
        with open(path, "rb") as f:
            if rng is None:
                self.send_response(200)
                start, length = 0, size
            else:
                start, end = rng
                length = end - start + 1
                self.send_response(206)
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes" if ranges else "none")
            self.end_headers()
            f.seek(start)
            if hold is None:
                return self.send_body(name, f, length, **kw)
            self.send_body(name, f, min(length, length // 2 if stall_after is None else stall_after))
            self.wfile.flush()
            time.sleep(hold)
            self.close_connection = True
            return None

    def failures(self, kind, name):
        """How many times NAME was failed on purpose before; count this one."""
        with LOCK:
            n = FLAKY.get((kind, name), 0)
            FLAKY[(kind, name)] = n + 1
        return n

    def do_GET(self):
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = unquote(url.path).lstrip("/").split("/", 1)
        kind, rest = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
        try:
            if kind == "status":
                return self.empty(int(rest))
            if kind == "stats":
                with LOCK:
                    s = STATS.get(rest, [0, 0])
                return self.text(200, "%d %d\n" % (s[0], s[1]))
            if kind == "hang":
                time.sleep(float(q.get("hold", "3600")))
                self.close_connection = True
                return None
            if kind == "loop":
                return self.empty(302, [("Location", url.path)])
            if kind == "redirect":
                return self.empty(302, [("Location", q.get("to", "/"))])
            if kind in ("flaky", "slow", "stall", "truncated", "norange", "badrange"):
                name = rest
            else:
                name, kind = unquote(url.path).lstrip("/"), ""
            count(name, requests=1)
            if kind == "flaky":
                if self.failures(kind, name) < int(q.get("fail", "1")):
                    headers = [("Retry-After", q["retry_after"])] if "retry_after" in q else []
                    return self.empty(int(q.get("code", "500")), headers)
                return self.serve(name)
            if kind == "slow":
                return self.serve(name, chunk=int(q.get("chunk", "16")),
                                  delay=float(q.get("delay", "0.1")))
            if kind == "stall":
                if "times" in q and self.failures(kind, name) >= int(q["times"]):
                    return self.serve(name)
                return self.serve(name, stall_after=int(q["send"]) if "send" in q else None,
                                  hold=float(q.get("hold", "3600")))
            if kind == "norange":
                return self.serve(name, ranges=False)
            if kind == "badrange":
                return self.serve(name, wrong_range="Range" in self.headers)
            if kind == "truncated":
                if "times" in q and self.failures(kind, name) >= int(q["times"]):
                    return self.serve(name)
                path = self.file_path(name)
                if path is None:
                    return self.empty(404)
                size = os.path.getsize(path)
                send = int(q.get("send", size // 2))
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                with open(path, "rb") as f:
                    self.send_body(name, f, send)
                self.wfile.flush()
                self.close_connection = True
                return None
            return self.serve(name)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
            return None


def watch_parent(ppid):
    while os.getppid() == ppid:
        time.sleep(0.5)
    os._exit(0)


def main():
    global ROOT
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    ROOT = args[0]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if len(args) == 4 and args[1] == "--tls":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args[2], args[3])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
    sys.stdout.write("%d\n%d\n" % (server.server_address[1], os.getpid()))
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
