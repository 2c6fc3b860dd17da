#!/usr/bin/python3
"""cbs_responder.py - a small AMQP 1.0 listener that behaves like Azure
Service Bus where orderd's servicebus plugin meets it (Qpid Proton Python,
run with /usr/bin/python3):

  * $cbs put-token: checks the request's application properties
    (operation=put-token, type=servicebus.windows.net:sastoken or jwt,
    name=audience) and the token itself (a SAS token is re-signed with
    --key and must match, name the audience in sr, the key name in skn and
    not be expired; a jwt must be the one the token endpoint handed out),
    and answers status-code 200, or 401 (always with --refuse);
  * entity links (queues, in memory) are accepted only after a successful
    put-token on the connection, else refused with amqp:unauthorized-access;
  * messages sent to a queue are accepted and delivered to its receivers
    with 16-byte lock tokens as delivery tags; accepted removes, released
    requeues, modified requeues with delivery-count + 1 (when
    delivery-failed), rejected moves to <queue>/$deadletterqueue;
  * <queue>/$management com.microsoft:renew-lock answers statusCode 200
    for tokens of unsettled deliveries, 410 otherwise (or always
    --renew-status);
  * with --http-port-file, a managed-identity token endpoint (needs header
    "Metadata: true") on 127.0.0.1.

Every event is appended to --log as one JSON object per line.  The chosen
AMQP port is written to --port-file once listening.
"""
import argparse
import base64
import hashlib
import hmac
import json
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

from proton import Condition, Delivery, Message
from proton.handlers import MessagingHandler
from proton.reactor import Container

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL3NlcnZpY2VidXMuYXp1cmUubmV0LyJ9.c2lnbmF0dXJl"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Log:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1) if path else None
        self.lock = threading.Lock()

    def __call__(self, **ev):
        if self.f:
            with self.lock:
                self.f.write(json.dumps(ev, default=str) + "\n")


def check_sas(token, audience, key_name, key, now):
    prefix = "SharedAccessSignature "
    if not token.startswith(prefix):
        return "not a SharedAccessSignature"
    fields = dict(p.split("=", 1) for p in token[len(prefix):].split("&") if "=" in p)
    for k in ("sr", "sig", "se", "skn"):
        if k not in fields:
            return "missing " + k
    if urllib.parse.unquote(fields["sr"]) != audience:
        return "sr does not name the audience"
    if urllib.parse.unquote(fields["skn"]) != key_name:
        return "unknown key name"
    if int(fields["se"]) <= now:
        return "expired"
    to_sign = urllib.parse.quote(audience, safe="") + "\n" + fields["se"]
    sig = base64.b64encode(hmac.new(key.encode(), to_sign.encode(), hashlib.sha256).digest()).decode()
    if urllib.parse.unquote(fields["sig"]) != sig:
        return "bad signature"
    return None


