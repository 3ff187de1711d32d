// A WebSocket over HTTP/2 (RFC 8441) with Node's built-in http2 client:
// node h2ws.mjs <https://localhost:port> <mode> [path...]
//   echo <path> <MiB>: sends MiB of random bytes as binary messages, reads
//     the echo, closes (1000) and prints {"sent": sha256, "received": sha256,
//     "close": code, "subprotocol": ...}
//   status <path...>: prints {"<path>": status, ...} for each handshake
// The certificate is not checked (a test's self-signed one).
import http2 from 'node:http2';
import crypto from 'node:crypto';

const [base, mode, ...args] = process.argv.slice(2);

function connect() {
  return new Promise((resolve, reject) => {
    const session = http2.connect(base, { rejectUnauthorized: false });
    session.on('error', reject);
    session.on('remoteSettings', (s) => {
      if (!s.enableConnectProtocol) reject(new Error('the server does not advertise extended CONNECT'));
      else resolve(session);
    });
  });
}

function handshake(session, path, headers = {}) {
  return new Promise((resolve, reject) => {
    const stream = session.request({
      ':method': 'CONNECT', ':protocol': 'websocket', ':path': path, ':scheme': 'https',
      ':authority': new URL(base).host, 'sec-websocket-version': '13', ...headers,
    }, { endStream: false });
    stream.on('response', (h) => resolve({ stream, status: h[':status'], headers: h }));
    stream.on('error', reject);
  });
}

function frame(op, payload) {
  const n = payload.length;
  let head;
  if (n < 126) head = Buffer.from([0x80 | op, 0x80 | n]);
  else if (n < 65536) { head = Buffer.alloc(4); head[0] = 0x80 | op; head[1] = 0x80 | 126; head.writeUInt16BE(n, 2); }
  else { head = Buffer.alloc(10); head[0] = 0x80 | op; head[1] = 0x80 | 127; head.writeBigUInt64BE(BigInt(n), 2); }
  const key = crypto.randomBytes(4);
  const body = Buffer.alloc(n);
  for (let i = 0; i < n; i++) body[i] = payload[i] ^ key[i & 3];
  return Buffer.concat([head, key, body]);
}

// Server frames, parsed as they arrive.
function frames(stream, onFrame) {
  let buf = Buffer.alloc(0);
  stream.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (buf.length < 2) return;
      let n = buf[1] & 0x7f, off = 2;
      if (n === 126) { if (buf.length < 4) return; n = buf.readUInt16BE(2); off = 4; }
      else if (n === 127) { if (buf.length < 10) return; n = Number(buf.readBigUInt64BE(2)); off = 10; }
      if (buf.length < off + n) return;
      const op = buf[0] & 0x0f, payload = buf.subarray(off, off + n);
      buf = buf.subarray(off + n);
      onFrame(op, payload);
    }
  });
}

async function echo(path, mib) {
  const session = await connect();
  const { stream, status, headers } = await handshake(session, path, { 'sec-websocket-protocol': 'binary' });
  if (status !== 200) throw new Error(`status ${status}`);
  const data = crypto.randomBytes(mib << 20);
  const sent = crypto.createHash('sha256').update(data).digest('hex');
  const recv = crypto.createHash('sha256');
  let received = 0;
  const done = new Promise((resolve) => {
    frames(stream, (op, payload) => {
      if (op === 2) {
        recv.update(payload);
        received += payload.length;
        if (received === data.length) stream.write(frame(8, Buffer.from([0x03, 0xe8])));
      } else if (op === 9) {
        stream.write(frame(10, payload));
      } else if (op === 8) {
        resolve(payload.length >= 2 ? payload.readUInt16BE(0) : 1005);
      }
    });
  });
  for (let i = 0; i < data.length; i += 60000) {
    if (!stream.write(frame(2, data.subarray(i, i + 60000)))) {
      await new Promise((r) => stream.once('drain', r));
    }
  }
  const code = await done;
  stream.end();
  session.close();
  return { sent, received: recv.digest('hex'), close: code, subprotocol: headers['sec-websocket-protocol'] || '' };
}

async function statuses(paths) {
  const session = await connect();
  const out = {};
  for (const p of paths) {
    const [path, origin] = p.split(' ');
    const { stream, status } = await handshake(session, path, origin ? { origin } : {});
    out[p] = status;
    stream.close();
  }
  session.close();
  return out;
}

const result = mode === 'echo' ? await echo(args[0], Number(args[1])) : await statuses(args);
console.log(JSON.stringify(result));
