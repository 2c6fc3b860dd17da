#!/usr/bin/python3
"""receiver.py - an HTTP endpoint that records what it is sent (orderd tests).

Listens on 127.0.0.1, answers every request with a configurable status, and
appends one NDJSON line per request to --log:

  {"seq": 1, "time": 1700000000.123, "method": "POST", "path": "/hook",
   "headers": {"Content-Type": "...", ...}, "body": "<raw body as text>",
   "status": 200, "delay": 0.0}

status and delay are the answer chosen for the request when it was read.
The line is written (and flushed) then, before any delay, so a test can see
a request that is still being held: one logged with a delay is unanswered
until the delay has passed, and its client cannot have sent another request
on that connection meanwhile.

Control at runtime (never recorded):
  POST /__control  {"status": 503, "delay": 0.5, "retry_after": 2, "count": 3, "then": 200}
      status       status for the following requests (default 200)
      delay        seconds to wait before answering
      retry_after  send "Retry-After: <n>" with non-2xx answers (null: none)
      count        apply status only to the next <count> requests (null: all)
      then         status once count is used up (default 200)
      A status without count clears count.  Omitted keys keep their value; answers the new settings as JSON.
  GET  /__control  the current settings.
  SIGUSR1          switch to status 503;  SIGUSR2  switch back to 200.

Usage:
  receiver.py --log FILE [--port 0] [--port-file FILE] [--status N] [--delay S]
The bound port is printed on stdout as "PORT <n>" and, with --port-file,
written atomically to that file.  Stop it with SIGTERM or SIGINT.
"""
import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class State:
    def __init__(self, status, delay):
        self.lock = threading.Lock()
        self.status = status
        self.delay = delay
        self.retry_after = None
        self.count = None
        self.then = 200
        self.seq = 0

    def settings(self):
        return {"status": self.status, "delay": self.delay,
                "retry_after": self.retry_after, "count": self.count, "then": self.then}

    def next_answer(self):
        """Status, delay, retry_after and sequence number for one request."""
        with self.lock:
            self.seq += 1
            status = self.status
            if self.count is not None:
                if self.count > 0:
                    self.count -= 1
                else:
                    status = self.then
            return status, self.delay, self.retry_after, self.seq


def make_handler(state, log):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"   # keep-alive, as a real subscriber
        disable_nagle_algorithm = True   # headers and body are two writes: no 40 ms delayed-ACK stall

        def log_message(self, fmt, *args):
            pass

        def _body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n > 0 else b""

        def _reply(self, status, payload=b"", ctype="text/plain", extra=None):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

        def _control(self, body):
            if self.command == "POST":
                try:
                    req = json.loads(body or b"{}")
                except ValueError:
                    self._reply(400, b"bad json\n")
                    return
                with state.lock:
                    if "status" in req and "count" not in req:
                        state.count = None   # a plain status applies to all
                    for key in ("status", "delay", "retry_after", "count", "then"):
                        if key in req:
                            setattr(state, key, req[key])
            with state.lock:
                out = json.dumps(state.settings()).encode()
            self._reply(200, out, "application/json")

        def _handle(self):
            body = self._body()
            path = self.path
            if path.split("?")[0] == "/__control":
                self._control(body)
                return
            status, delay, retry_after, seq = state.next_answer()
            rec = {"seq": seq, "time": time.time(), "method": self.command,
                   "path": path, "headers": dict(self.headers.items()),
                   "body": body.decode("utf-8", "replace"), "status": status,
                   "delay": delay}
            with state.lock:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if delay:
                time.sleep(delay)
            extra = {}
            if retry_after is not None and not 200 <= status < 300:
                extra["Retry-After"] = str(retry_after)
            self._reply(status, ("status %d\n" % status).encode(), extra=extra)

        do_POST = _handle
        do_PUT = _handle
        do_GET = _handle
        do_DELETE = _handle

    return Handler


def main():
    ap = argparse.ArgumentParser(
        description="HTTP receiver that records requests as NDJSON and answers "
                    "a status switchable at runtime (POST /__control, SIGUSR1/2).",
        epilog="Control at runtime" + __doc__.split("Control at runtime", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    ap.add_argument("--port-file", help="write the bound port to this file (atomically)")
    ap.add_argument("--log", required=True, help="append one NDJSON line per request here")
    ap.add_argument("--status", type=int, default=200, help="initial answer status (200)")
    ap.add_argument("--delay", type=float, default=0.0, help="initial delay before answering, seconds")
    args = ap.parse_args()

    state = State(args.status, args.delay)
    log = open(args.log, "a", encoding="utf-8")
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(state, log))
    srv.daemon_threads = True
    port = srv.server_address[1]

    def switch(status):
        def handler(signum, frame):
            with state.lock:
                state.status = status
                state.count = None
        return handler

    signal.signal(signal.SIGUSR1, switch(503))
    signal.signal(signal.SIGUSR2, switch(200))
    # serve_forever() runs in a thread so SIGTERM can end the process at once,
    # even while handler threads are held in a delay.
    signal.signal(signal.SIGTERM, lambda s, f: os._exit(0))
    signal.signal(signal.SIGINT, lambda s, f: os._exit(0))

    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.rename(tmp, args.port_file)
    print("PORT %d" % port, flush=True)

    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