class Responder(MessagingHandler):
    def __init__(self, args, log):
        super().__init__(prefetch=50, auto_accept=False, auto_settle=False)
        self.args = args
        self.log = log
        self.queues = {}        # address -> [Message]
        self.senders = {}       # address -> [link]
        self.unsettled = {}     # tag bytes -> (address, message)
        self.authed = set()     # connections with a good token

    def on_start(self, event):
        self.acceptor = event.container.listen("127.0.0.1:%d" % self.args.port)
        with open(self.args.port_file, "w") as f:
            f.write("%d\n" % self.args.port)

    def on_link_opening(self, event):
        link = event.link
        if link.is_sender:
            addr = link.remote_source.address
            link.source.address = addr
            link.target.address = link.remote_target.address
        else:
            addr = link.remote_target.address
            link.target.address = addr
            link.source.address = link.remote_source.address
        special = addr == "$cbs" or (addr or "").endswith("/$management") or (
            link.is_sender and link.remote_target.address in ("orderd-cbs-reply", "orderd-mgmt-reply"))
        self.log(event="attach", address=addr, sender=link.is_sender, authorized=event.connection in self.authed)
        if not special and event.connection not in self.authed:
            link.open()
            link.condition = Condition("amqp:unauthorized-access", "put a token on $cbs first")
            link.close()
            return
        link.open()
        if link.is_sender and not special:
            self.senders.setdefault(addr, []).append(link)

    def on_link_closing(self, event):
        for lst in self.senders.values():
            if event.link in lst:
                lst.remove(event.link)

    def on_connection_closing(self, event):
        self.authed.discard(event.connection)
        for lst in self.senders.values():
            for l in list(lst):
                if l.connection == event.connection:
                    lst.remove(l)
        # deliveries unsettled on a lost connection come back (lock released)
        for tag, (addr, msg, conn) in list(self.unsettled.items()):
            if conn == event.connection:
                del self.unsettled[tag]
                self.queues.setdefault(addr, []).insert(0, msg)

    on_disconnected = on_connection_closing

    def reply(self, conn, reply_to, corr, props, body=None):
        l = conn.link_head(0)
        while l:
            if l.is_sender and l.remote_target.address == reply_to:
                l.send(Message(correlation_id=corr, properties=props, body=body))
                return
            l = l.next(0)
        self.log(event="no-reply-link", reply_to=reply_to)

    def on_message(self, event):
        link, msg, dlv = event.link, event.message, event.delivery
        addr = link.target.address
        if addr == "$cbs":
            self.put_token(event, msg)
            dlv.update(Delivery.ACCEPTED)
            dlv.settle()
        elif addr.endswith("/$management"):
            self.management(event, msg, addr[: -len("/$management")])
            dlv.update(Delivery.ACCEPTED)
            dlv.settle()
        else:
            self.queues.setdefault(addr, []).append(msg)
            self.log(event="message", address=addr, id=msg.id, group_id=msg.group_id,
                     properties=msg.properties, content_type=msg.content_type,
                     body=msg.body.decode() if isinstance(msg.body, (bytes, memoryview)) else msg.body)
            dlv.update(Delivery.ACCEPTED)
            dlv.settle()
            self.pump(addr)

    def put_token(self, event, msg):
        p = msg.properties or {}
        token = msg.body
        status, why = 200, "ok"
        if p.get("operation") != "put-token":
            status, why = 400, "operation is not put-token"
        elif p.get("name") != self.args.audience:
            status, why = 401, "name is not the audience %s" % self.args.audience
        elif p.get("type") == "servicebus.windows.net:sastoken":
            err = check_sas(token, self.args.audience, self.args.key_name, self.args.key, time.time())
            if err:
                status, why = 401, err
        elif p.get("type") == "jwt":
            if token != JWT:
                status, why = 401, "unknown jwt"
        else:
            status, why = 400, "bad token type"
        if self.args.refuse:
            status, why = 401, "refused (--refuse)"
        if status == 200:
            self.authed.add(event.connection)
        self.log(event="put-token", status=status, why=why, type=p.get("type"), name=p.get("name"),
                 token=token if isinstance(token, str) else repr(token))
        self.reply(event.connection, msg.reply_to, msg.id,
                   {"status-code": status, "status-description": why})

    def management(self, event, msg, entity):
        op = (msg.properties or {}).get("operation")
        if op != "com.microsoft:renew-lock":
            self.reply(event.connection, msg.reply_to, msg.id, {"statusCode": 400})
            return
        tokens = list((msg.body or {}).get("lock-tokens", []))
        known = [t for t in tokens if isinstance(t, uuid.UUID) and t.bytes.decode('latin-1') in self.unsettled]
        status = 200 if tokens and len(known) == len(tokens) else 410
        if self.args.renew_status:
            status = self.args.renew_status
        self.log(event="renew-lock", entity=entity, tokens=len(tokens), status=status)
        self.reply(event.connection, msg.reply_to, msg.id, {"statusCode": status},
                   {"expirations": [int(time.time() * 1000) + 60000] * len(tokens)})

    def on_sendable(self, event):
        addr = event.link.source.address
        if addr in self.queues:
            self.pump(addr)

    def pump(self, addr):
        q = self.queues.get(addr, [])
        for l in self.senders.get(addr, []):
            while q and l.credit > 0:
                msg = q.pop(0)
                # 16 bytes, like Service Bus's lock-token tags (hex text: the
                # Python binding wants a str tag)
                tag = uuid.uuid4().hex[:16]
                l.delivery(tag)
                l.send(msg.encode())
                l.advance()
                self.unsettled[tag] = (addr, msg, l.connection)

    def on_settled(self, event):
        dlv = event.delivery
        ent = self.unsettled.pop(dlv.tag, None) if dlv.link.is_sender else None
        if ent is None:
            return
        addr, msg = ent[0], ent[1]
        state = dlv.remote_state
        rec = {"event": "disposition", "address": addr, "id": msg.id}
        if state == Delivery.ACCEPTED:
            rec["state"] = "accepted"
        elif state == Delivery.REJECTED:
            cond = dlv.remote.condition
            rec.update(state="rejected", condition=cond.name if cond else None,
                       description=cond.description if cond else None,
                       info={str(k): v for k, v in (cond.info or {}).items()} if cond else None)
            self.queues.setdefault(addr + "/$deadletterqueue", []).append(msg)
        elif state == Delivery.MODIFIED:
            rec.update(state="modified", failed=dlv.remote.failed, undeliverable=dlv.remote.undeliverable)
            if dlv.remote.failed:
                msg.delivery_count = (msg.delivery_count or 0) + 1
            self.queues.setdefault(addr, []).append(msg)
        elif state == Delivery.RELEASED:
            rec["state"] = "released"
            self.queues.setdefault(addr, []).append(msg)
        else:
            rec["state"] = str(state)
        self.log(**rec)
        dlv.settle()
        self.pump(addr)


class TokenHandler(BaseHTTPRequestHandler):
    log_sink = None

    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        ok = self.headers.get("Metadata") == "true" and "resource" in q
        self.log_sink(event="token-request", path=self.path, ok=ok)
        body = json.dumps({"access_token": JWT, "expires_on": str(int(time.time()) + 3600),
                           "resource": q.get("resource", [""])[0], "token_type": "Bearer"}
                          if ok else {"error": "invalid_request"}).encode()
        self.send_response(200 if ok else 400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--http-port-file")
    ap.add_argument("--audience", required=True)
    ap.add_argument("--key-name", default="RootManageSharedAccessKey")
    ap.add_argument("--key", default="")
    ap.add_argument("--refuse", action="store_true")
    ap.add_argument("--renew-status", type=int, default=0,
                    help="answer every renew-lock with this status (410: lock lost)")
    ap.add_argument("--log")
    args = ap.parse_args()
    if args.port == 0:
        args.port = free_port()
    log = Log(args.log)
    if args.http_port_file:
        TokenHandler.log_sink = log
        srv = HTTPServer(("127.0.0.1", 0), TokenHandler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        with open(args.http_port_file, "w") as f:
            f.write("%d\n" % srv.server_address[1])
    c = Container(Responder(args, log))
    c.allowed_mechs = "ANONYMOUS"
    c.run()


if __name__ == "__main__":
    sys.exit(main())
