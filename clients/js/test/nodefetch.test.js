// The client's own fetch over node:http (src/nodefetch.js): only the
// client's deadline ends a call, connections are kept alive and closed when
// idle or when the client closes, and answers fetch cannot hold fail cleanly.
// Against node:http servers of the test's own.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:http';
import net from 'node:net';

import { Client, ConnectionError, LitebridgeError, OutcomeUnknownError, TimeoutError, UnauthorizedError } from '../src/index.js';
import { IDLE_MS } from '../src/nodefetch.js';
import { fakeServer } from './helpers.js';

/**
 * A node:http server answering each JSON-RPC request with its params, after
 * `delay(request)` ms; it counts connections and notes when each closes.
 * Stopped by `t.after`.
 */
async function echoServer(t, delay = () => 0) {
  const sockets = new Set();
  const timers = new Set();
  const seen = { connections: 0, closed: 0 };
  const server = createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const msg = JSON.parse(body);
      const timer = setTimeout(() => {
        timers.delete(timer);
        const text = JSON.stringify({ jsonrpc: '2.0', id: msg.id, result: msg.params });
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
        res.end(text);
      }, delay(msg));
      timers.add(timer);
    });
  });
  server.on('connection', (socket) => {
    seen.connections += 1;
    sockets.add(socket);
    socket.on('close', () => {
      seen.closed += 1;
      sockets.delete(socket);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const timer of timers) clearTimeout(timer);
    for (const socket of sockets) socket.destroy();
    return new Promise((resolve) => server.close(resolve));
  });
  return { url: `http://127.0.0.1:${server.address().port}`, seen };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test('an answer that takes longer than the idle limit still arrives: only the deadline ends a call', async (t) => {
  const { url } = await echoServer(t, () => IDLE_MS + 1500);
  const c = Client.connect(url);
  t.after(() => c.close());
  const started = Date.now();
  const r = await c.transport.request({ jsonrpc: '2.0', id: 1, method: 'bridge.call', params: { method: 'slow' } });
  assert.deepEqual(r.result, { method: 'slow' });
  assert.ok(Date.now() - started >= IDLE_MS + 1000);
});

test('connections are kept alive, closed once idle past the idle limit, and closed by close()', async (t) => {
  const { url, seen } = await echoServer(t);
  const c = Client.connect(url);
  for (let id = 1; id <= 5; id++) {
    const r = await c.transport.request({ jsonrpc: '2.0', id, method: 'db.health', params: { n: id } });
    assert.deepEqual(r.result, { n: id });
  }
  assert.equal(seen.connections, 1, 'one connection for calls made one after another');
  await sleep(IDLE_MS + 1000);
  assert.equal(seen.closed, 1, 'the client closed the idle connection');
  await c.transport.request({ jsonrpc: '2.0', id: 6, method: 'db.health', params: {} });
  assert.equal(seen.connections, 2);
  await c.close();
  await sleep(200);
  assert.equal(seen.closed, 2, 'close() ended the kept-alive connection');
});

test('an answer fetch has no Response for (status 999) is a clean failure, not a hang', async (t) => {
  const { url } = await fakeServer(t, (socket) =>
    socket.end('HTTP/1.1 999 Odd\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}'),
  );
  const c = Client.connect(url);
  t.after(() => c.close());
  await assert.rejects(c.execute('INSERT INTO t VALUES (1)'), (e) => {
    assert.ok(e instanceof OutcomeUnknownError, e);
    assert.match(e.message, /999/);
    return true;
  });
  await assert.rejects(c.query('SELECT 1'), (e) => {
    assert.ok(e instanceof LitebridgeError, e);
    assert.match(e.message, /999/);
    return true;
  });
});

test('a request node:http cannot make (a header value it refuses) was not sent', async (t) => {
  const { url, requests } = await fakeServer(t, () => {});
  const c = Client.connect(url);
  t.after(() => c.close());
  // The key is checked before it gets here; what is left is a header
  // node:http refuses, reached through the transport's own headers.
  c.transport.headers = () => ({ 'x-bad': 'a\nb' });
  await assert.rejects(c.execute('INSERT INTO t VALUES (1)'), (e) => {
    assert.ok(e instanceof ConnectionError, e);
    assert.match(e.message, /not sent/);
    return true;
  });
  assert.equal(requests.length, 0);
});

test('a 101 answer (switching protocols) fails the call at once instead of leaving it pending', async (t) => {
  const { url } = await fakeServer(t, (socket) =>
    socket.write('HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n'),
  );
  const c = Client.connect(url, { deadline: 10_000 });
  t.after(() => c.close());
  const started = Date.now();
  await assert.rejects(c.execute('INSERT INTO t VALUES (1)'), (e) => {
    assert.ok(e instanceof OutcomeUnknownError, e);
    assert.match(e.message, /101/);
    return true;
  });
  assert.ok(Date.now() - started < 5_000, 'it waited for the deadline');
});

/** A loopback port that takes no connection: its listener's backlog is full, so a SYN gets no answer. */
async function blackhole(t) {
  const child = spawn('python3', ['-c', `
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0)
fill = []
for _ in range(8):
    f = socket.socket(); f.setblocking(False); f.connect_ex(s.getsockname()); fill.append(f)
print(s.getsockname()[1], flush=True)
sys.stdin.read()
`], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.after(() => child.kill());
  const [line] = await once(child.stdout, 'data');
  return `http://127.0.0.1:${Number(String(line).trim())}`;
}

test('a deadline that passes while connecting: the request was not sent, a write is not OutcomeUnknownError', async (t) => {
  const url = await blackhole(t);
  const c = Client.connect(url, { deadline: 1_000 });
  t.after(() => c.close());
  for (const call of [() => c.execute('INSERT INTO t VALUES (1)'), () => c.query('SELECT 1')]) {
    await assert.rejects(call(), (e) => {
      assert.ok(e instanceof TimeoutError, e);
      assert.ok(!(e instanceof OutcomeUnknownError));
      assert.equal(e.recoverable, true);
      return true;
    });
  }
});

test('close() fails the requests made after it at once, as not sent', async (t) => {
  const { url, requests } = await fakeServer(t, () => {});
  const c = Client.connect(url, { deadline: 30_000 });
  await c.close();
  const started = Date.now();
  await assert.rejects(c.execute('INSERT INTO t VALUES (1)'), (e) => {
    assert.ok(e instanceof ConnectionError, e);
    assert.ok(!(e instanceof OutcomeUnknownError));
    assert.match(e.message, /closed/);
    return true;
  });
  assert.ok(Date.now() - started < 1_000);
  assert.equal(requests.length, 0);
});

test('close() cuts off a write in flight: OutcomeUnknownError at once, not a wait for the deadline', async (t) => {
  const { url } = await echoServer(t, () => 20_000);
  const c = Client.connect(url, { deadline: 30_000 });
  const write = c.execute('INSERT INTO t VALUES (1)');
  const outcome = assert.rejects(write, (e) => {
    assert.ok(e instanceof OutcomeUnknownError, e);
    return true;
  });
  await sleep(200); // the request has reached the server
  const started = Date.now();
  await c.close();
  await outcome;
  assert.ok(Date.now() - started < 1_000);
});

test('a body that ends with the connection, cut by the deadline, is a timeout, not a short answer', async (t) => {
  const { url } = await fakeServer(t, (socket) => {
    // No content-length, no chunks: the body ends when the connection does.
    socket.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"jsonrpc":"2.0","id":1,"result":{"rows":[');
    const trickle = setInterval(() => socket.write('[1],'), 100);
    socket.on('close', () => clearInterval(trickle));
  });
  const c = Client.connect(url, { deadline: 800 });
  t.after(() => c.close());
  await assert.rejects(c.query('SELECT 1'), (e) => {
    assert.ok(e instanceof TimeoutError, e);
    assert.match(e.message, /whole answer/);
    return true;
  });
});

test('NODE_DEBUG=http does not print the key', async (t) => {
  const { url } = await fakeServer(t, (socket, request) => {
    const id = JSON.parse(request.body).id;
    const body = JSON.stringify({ jsonrpc: '2.0', id, result: { changes: 1 } });
    socket.end(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`);
  });
  const script = `
    import { Client } from ${JSON.stringify(new URL('../src/index.js', import.meta.url).href)};
    const c = Client.connect(${JSON.stringify(url)}, { key: 'lb_SECRET_KEY_TO_HIDE' });
    console.log(JSON.stringify(await c.execute('INSERT INTO t VALUES (1)')));
    await c.close();
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    env: { ...process.env, NODE_DEBUG: 'http,net' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const [code] = await once(child, 'exit');
  assert.equal(code, 0, err);
  assert.match(out, /"changes":1/);
  assert.ok(err.length > 0, 'NODE_DEBUG printed nothing: the test shows nothing');
  assert.ok(!err.includes('SECRET_KEY'), 'the key was printed');
});

test('a connection that fails after the request was read (EHOSTUNREACH on a read) is OutcomeUnknownError for a write, never "cannot reach"', async (t) => {
  // Linux reports EHOSTUNREACH or ECONNREFUSED on an established socket
  // whose host went away; simulated by destroying the client's socket with
  // the error libuv gives then (syscall "read"), after the server read the call.
  const sockets = [];
  const connect = net.Socket.prototype.connect;
  net.Socket.prototype.connect = function (...args) {
    sockets.push(this);
    return connect.apply(this, args);
  };
  t.after(() => {
    net.Socket.prototype.connect = connect;
  });
  let ran = 0;
  let code;
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      ran += 1;
      const socket = sockets.at(-1);
      setTimeout(() => socket.destroy(Object.assign(new Error(`read ${code}`), { code, syscall: 'read' })), 20);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => server.close(resolve)));
  const url = `http://127.0.0.1:${server.address().port}`;
  for (const fetch of [undefined, globalThis.fetch]) {
    for (code of ['EHOSTUNREACH', 'ECONNREFUSED']) {
      const c = Client.connect(url, { deadline: 5_000, fetch });
      const before = ran;
      await assert.rejects(c.execute('INSERT INTO t VALUES (1)'), (e) => {
        assert.ok(e instanceof OutcomeUnknownError, `${fetch ? "Node's fetch" : 'own fetch'}, ${code}: ${e}`);
        return true;
      });
      assert.equal(ran - before, 1);
      await c.close();
    }
  }
});

test('an answer before the body was read, then a reset, does not end the process (review 244; nodejs/node#54366)', async (t) => {
  // The server answers 401 as soon as it has the head, and resets while the
  // 8 MiB body is still being written on the kept-alive socket: the EPIPE or
  // ECONNRESET that follows reached no request, and node:http threw it.
  const sockets = new Set();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    let head = '';
    const onData = (d) => {
      head += d.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      socket.off('data', onData);
      socket.pause();
      const body =
        '{"jsonrpc":"2.0","id":null,"error":{"code":-32006,"message":"bad key","data":{"kind":"unauthorized","recoverable":false}}}';
      socket.write(`HTTP/1.1 401 X\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
      socket.destroy();
    };
    socket.on('data', onData);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => {
    for (const s of sockets) s.destroy();
    return new Promise((r) => server.close(r));
  });
  const c = Client.connect(`http://127.0.0.1:${server.address().port}`, { key: 'lb_revoked' });
  t.after(() => c.close());
  for (let i = 0; i < 3; i++) {
    await assert.rejects(c.execute('INSERT INTO t VALUES (?1)', ['x'.repeat(8 << 20)]), UnauthorizedError);
  }
  // Long enough for a late socket error to surface.
  await new Promise((r) => setTimeout(r, 200));
});
