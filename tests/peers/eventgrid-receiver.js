#!/usr/bin/env node
// eventgrid-receiver.js - an HTTPS stand-in for an Event Grid topic endpoint,
// for the eventgrid plugin's tests.  It captures every publish request to an
// NDJSON log and judges it the way the service does, with Microsoft's own
// @azure/eventgrid code where it has it:
//   - api-version query parameter required (400);
//   - auth: aeg-sas-key equal to --eg-key, or an aeg-sas-token that the SDK's
//     generateSharedAccessSignature reproduces for the token's own r and e and
//     that has not expired, or "Authorization: Bearer <--bearer>" (401);
//   - body over --max-bytes (default 1 MiB) -> 413;
//   - body checked with EventGridDeserializer: deserializeCloudEvents for
//     application/cloudevents-batch+json, deserializeEventGridEvents for
//     application/json (after stamping topic/metadataVersion as the service
//     does before delivery) -> 400 with {"error":{"code","message"}}.
// Test controls: --statuses 429,500 answers the next valid requests with those
// statuses (then 200), --retry-after S adds Retry-After to them, --reject-id ID
// answers 400 to any batch holding event ID, --delay-ms N answers publishes N ms late.
// Token endpoints for auth = "entra" (only with --bearer T): POST /oauth2/token
// (client credentials: grant_type, client_id = --client-id, client_secret =
// --client-secret) and GET /metadata/identity/oauth2/token (managed identity:
// header Metadata: true and a resource) answer T the way Entra ID and IMDS do
// (expires_in / expires_on; --token-ttl S for client credentials, default
// 3599); each fetch is logged as {token: ...}.
// Usage: NODE_PATH=<setup.sh dir>/node_modules node eventgrid-receiver.js
//        --port-file F --log F --cert F --key F --eg-key K [--bearer T] ...
// Listens on 127.0.0.1, port 0 (the port is written to --port-file).
'use strict';
const fs = require('fs');
const https = require('https');
const { EventGridDeserializer, generateSharedAccessSignature, AzureKeyCredential } = require('@azure/eventgrid');

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const KEY = args['eg-key'];
const MAX = Number(args['max-bytes'] || 1024 * 1024);
const statuses = (args.statuses || '').split(',').filter(Boolean).map(Number);
const TOPIC = '/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/orderd-tests/providers/Microsoft.EventGrid/topics/local';
const deser = new EventGridDeserializer();
let seq = 0;

async function checkAuth(req) {
  const key = req.headers['aeg-sas-key'];
  const token = req.headers['aeg-sas-token'];
  const bearer = req.headers.authorization;
  if (key !== undefined) return key === KEY ? { ok: true, how: 'aeg-sas-key' } : { ok: false, why: 'aeg-sas-key does not match' };
  if (token !== undefined) {
    const parts = Object.fromEntries(token.split('&').map((kv) => { const i = kv.indexOf('='); return [kv.slice(0, i), kv.slice(i + 1)]; }));
    if (!parts.r || !parts.e || !parts.s) return { ok: false, why: 'aeg-sas-token lacks r, e or s' };
    const resource = decodeURIComponent(parts.r);
    const expiry = decodeURIComponent(parts.e);
    const m = /^(\d{1,2})\/(\d{1,2})\/(\d{4}) (\d{1,2}):(\d{2}):(\d{2}) (AM|PM)$/.exec(expiry);
    if (!m) return { ok: false, why: 'aeg-sas-token expiry is not "M/d/yyyy h:mm:ss tt": ' + expiry };
    let h = Number(m[4]) % 12; if (m[7] === 'PM') h += 12;
    const exp = new Date(Date.UTC(Number(m[3]), Number(m[1]) - 1, Number(m[2]), h, Number(m[5]), Number(m[6])));
    if (exp.getTime() < Date.now()) return { ok: false, why: 'aeg-sas-token expired at ' + exp.toISOString() };
    const q = resource.indexOf('?apiVersion=');
    if (q < 0) return { ok: false, why: 'aeg-sas-token resource lacks ?apiVersion=' };
    const endpoint = resource.slice(0, q);
    const want = await generateSharedAccessSignature(endpoint, new AzureKeyCredential(KEY), exp,
                                                     { apiVersion: resource.slice(q + 12) });
    if (want !== token) return { ok: false, why: 'aeg-sas-token signature mismatch', expected: want };
    return { ok: true, how: 'aeg-sas-token', endpoint, expires: exp.toISOString() };
  }
  if (bearer !== undefined && args.bearer !== undefined) {
    return bearer === 'Bearer ' + args.bearer ? { ok: true, how: 'bearer' } : { ok: false, why: 'bearer token does not match' };
  }
  return { ok: false, why: 'no credential header' };
}

