// The client's own fetch over node:http (src/nodefetch.js): only the
// client's deadline ends a call, connections are kept alive and closed when
// idle or when the client closes, and answers fetch cannot hold fail cleanly.
// Against node:http servers of the test's own.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';

import { Client, ConnectionError, LitebridgeError, OutcomeUnknownError } from '../src/index.js';
import { IDLE_MS } from '../src/nodefetch.js';
import { fakeServer } from './helpers.js';

/**
 * A node:http server answering each JSON-RPC request with its params, after
 * `delay(request)` ms; it counts connections and notes when each closes.
 * Stopped by `t.after`.
 */
async function echoServer(t, delay = () => 0) {
  const sockets = new Set();
  const seen = { connections: 0, closed: 0 };
  const server = createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const msg = JSON.parse(body);
      setTimeout(() => {
        const text = JSON.stringify({ jsonrpc: '2.0', id: msg.id, result: msg.params });
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
        res.end(text);
      }, delay(msg));
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
