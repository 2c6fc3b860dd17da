#!/usr/bin/env node
// cosmos-readback.js - test helper using the official @azure/cosmos SDK (never orderd's code):
//   setup   DB COLL PKPATH [PKPATH2 COLL2 ...]  create the database and containers
//   read    DB COLL ID PK                       print the document as JSON, or NOTFOUND
//   all     DB COLL                             print every document (sorted by id) as a JSON array
//   replace DB COLL ID PK JSON                  replace the document (a concurrent writer)
//   create  DB COLL JSON                        create a document
// Env: COSMOS_ENDPOINT, COSMOS_KEY; NODE_EXTRA_CA_CERTS for the test CA.
'use strict';
const { CosmosClient } = require('@azure/cosmos');

async function main() {
  const [cmd, db, coll, ...rest] = process.argv.slice(2);
  const client = new CosmosClient({ endpoint: process.env.COSMOS_ENDPOINT, key: process.env.COSMOS_KEY,
    connectionPolicy: { enableEndpointDiscovery: false } });
  const d = client.database(db);
  if (cmd === 'setup') {
    await client.databases.createIfNotExists({ id: db });
    const pairs = [coll, ...rest];
    for (let i = 0; i + 1 < pairs.length; i += 2)
      await d.containers.createIfNotExists({ id: pairs[i], partitionKey: { paths: [pairs[i + 1]] } });
    console.log('ok');
  } else if (cmd === 'read') {
    const { resource } = await d.container(coll).item(rest[0], rest[1]).read();
    console.log(resource ? JSON.stringify(resource) : 'NOTFOUND');
  } else if (cmd === 'all') {
    const { resources } = await d.container(coll).items.query('SELECT * FROM c').fetchAll();
    resources.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    console.log(JSON.stringify(resources));
  } else if (cmd === 'replace') {
    const { resource } = await d.container(coll).item(rest[0], rest[1]).replace(JSON.parse(rest[2]));
    console.log(JSON.stringify(resource));
  } else if (cmd === 'create') {
    const { resource } = await d.container(coll).items.create(JSON.parse(rest[0]));
    console.log(JSON.stringify(resource));
  } else {
    throw new Error('unknown command ' + cmd);
  }
}
main().catch((e) => { console.error(String(e && e.message || e)); process.exit(1); });
