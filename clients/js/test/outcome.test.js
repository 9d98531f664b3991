// Whether a failed call may have run: over HTTP against tiny servers of the
// test's own (node:net) that fail in each way, and the server's own
// `outcome_unknown` (-32013). A call is recoverable only when it certainly
// never reached litebridge.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  Client,
  ConnectionError,
  OutcomeUnknownError,
  LitebridgeError,
  fromWire,
  isRecoverableError,
} from '../src/index.js';
import { deadPort, fakeServer, reply } from './helpers.js';

test('a refused connection never carried the request: recoverable, kind unavailable', async () => {
  const c = Client.connect(`http://127.0.0.1:${await deadPort()}`);
  const e = await c.execute('INSERT INTO t VALUES (1)').catch((x) => x);
  assert.ok(e instanceof ConnectionError, e);
  assert.ok(!(e instanceof OutcomeUnknownError), e);
  assert.equal(e.kind, 'unavailable');
  assert.equal(e.recoverable, true);
  assert.ok(isRecoverableError(e));
  assert.match(e.message, /ECONNREFUSED/);
});

test('a request sent, then the connection closed, reset or cut, or a proxy answer: outcome_unknown, not recoverable', async (t) => {
  const cases = {
    'closed without an answer': (socket) => socket.end(),
    'reset without an answer': (socket) => socket.resetAndDestroy(),
    'an answer cut short': (socket) => {
      socket.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"jsonrpc"');
      setTimeout(() => socket.destroy(), 20);
    },
    "a proxy's 502": reply(502, '<html><body>502 Bad Gateway</body></html>', { 'content-type': 'text/html' }),
    "a proxy's 504": reply(504, 'upstream timed out'),
    "a proxy's 503 after passing it on": reply(
      503,
      'upstream connect error or disconnect/reset before headers. reset reason: connection termination',
    ),
    "a proxy's 500 with JSON of its own": reply(500, '{"message":"Internal server error"}'),
    'a 200 without JSON': reply(200, 'OK'),
  };
  for (const [name, answer] of Object.entries(cases)) {
    const { url, bodies } = await fakeServer(t, answer);
    const c = Client.connect(url);
    const e = await c.execute('INSERT INTO t VALUES (1)').catch((x) => x);
    assert.equal(bodies.length, 1, `${name}: the server read the request`);
    assert.ok(e instanceof OutcomeUnknownError, `${name}: ${e}`);
    assert.ok(e instanceof ConnectionError, name);
    assert.equal(e.kind, 'outcome_unknown', name);
    assert.equal(e.recoverable, false, name);
    assert.ok(!isRecoverableError(e), name);
    assert.match(e.message, /may or may not have run/, name);
    assert.ok(e.message.includes(url), `${name}: ${e.message}`);
  }
});

test("a 429 or the standby's refusals (litebridge-not-run) were not run: recoverable", async (t) => {
  const cases = [
    [reply(429, '<html>slow down</html>', { 'retry-after': '2' }), 2000],
    [reply(503, '{"error":"the server is shutting down"}', { 'retry-after': '1', 'litebridge-not-run': '1' }), 1000],
  ];
  for (const [answer, retryAfter] of cases) {
    const { url } = await fakeServer(t, answer);
    const e = await Client.connect(url)
      .execute('INSERT INTO t VALUES (1)')
      .catch((x) => x);
    assert.ok(e instanceof ConnectionError && !(e instanceof OutcomeUnknownError), e);
    assert.equal(e.kind, 'unavailable');
    assert.equal(e.recoverable, true);
    assert.equal(e.retryAfter, retryAfter);
  }
  // The standby's answer for a request the server had begun when it shut down: it may have run.
  const { url } = await fakeServer(
    t,
    reply(
      500,
      '{"jsonrpc":"2.0","id":null,"error":{"code":-32013,"message":"the request ended without an answer as the server shut down; it may or may not have run","data":{"kind":"outcome_unknown","recoverable":false}}}',
    ),
  );
  const e = await Client.connect(url)
    .execute('INSERT INTO t VALUES (1)')
    .catch((x) => x);
  assert.ok(e instanceof OutcomeUnknownError, e);
  assert.equal(e.recoverable, false);
});

test("the server's outcome_unknown (-32013) is OutcomeUnknownError, recoverable only if it says so", async (t) => {
  for (const [error, recoverable] of [
    [{ code: -32013, message: 'the COMMIT was sent but its answer was lost' }, false],
    [{ code: -32013, message: 'lost', data: { kind: 'outcome_unknown', recoverable: false } }, false],
    [{ code: -32013, message: 'lost', data: { kind: 'outcome_unknown', recoverable: true } }, true],
  ]) {
    const direct = fromWire(error);
    assert.ok(direct instanceof OutcomeUnknownError, direct);
    assert.equal(direct.kind, 'outcome_unknown');
    assert.equal(direct.code, -32013);
    assert.equal(direct.recoverable, recoverable);
    // And from a reply on the wire.
    const { url } = await fakeServer(t, reply(200, JSON.stringify({ jsonrpc: '2.0', id: 1, error })));
    const e = await Client.connect(url)
      .execute('INSERT INTO t VALUES (1)')
      .catch((x) => x);
    assert.ok(e instanceof OutcomeUnknownError && e instanceof LitebridgeError, e);
    assert.equal(e.message, error.message);
    assert.equal(isRecoverableError(e), recoverable);
  }
});
