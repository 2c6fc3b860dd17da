#!/usr/bin/python3
"""e2e_client.py - client side of the end-to-end tests (tests/integration/e2e-*.sh).

  post     POST orders concurrently (threads, one keep-alive connection each) and
           record every answer as "<order id> <status> <retry-after or ->" lines.
  sql      run one query on a SQLite file, print rows as '|'-joined lines.
  received print the distinct event ids a receiver.py log recorded with a 2xx
           answer (CloudEvents single or batch bodies, Event Grid arrays).

post options:
  --port-file F   file holding the Order API port; re-read after a connection
                  error, so the daemon may be restarted on another port meanwhile
  --count N --threads T --prefix P   order ids P1..PN, split over T threads
  --out F         the answers (appended, flushed per line)
  --retry-conn S  on a connection error retry the same order for up to S seconds
                  (its first answer that is a status is recorded); 0: record "err"
  --pause S       sleep S seconds between two requests of a thread
Exit status 0 once every order has an answer recorded.
"""
import argparse
import http.client
import json
import sqlite3
import sys
import threading
import time


def order_body(oid, n):
    return json.dumps({"id": oid, "customerId": "c-%d" % (n % 7), "currency": "EUR",
                       "items": [{"sku": "sku-%d" % (n % 13), "qty": 1 + n % 3, "price": 9.99}]})


def read_port(path):
    with open(path) as f:
        return int(f.read().strip())


def cmd_post(a):
    lock = threading.Lock()
    out = open(a.out, "a")
    failures = []

    def record(line):
        with lock:
            out.write(line + "\n")
            out.flush()

    def worker(ns):
        conn = None
        for n in ns:
            oid = "%s%d" % (a.prefix, n)
            body = order_body(oid, n)
            deadline = time.monotonic() + a.retry_conn
            while True:
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", read_port(a.port_file), timeout=30)
                    conn.request("POST", "/orders", body, {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    r.read()
                    record("%s %d %s" % (oid, r.status, r.getheader("Retry-After") or "-"))
                    if r.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = None
                    break
                except (OSError, http.client.HTTPException, ValueError):
                    if conn is not None:
                        conn.close()
                    conn = None
                    if time.monotonic() >= deadline:
                        record("%s err -" % oid)
                        if a.retry_conn > 0:
                            failures.append(oid)
                        break
                    time.sleep(0.05)
            if a.pause > 0:
                time.sleep(a.pause)
        if conn is not None:
            conn.close()

    ids = list(range(a.start, a.start + a.count))
    threads = [threading.Thread(target=worker, args=(ids[i::a.threads],)) for i in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()
    if failures:
        print("no answer for %d orders, e.g. %s" % (len(failures), failures[0]), file=sys.stderr)
        return 1
    return 0


def cmd_sql(a):
    db = sqlite3.connect("file:%s?mode=ro" % a.db, uri=True, timeout=10)
    for row in db.execute(a.query):
        print("|".join("" if v is None else str(v) for v in row))
    db.close()
    return 0


def cmd_received(a):
    ids = []
    with open(a.log) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("method") != "POST" or not 200 <= rec.get("status", 0) < 300:
                continue
            body = json.loads(rec["body"])
            for ev in (body if isinstance(body, list) else [body]):
                ids.append(ev["id"])
    for i in sorted(set(ids)):
        print(i)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("post")
    s.add_argument("--port-file", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--start", type=int, default=1)
    s.add_argument("--threads", type=int, default=8)
    s.add_argument("--prefix", default="o")
    s.add_argument("--out", required=True)
    s.add_argument("--retry-conn", type=float, default=0)
    s.add_argument("--pause", type=float, default=0)
    s = sub.add_parser("sql")
    s.add_argument("db")
    s.add_argument("query")
    s = sub.add_parser("received")
    s.add_argument("log")
    a = p.parse_args()
    return {"post": cmd_post, "sql": cmd_sql, "received": cmd_received}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
