#!/usr/bin/python3
"""cosmos_faults.py - a small local responder playing a misbehaving Cosmos DB for orderd's tests.

Answers each request with the next entry of --plan (a JSON array), then with
201 + the request body once the plan is used up.  Entries:
  {"status": 429, "retry_after_ms": 150}   throttled, with x-ms-retry-after-ms
  {"status": 503}                          any status, Cosmos-style error body
  {"sleep_ms": 3000}                       stall (a client timeout), then 201
Every request is appended to --log as a JSON line with its arrival time.
"""
import argparse, json, os, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--port-file", required=True)
ap.add_argument("--log", required=True)
ap.add_argument("--plan", default="[]")
args = ap.parse_args()
plan = json.loads(args.plan)
lock = threading.Lock()


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with lock:
            step = plan.pop(0) if plan else {}
            with open(args.log, "a") as f:
                f.write(json.dumps({"t_ms": int(time.monotonic() * 1000), "path": self.path,
                                    "auth": bool(self.headers.get("authorization")),
                                    "partitionkey": self.headers.get("x-ms-documentdb-partitionkey"),
                                    "step": step}) + "\n")
        if step.get("sleep_ms"):
            time.sleep(step["sleep_ms"] / 1000.0)
        status = step.get("status", 201)
        data = body if status < 300 else json.dumps(
            {"code": "Injected", "message": "injected %d by cosmos_faults.py" % status}).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-charge", "2.5")
            if "retry_after_ms" in step:
                self.send_header("x-ms-retry-after-ms", str(step["retry_after_ms"]))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
with open(args.port_file + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(args.port_file + ".tmp", args.port_file)
srv.serve_forever()
