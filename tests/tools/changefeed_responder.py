#!/usr/bin/python3
"""changefeed_responder.py - a small Cosmos DB change-feed responder for orderd's tests.

Implements what the REST docs say about the incremental change feed (which the
npm Cosmos server does not: it answers 304 forever after the first call):
  GET /dbs/D/colls/C/pkranges          -> {"PartitionKeyRanges": [{"id": "0"}, ...]}
  GET /dbs/D/colls/C/docs  with  A-IM: Incremental feed,
      x-ms-documentdb-partitionkeyrangeid: R, If-None-Match: <etag>|*|absent,
      x-ms-max-item-count: N
    -> 200 {"Documents": [...], "_count": n} + etag (the continuation), oldest
       first, at most N; 304 (+ etag) when nothing is newer than If-None-Match.
Documents get _lsn/_etag/_ts; each lands in range crc32(id) % ranges.
Requests must carry a valid master-key signature (checked with hmac here).
Test control (not Cosmos): POST /_test/docs with a JSON array appends documents
(a document with an existing id is a new version, as an upsert).
Every API request is appended to --log as a JSON line.
"""
import argparse, base64, email.utils, hashlib, hmac, json, sys, threading, time, urllib.parse, zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--port-file", required=True)
ap.add_argument("--log", required=True)
ap.add_argument("--ranges", type=int, default=2)
ap.add_argument("--key", required=True)
args = ap.parse_args()

lock = threading.Lock()
docs = []          # (lsn, range, doc)
lsn = [0]


def signature_ok(h, method, path):
    segs = [urllib.parse.unquote(s) for s in path.strip("/").split("/") if s]
    if len(segs) % 2 == 1:
        rtype, link = segs[-1], "/".join(segs[:-1])
    else:
        rtype, link = segs[-2], "/".join(segs)
    date = h.get("x-ms-date", "")
    sts = "%s\n%s\n%s\n%s\n\n" % (method.lower(), rtype.lower(), link, date.lower())
    sig = base64.b64encode(hmac.new(base64.b64decode(args.key), sts.encode(), hashlib.sha256).digest()).decode()
    want = "type=master&ver=1.0&sig=" + sig
    return urllib.parse.unquote(h.get("authorization", "")) == want


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, body=None, etag=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-charge", "1.5")
        if etag is not None:
            self.send_header("etag", etag)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(n)
        if self.path == "/_test/docs":
            with lock:
                for d in json.loads(body):
                    lsn[0] += 1
                    d = dict(d, _lsn=lsn[0], _etag='"%08x"' % lsn[0], _ts=int(time.time()), _rid="r%d" % lsn[0])
                    docs.append((lsn[0], str(zlib.crc32(d["id"].encode()) % args.ranges), d))
            return self.reply(200, {"lsn": lsn[0]})
        self.reply(405, {"message": "not here"})

    def do_GET(self):
        path = self.path.split("?")[0]
        h = {k.lower(): v for k, v in self.headers.items()}
        entry = {"path": path, "a-im": h.get("a-im"), "if-none-match": h.get("if-none-match"),
                 "range": h.get("x-ms-documentdb-partitionkeyrangeid"),
                 "max": h.get("x-ms-max-item-count")}
        status = self.handle_get(path, h)
        entry["status"] = status
        with lock, open(args.log, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def handle_get(self, path, h):
        if not signature_ok(h, "GET", path):
            self.reply(401, {"code": "Unauthorized", "message": "bad signature"})
            return 401
        if path.endswith("/pkranges"):
            self.reply(200, {"PartitionKeyRanges": [{"id": str(i)} for i in range(args.ranges)],
                             "_count": args.ranges})
            return 200
        if not path.endswith("/docs") or h.get("a-im", "").lower() != "incremental feed":
            self.reply(400, {"message": "only the change feed is served here"})
            return 400
        rng = h.get("x-ms-documentdb-partitionkeyrangeid")
        if rng is None or not rng.isdigit() or int(rng) >= args.ranges:
            self.reply(400, {"message": "bad partition key range id"})
            return 400
        inm = h.get("if-none-match")
        maxn = int(h.get("x-ms-max-item-count", "100"))
        with lock:
            if inm is None:
                since = 0
            elif inm == "*":
                since = lsn[0]
            else:
                since = int(inm.strip('"'), 16)
            page = [d for (l, r, d) in docs if r == rng and l > since][:maxn]
        if not page:
            self.reply(304, None, etag='"%08x"' % since)
            return 304
        self.reply(200, {"_rid": "coll", "Documents": page, "_count": len(page)}, etag=page[-1]["_etag"])
        return 200


srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
with open(args.port_file + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
import os
os.rename(args.port_file + ".tmp", args.port_file)
srv.serve_forever()