async function validate(ctype, raw) {
  let parsed;
  try { parsed = JSON.parse(raw); } catch (e) { return { ok: false, why: 'body is not JSON: ' + e.message }; }
  if (!Array.isArray(parsed)) return { ok: false, why: 'body is not a JSON array' };
  const ct = (ctype || '').toLowerCase();
  if (ct.startsWith('application/cloudevents-batch+json')) {
    try {
      const evs = await deser.deserializeCloudEvents(raw);
      return { ok: true, schema: 'cloudevents', count: evs.length, ids: evs.map((e) => e.id) };
    } catch (e) { return { ok: false, why: 'EventGridDeserializer.deserializeCloudEvents: ' + e.message }; }
  }
  if (!ct.startsWith('application/json')) return { ok: false, why: 'unexpected content-type ' + ctype };
  for (const [i, o] of parsed.entries()) {
    if (!o || typeof o !== 'object') return { ok: false, why: `event[${i}] is not an object` };
    if (typeof o.eventTime !== 'string' || !/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(o.eventTime)) {
      return { ok: false, why: `event[${i}].eventTime is not ISO 8601` };
    }
    if (o.data === undefined) return { ok: false, why: `event[${i}] has no data` };
  }
  const stamped = parsed.map((o) => ({ ...o, topic: o.topic === undefined ? TOPIC : o.topic, metadataVersion: '1' }));
  try {
    const evs = await deser.deserializeEventGridEvents(JSON.stringify(stamped));
    return { ok: true, schema: 'eventgrid', count: evs.length, ids: evs.map((e) => e.id) };
  } catch (e) { return { ok: false, why: 'EventGridDeserializer.deserializeEventGridEvents: ' + e.message }; }
}

function answer(res, status, code, message, extra) {
  res.statusCode = status;
  for (const [k, v] of Object.entries(extra || {})) res.setHeader(k, v);
  if (status === 200) { res.setHeader('content-length', '0'); return res.end(); }
  res.setHeader('content-type', 'application/json; charset=utf-8');
  res.end(JSON.stringify({ error: { code, message } }));
}

function token(req, res, url, raw, entry, done) {
  const fail = (why) => { done(400, 'token: ' + why, { token: 'refused' }); res.statusCode = 400; res.setHeader('content-type', 'application/json');
                          res.end(JSON.stringify({ error: 'invalid_request', error_description: why })); };
  if (args.bearer === undefined) return fail('no --bearer configured');
  let body;
  if (url.pathname === '/oauth2/token') {
    const f = new URLSearchParams(raw);
    if (req.method !== 'POST' || f.get('grant_type') !== 'client_credentials') return fail('want POST grant_type=client_credentials');
    if (f.get('client_id') !== args['client-id'] || f.get('client_secret') !== args['client-secret']) return fail('bad client credentials');
    if (!f.get('scope')) return fail('no scope');
    entry.scope = f.get('scope');
    const ttl = Number(args['token-ttl'] || 3599);
    body = { token_type: 'Bearer', expires_in: ttl, ext_expires_in: ttl, access_token: args.bearer };
  } else {
    if (req.method !== 'GET' || req.headers.metadata !== 'true') return fail('want GET with Metadata: true');
    if (!url.searchParams.get('resource') || !url.searchParams.get('api-version')) return fail('no resource or api-version');
    entry.scope = url.searchParams.get('resource');
    body = { access_token: args.bearer, expires_on: String(Math.floor(Date.now() / 1000) + 3600), resource: entry.scope, token_type: 'Bearer' };
  }
  done(200, 'token issued', { token: url.pathname });
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify(body));
}

