#!/usr/bin/python3
"""fake_admin.py - a stand-in for orderd's admin API and Order API (orderctl tests).

Two listeners on 127.0.0.1 (ports chosen by the system), printed on stdout as
  ADMIN <port>
  ORDERS <port>

Admin API (the shape orderd serves; see man/orderctl.8):
  GET    /api/status
  GET    /api/deadletter
  GET    /api/deadletter/{p}?offset=N&limit=M
  GET    /api/deadletter/{p}/{index}
  POST   /api/deadletter/{p}/replay   {"limit": N} | {"ids": [...]}
  DELETE /api/deadletter/{p}[?id=X]
Pipeline "orders" starts with --dead N entries (ids dl-0001...), "audit" with
none.  An entry whose reason contains "stuck" (--stuck K makes the last K so)
fails to replay and stays.  Replayed entries are appended to --replayed FILE.

Order API:
  POST /orders  202 {"id": ...}; 422 problem when the body contains "bad";
                400 problem when it is not a JSON object; 401 when --api-key
                is set and "Authorization: Bearer <key>" is missing.  A
                repeated Idempotency-Key answers 200 and creates nothing.
  GET  /__orders  {"created": N, "requests": N}
Every Order API request is appended to --log FILE as one JSON line
({"path", "auth", "idem", "body"}).  Stop with SIGTERM.
"""
import argparse
import json
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LOCK = threading.Lock()


def problem(status, title, detail):
    return status, {"type": "about:blank", "title": title, "status": status, "detail": detail}


class Admin:
    def __init__(self, ndead, nstuck, replayed_log):
        self.dl = {"orders": [], "audit": []}
        for i in range(ndead):
            stuck = i >= ndead - nstuck
            self.dl["orders"].append({
                "id": "dl-%04d" % (i + 1), "stage": "validate",
                "reason": ("stuck: " if stuck else "") + "field 'customerId' is required by the order schema "
                          "and was missing from the body of this order",
                "dead_lettered_ms": 1795475771783 + i * 1000, "delivery_count": 1,
                "properties": {"source": "fake"}, "body": {"n": i + 1}})
        self.replayed_log = replayed_log

    def entries(self, p, offset=0, limit=None):
        out = []
        lst = self.dl[p]
        end = len(lst) if limit is None else min(len(lst), offset + limit)
        for i in range(offset, end):
            e = dict(lst[i])
            e["index"] = i
            out.append(e)
        return out

    def status(self):
        pipes = []
        for name, spool in (("orders", {"bytes": 1536000, "records": 5}), ("audit", None)):
            pipes.append({
                "name": name, "in_flight": 3 if name == "orders" else 0, "queue_depth": 1 if name == "orders" else 0,
                "spool": spool, "dead_letters": len(self.dl[name]),
                "stages": [
                    {"name": "http", "plugin": "http", "kind": "input", "in": 1200, "ok": 1200, "retry": 0,
                     "reject": 0, "drop": 0, "pending": 0},
                    {"name": "validate", "plugin": "validate", "kind": "transform", "in": 1200, "ok": 1177,
                     "retry": 4, "reject": 23, "drop": 0, "pending": 0},
                    {"name": "cosmos", "plugin": "sqlite", "kind": "store", "in": 1177, "ok": 1170, "retry": 7,
                     "reject": 0, "drop": 0, "pending": 2}]})
        return {"version": "0.1.0", "ready": True, "pipelines": pipes}

    def handle(self, method, path, query, body):
        parts = [unquote(x) for x in path.split("/") if x]
        if parts == ["api", "status"] and method == "GET":
            return 200, self.status()
        if parts[:2] != ["api", "deadletter"]:
            return problem(404, "Not Found", "no such resource: " + path)
        if len(parts) == 2:
            return 200, {"pipelines": [{"pipeline": p, "count": len(v)} for p, v in self.dl.items()]}
        p = parts[2]
        if p not in self.dl:
            return problem(404, "Not Found", "no pipeline named '%s'" % p)
        lst = self.dl[p]
        if len(parts) == 3 and method == "GET":
            try:
                offset = int(query.get("offset", ["0"])[0])
                limit = int(query.get("limit", ["100"])[0])
            except ValueError:
                return problem(400, "Bad Request", "offset and limit must be numbers")
            return 200, {"pipeline": p, "total": len(lst), "entries": self.entries(p, offset, limit)}
        if len(parts) == 3 and method == "DELETE":
            if "id" in query:
                keep = [e for e in lst if e["id"] != query["id"][0]]
            else:
                keep = []
            n = len(lst) - len(keep)
            self.dl[p] = keep
            return 200, {"purged": n, "remaining": len(keep)}
        if len(parts) == 4 and parts[3] == "replay" and method == "POST":
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                return problem(400, "Bad Request", "body is not JSON")
            if "ids" in req:
                chosen = [e for e in lst if e["id"] in req["ids"]]
            elif isinstance(req.get("limit"), int) and req["limit"] > 0:
                chosen = lst[:req["limit"]]
            else:
                return problem(400, "Bad Request", "say limit or ids")
            replayed = failed = 0
            for e in chosen:
                lst.remove(e)
                if "stuck" in e["reason"]:
                    failed += 1
                    lst.append(e)   # stays, behind the others
                else:
                    replayed += 1
                    if self.replayed_log:
                        with open(self.replayed_log, "a") as f:
                            f.write(e["id"] + "\n")
            return 200, {"replayed": replayed, "failed": failed, "remaining": len(lst)}
        if len(parts) == 4 and method == "GET":
            try:
                i = int(parts[3])
            except ValueError:
                i = -1
            if 0 <= i < len(lst):
                return 200, self.entries(p, i, 1)[0]
            return problem(404, "Not Found", "no dead letter %s in pipeline '%s'" % (parts[3], p))
        return problem(405, "Method Not Allowed", method + " " + path)


