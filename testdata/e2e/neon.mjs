// Neon's serverless Postgres driver against a local PostgreSQL through
// ws_to_tcp, as a drop-in for Neon's wsproxy: the driver opens
// ws://PROXY?address=host:port and speaks the Postgres protocol over it.
// DDL, a transaction of thousands of rows, a multi-MiB bytea written and
// read back, and concurrent clients; one JSON line says what it saw.
//
//   PGURL=postgres://user:pw@127.0.0.1:5432/db node neon.mjs 127.0.0.1:PORT/v2
import { createHash, randomBytes } from 'node:crypto';
import { Pool, neonConfig } from '@neondatabase/serverless';
import ws from 'ws';

const [proxy] = process.argv.slice(2);
neonConfig.webSocketConstructor = ws;
neonConfig.wsProxy = (host, port) => `${proxy}?address=${host}:${port}`;
neonConfig.useSecureWebSocket = false; // the test's Caddy is plain HTTP
neonConfig.pipelineTLS = false; // no TLS inside the WebSocket
neonConfig.pipelineConnect = false; // SCRAM needs the round trips

const pool = new Pool({ connectionString: process.env.PGURL, max: 8 });
const rows = 5000;

await pool.query('DROP TABLE IF EXISTS e2e_items, e2e_blobs');
await pool.query('CREATE TABLE e2e_items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2))');
await pool.query('CREATE TABLE e2e_blobs (id int PRIMARY KEY, data bytea NOT NULL)');

// One transaction of thousands of rows, in batches.
const client = await pool.connect();
try {
  await client.query('BEGIN');
  for (let i = 0; i < rows; i += 500) {
    const ids = Array.from({ length: 500 }, (_, k) => i + k);
    await client.query(
      'INSERT INTO e2e_items SELECT id, $2 || id, id * 1.25 FROM unnest($1::int[]) AS id',
      [ids, 'item-']);
  }
  await client.query('COMMIT');
} finally {
  client.release();
}
const agg = (await pool.query('SELECT count(*)::int AS n, sum(price)::text AS total, md5(string_agg(name, \',\' ORDER BY id)) AS names FROM e2e_items')).rows[0];

// A multi-MiB bytea, written and read back.
const blob = randomBytes(6 << 20);
await pool.query('INSERT INTO e2e_blobs VALUES (1, $1)', [blob]);
const back = (await pool.query('SELECT data, sha256(data) AS digest FROM e2e_blobs WHERE id = 1')).rows[0];
const want = createHash('sha256').update(blob).digest();
if (!Buffer.from(back.data).equals(blob)) throw new Error(`bytea read back differs (${back.data.length} bytes)`);
if (!Buffer.from(back.digest).equals(want)) throw new Error('the server digested other bytes than were sent');

// Concurrent clients, each on its own WebSocket.
const sums = await Promise.all(Array.from({ length: 8 }, async (_, k) => {
  const r = await pool.query('SELECT sum(id)::int AS s FROM e2e_items WHERE id % 8 = $1', [k]);
  return r.rows[0].s;
}));

await pool.end();
console.log(JSON.stringify({ ok: true, rows: agg.n, total: agg.total, names: agg.names, blobBytes: blob.length, blobDigest: want.toString('hex'), sums }));
