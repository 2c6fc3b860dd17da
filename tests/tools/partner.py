#!/usr/bin/env python3
"""partner.py - a tiny partner HTTP endpoint for the enrich plugin's tests.

Listens on 127.0.0.1 (port 0 = any free port), writes the port it got to
--port-file (atomically, so a reader never sees half a number), and serves
  GET /<anything>/<key>  -> 200 + the JSON object data[key], or 404
Every request is appended as one line ("GET <path>") to --log, so a test
can count what reached the partner.  Behaviour is read from --mode-file
on each request (missing file = "ok"):
  ok      answer normally
  fail    answer 500
  slow    sleep 5 s, then answer normally (for client timeouts)
  garbage answer 200 with a body that is not JSON
Stops on SIGTERM.
"""
import argparse
import json
import os
import signal
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--data", required=True, help="JSON file: {key: object}")
    ap.add_argument("--log", required=True)
    ap.add_argument("--mode-file", required=True)
    args = ap.parse_args()

    with open(args.data) as f:
        data = json.load(f)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            pass

        def reply(self, code, body, ctype="application/json"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            with open(args.log, "a") as f:
                f.write("GET %s\n" % self.path)
            try:
                with open(args.mode_file) as f:
                    mode = f.read().strip()
            except OSError:
                mode = "ok"
            if mode == "fail":
                return self.reply(500, b'{"error":"partner failure"}')
            if mode == "garbage":
                return self.reply(200, b"<html>not json</html>", "text/html")
            if mode == "slow":
                time.sleep(5)
            key = urllib.parse.unquote(self.path.rstrip("/").rsplit("/", 1)[-1])
            if key in data:
                return self.reply(200, json.dumps(data[key]).encode())
            return self.reply(404, b'{"error":"not found"}')

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(tmp, args.port_file)
    try:
        srv.serve_forever()
    finally:
        srv.server_close()


if __name__ == "__main__":
    main()
