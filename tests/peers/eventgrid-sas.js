#!/usr/bin/env node
// eventgrid-sas.js - print the SAS token @azure/eventgrid's public
// generateSharedAccessSignature makes for the given inputs, so tests can
// compare the plugin's token with the SDK's byte for byte.
// Usage: NODE_PATH=<setup.sh dir>/node_modules node eventgrid-sas.js ENDPOINT KEY EXPIRY_ISO [API_VERSION]
// Several lines of "ENDPOINT KEY EXPIRY_ISO [API_VERSION]" may instead come on stdin (one token per line out).
'use strict';
const { generateSharedAccessSignature, AzureKeyCredential } = require('@azure/eventgrid');

async function one(endpoint, key, expiry, apiVersion) {
  const opts = apiVersion ? { apiVersion } : {};
  return generateSharedAccessSignature(endpoint, new AzureKeyCredential(key), new Date(expiry), opts);
}

(async () => {
  const a = process.argv.slice(2);
  if (a.length >= 3) {
    console.log(await one(a[0], a[1], a[2], a[3]));
    return;
  }
  const lines = require('fs').readFileSync(0, 'utf8').split('\n').filter((l) => l.trim());
  for (const l of lines) {
    const f = l.trim().split(/\s+/);
    console.log(await one(f[0], f[1], f[2], f[3]));
  }
})().catch((e) => { console.error('eventgrid-sas.js: ' + e.message); process.exit(1); });