const server = https.createServer({ cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key) }, (req, res) => {
  const chunks = [];
  let size = 0;
  req.on('data', (c) => { size += c.length; if (size <= MAX + 1) chunks.push(c); });
  req.on('end', async () => {
    const raw = Buffer.concat(chunks).toString('utf8');
    const url = new URL(req.url, 'https://127.0.0.1');
    const h = req.headers;
    const entry = { n: ++seq, method: req.method, path: url.pathname, query: url.search, bytes: size,
                    connection: `${req.socket.remotePort}`, content_type: h['content-type'] || null,
                    auth_header: h['aeg-sas-key'] !== undefined ? 'aeg-sas-key' : h['aeg-sas-token'] !== undefined ? 'aeg-sas-token'
                      : h.authorization !== undefined ? 'authorization' : null,
                    sas_token: h['aeg-sas-token'] || null };
    const done = (status, verdict, extra) => {
      entry.status = status; entry.verdict = verdict; Object.assign(entry, extra || {});
      entry.body = raw.length <= 65536 ? raw : null;
      fs.appendFileSync(args.log, JSON.stringify(entry) + '\n');
    };
    if (url.pathname === '/oauth2/token' || url.pathname === '/metadata/identity/oauth2/token') return token(req, res, url, raw, entry, done);
    // --delay-ms: answer publishes late (client timeout tests).
    if (args['delay-ms'] && url.pathname === '/api/events') await new Promise((r) => setTimeout(r, Number(args['delay-ms'])));
    if (req.method !== 'POST' || url.pathname !== '/api/events') { done(404, 'no such route'); return answer(res, 404, 'NotFound', 'No such route.'); }
    if (!url.searchParams.get('api-version')) { done(400, 'missing api-version'); return answer(res, 400, 'BadRequest', 'The request is missing the api-version query parameter.'); }
    const auth = await checkAuth(req);
    if (!auth.ok) { done(401, auth.why, { expected: auth.expected }); return answer(res, 401, 'Unauthorized', 'The request authorization key is not authorized. ' + auth.why + '.'); }
    entry.auth = auth.how;
    if (size > MAX) { done(413, 'too large'); return answer(res, 413, 'RequestEntityTooLarge', `The maximum size (${MAX}) has been exceeded.`); }
    const v = await validate(h['content-type'], raw);
    if (!v.ok) { done(400, 'invalid: ' + v.why); return answer(res, 400, 'BadRequest', v.why); }
    const extra = { schema: v.schema, count: v.count, ids: v.ids };
    if (args['reject-id'] && v.ids.includes(args['reject-id'])) {
      done(400, 'valid, rejected by test (reject-id)', extra);
      return answer(res, 400, 'BadRequest', `Event ${args['reject-id']} refused by the test receiver.`);
    }
    if (statuses.length > 0) {
      const st = statuses.shift();
      done(st, 'valid, answered by test plan', extra);
      return answer(res, st, st === 429 ? 'TooManyRequests' : 'Failure', `Status ${st} from the test plan.`,
                    args['retry-after'] ? { 'retry-after': args['retry-after'] } : {});
    }
    done(200, 'accepted', extra);
    return answer(res, 200);
  });
});
server.keepAliveTimeout = 30000;
server.listen(0, '127.0.0.1', () => {
  fs.writeFileSync(args['port-file'] + '.tmp', String(server.address().port));
  fs.renameSync(args['port-file'] + '.tmp', args['port-file']);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => { server.close(); process.exit(0); });
