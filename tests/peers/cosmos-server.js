#!/usr/bin/env node
// cosmos-server.js - the Cosmos DB peer for orderd's tests: @vercel/cosmosdb-server (an
// independent in-memory implementation of the Cosmos DB SQL REST API) over HTTPS on 127.0.0.1,
// plus what that server lacks: the master-key signature check, done with @azure/cosmos's own
// signing code (generateHeaders), and an optional Entra ID token check.
//
//   NODE_PATH=<dir>/node_modules node cosmos-server.js --cert C --key K --port-file F
//       [--port 0] [--master-key KEY] [--aad-token TOKEN] [--log requests.jsonl] [--no-tls]
// A wrong or missing signature gets 401 (with the string the server signed), x-ms-date
// not in RFC 1123 form 401, clock skew over 15 min 403.  The chosen port is written to
// --port-file once listening.
'use strict';
const fs = require('fs');
const path = require('path');

function arg(name, def) {
  const i = process.argv.indexOf('--' + name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}
// Resolve a file inside a package through NODE_PATH, bypassing "exports" (the
// signing module is internal to @azure/cosmos).
function pkgFile(rel) {
  for (const d of (process.env.NODE_PATH || '').split(':').filter(Boolean)) {
    const p = path.join(d, rel);
    if (fs.existsSync(p)) return p;
  }
  throw new Error('not found in NODE_PATH: ' + rel);
}
const { createHttpsServer, createHttpServer } = require('@vercel/cosmosdb-server');
const { generateHeaders } = require(pkgFile('@azure/cosmos/dist/commonjs/utils/headers.js'));

const EMULATOR_KEY = 'C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==';
const key = arg('master-key', EMULATOR_KEY);
const aadToken = arg('aad-token', '');
const noTls = process.argv.includes('--no-tls');
const logPath = arg('log', '');
const portFile = arg('port-file', '');

function resourceOf(urlPath) {
  const p = urlPath.split('?')[0].replace(/^\/+/, '').replace(/\/+$/, '');
  const segs = p ? p.split('/').map((s) => { try { return decodeURIComponent(s); } catch (e) { return s; } }) : [];
  if (segs.length === 0) return { type: '', link: '' };
  if (segs.length % 2 === 1) return { type: segs[segs.length - 1], link: segs.slice(0, -1).join('/') };
  return { type: segs[segs.length - 2], link: segs.join('/') };
}

async function checkAuth(req) {
  const auth = req.headers['authorization'];
  const xdate = req.headers['x-ms-date'];
  if (!auth) return { ok: false, status: 401, why: 'missing authorization header' };
  if (aadToken && decodeURIComponent(auth) === 'type=aad&ver=1.0&sig=' + aadToken) return { ok: true, aad: true };
  if (!xdate) return { ok: false, status: 401, why: 'missing x-ms-date header' };
  const d = new Date(xdate);
  if (isNaN(d.getTime()) || d.toUTCString() !== xdate) return { ok: false, status: 401, why: 'bad x-ms-date: ' + xdate };
  const skew = Math.abs(Date.now() - d.getTime()) / 1000;
  if (skew > 900) return { ok: false, status: 403, why: `x-ms-date off by ${skew.toFixed(0)}s` };
  const { type, link } = resourceOf(req.url);
  const expected = (await generateHeaders(key, req.method, type, link, d)).authorization;
  // the service URL-decodes the header, so compare decoded forms
  if (decodeURIComponent(auth) === decodeURIComponent(expected)) return { ok: true };
  return { ok: false, status: 401, why: 'signature mismatch',
           stringToSign: `${req.method.toLowerCase()}\n${type.toLowerCase()}\n${link}\n${xdate.toLowerCase()}\n\n` };
}

const server = noTls ? createHttpServer({ keepAlive: true })
  : createHttpsServer({ cert: fs.readFileSync(arg('cert')), key: fs.readFileSync(arg('key')), keepAlive: true });
const inner = server.listeners('request');
server.removeAllListeners('request');
const logStream = logPath ? fs.createWriteStream(logPath, { flags: 'a' }) : null;

server.on('request', (req, res) => {
  (async () => {
    const verdict = await checkAuth(req);
    const entry = { method: req.method, url: req.url, auth: verdict.ok ? (verdict.aad ? 'aad' : 'ok') : verdict.why,
      headers: Object.fromEntries(Object.entries(req.headers).filter(([k]) =>
        k.startsWith('x-ms-') || ['if-match', 'if-none-match', 'a-im'].includes(k))) };
    res.on('finish', () => { entry.status = res.statusCode; if (logStream) logStream.write(JSON.stringify(entry) + '\n'); });
    if (!verdict.ok) {
      res.statusCode = verdict.status;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ code: 'Unauthorized', message: 'The input authorization token can\'t serve the request: ' +
        verdict.why + (verdict.stringToSign ? '; server signed ' + JSON.stringify(verdict.stringToSign) : '') }));
      return;
    }
    for (const l of inner) l.call(server, req, res);
  })().catch((e) => { res.statusCode = 500; res.end(JSON.stringify({ message: String(e) })); });
});

server.listen(Number(arg('port', '0')), '127.0.0.1', () => {
  const port = server.address().port;
  if (portFile) { fs.writeFileSync(portFile + '.tmp', String(port)); fs.renameSync(portFile + '.tmp', portFile); }
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