class Orders:
    def __init__(self, api_key, log):
        self.api_key = api_key
        self.log = log
        self.created = 0
        self.requests = 0
        self.keys = {}

    def handle(self, method, path, headers, body):
        if method == "GET" and path == "/__orders":
            return 200, {"created": self.created, "requests": self.requests}
        if path != "/orders" or method != "POST":
            return problem(404, "Not Found", path)
        self.requests += 1
        auth = headers.get("Authorization")
        idem = headers.get("Idempotency-Key")
        if self.log:
            with open(self.log, "a") as f:
                f.write(json.dumps({"path": path, "auth": auth, "idem": idem, "body": body.decode("utf-8", "replace")})
                        + "\n")
        if self.api_key and auth != "Bearer " + self.api_key:
            return problem(401, "Unauthorized", "a valid API key is required")
        if idem and idem in self.keys:
            return 200, self.keys[idem]
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            return problem(400, "Bad Request", "the body is not a JSON object")
        if "bad" in body.decode("utf-8", "replace"):
            return problem(422, "Unprocessable Entity", "order %s failed validation" % doc.get("id", "?"))
        self.created += 1
        ans = {"id": doc.get("id", "order-%d" % self.created), "status": "accepted"}
        if idem:
            self.keys[idem] = ans
        return 202, ans


def make_handler(app):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def setup(self):
            super().setup()
            # headers and body go out in separate writes: without this, Nagle
            # and delayed ACKs cost 40 ms per keep-alive request
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def go(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            url = urlsplit(self.path)
            with LOCK:
                if isinstance(app, Admin):
                    status, doc = app.handle(self.command, url.path, parse_qs(url.query), body)
                else:
                    status, doc = app.handle(self.command, url.path, self.headers, body)
            out = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/problem+json" if status >= 400 else "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_DELETE = go

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dead", type=int, default=0)
    ap.add_argument("--stuck", type=int, default=0)
    ap.add_argument("--replayed")
    ap.add_argument("--api-key")
    ap.add_argument("--log")
    a = ap.parse_args()
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), make_handler(Admin(a.dead, a.stuck, a.replayed))),
               ThreadingHTTPServer(("127.0.0.1", 0), make_handler(Orders(a.api_key, a.log)))]
    for s in servers:
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ADMIN %d" % servers[0].server_address[1])
    print("ORDERS %d" % servers[1].server_address[1], flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
