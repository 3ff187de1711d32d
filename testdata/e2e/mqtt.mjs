// MQTT.js over WebSocket (subprotocol mqtt) through ws_to_tcp to a broker
// that has only a TCP listener: two clients, each publishing COUNT QoS 1
// messages of up to 64 KiB to a topic the other subscribes to, so that
// every message crosses the relay both ways. Each receiver checks the
// order and the bytes of what it gets; the script prints one JSON line.
//
//   node mqtt.mjs ws://127.0.0.1:PORT/mqtt COUNT
import { createHash } from 'node:crypto';
import mqtt from 'mqtt';

const [url, countArg] = process.argv.slice(2);
const count = Number(countArg);

// payload is message i's bytes: a length from 1 to 65536 (every size class
// of a WebSocket frame), filled from a hash chain.
function payload(topic, i) {
  const len = i === 0 ? 65536 : 1 + ((i * 7919) % 65536);
  const out = Buffer.alloc(len);
  let block = createHash('sha256').update(`${topic}/${i}`).digest();
  for (let off = 0; off < len; off += block.length) {
    block.copy(out, off);
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

function connect(id) {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { clientId: id, protocolVersion: 4, clean: true, reconnectPeriod: 0, connectTimeout: 30000 });
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
}

// MQTT.js offers the subprotocol mqtt; the relay accepts only that one
// (subprotocols mqtt), so a connection proves it was negotiated.
const a = await connect('e2e-a');
const b = await connect('e2e-b');

// receive resolves when count messages have come on topic, in order and
// byte-exact, and returns their digest.
function receive(client, topic) {
  return new Promise((resolve, reject) => {
    let next = 0;
    const h = createHash('sha256');
    client.on('message', (t, msg, packet) => {
      if (t !== topic) return;
      const want = payload(topic, next);
      if (packet.qos !== 1) return reject(new Error(`${topic}: message ${next} at QoS ${packet.qos}`));
      if (!want.equals(msg)) return reject(new Error(`${topic}: message ${next} (${msg.length} bytes) is not the one sent (${want.length} bytes)`));
      h.update(msg);
      if (++next === count) resolve(h.digest('hex'));
    });
  });
}

await a.subscribeAsync('e2e/to-a', { qos: 1 });
await b.subscribeAsync('e2e/to-b', { qos: 1 });
const gotA = receive(a, 'e2e/to-a');
const gotB = receive(b, 'e2e/to-b');

// Publish in order; each QoS 1 publish waits for the broker's PUBACK.
async function publish(client, topic) {
  let bytes = 0;
  for (let i = 0; i < count; i++) {
    const p = payload(topic, i);
    bytes += p.length;
    await client.publishAsync(topic, p, { qos: 1 });
  }
  return bytes;
}
const [bytesToB, bytesToA] = await Promise.all([publish(a, 'e2e/to-b'), publish(b, 'e2e/to-a')]);
const [digestA, digestB] = await Promise.all([gotA, gotB]);
await Promise.all([a.endAsync(), b.endAsync()]);
console.log(JSON.stringify({ ok: true, count, bytesToA, bytesToB, digestA, digestB }));
