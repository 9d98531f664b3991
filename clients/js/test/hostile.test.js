// The client over HTTP against servers that answer what litebridge never
// would (redirects, JSON that is not a reply, gateways' errors, endless or
// compressed bodies, broken event streams), servers that never answer, and
// keys and URLs that must not leak: tiny servers of the test's own.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { gzipSync } from 'node:zlib';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import {
  Client,
  ConnectionError,
  InvalidArgumentError,
  LitebridgeError,
  OutcomeUnknownError,
  ProtocolError,
  SqlError,
  TimeoutError,
  TooLargeError,
  UnauthorizedError,
  fromWire,
} from '../src/index.js';
import { deadPort, fakeServer, reply } from './helpers.js';

const WRITE = 'INSERT INTO t VALUES (1)';

/** An answer of `status` with JSON `body(request)` (the request parsed, if it is JSON), then the connection closed. */
function answerWith(status, body, headers = {}) {
  return (socket, request) => {
    let parsed;
    try {
      parsed = JSON.parse(request.body);
    } catch {
      // a GET
    }
    const text = typeof body === 'function' ? body(parsed) : body;
    reply(status, text, { 'content-type': 'application/json', ...headers })(socket);
  };
}

/** Whether `p` settles within `ms`; what it settled with. */
async function within(p, ms) {
  let timer;
  const late = new Promise((resolve) => {
    timer = setTimeout(resolve, ms, 'still pending');
  });
  try {
    return await Promise.race([p.then((v) => ({ value: v }), (e) => ({ error: e })), late]);
  } finally {
    clearTimeout(timer);
  }
}

test('a redirect is never followed: nothing reaches the other host, and the request was not run', async (t) => {
  const thief = await fakeServer(t, answerWith(200, (r) => JSON.stringify({ jsonrpc: '2.0', id: r?.id ?? 1, result: { changes: 1 } })));
  for (const status of [301, 302, 303, 307, 308]) {
    const front = await fakeServer(t, reply(status, '', { location: `${thief.url}/steal` }));
    const c = Client.connect(front.url, { key: 'lb_SECRET_KEY' });
    const e = await c.execute('INSERT INTO t VALUES (?1)', ['secret-value']).catch((x) => x);
    assert.ok(e instanceof ConnectionError && !(e instanceof OutcomeUnknownError), `${status}: ${e}`);
    assert.equal(e.kind, 'unavailable');
    assert.equal(e.recoverable, false);
    assert.match(e.message, /redirect/);
    assert.match(e.message, /was not run/);
    const m = await c.metrics().catch((x) => x);
    assert.ok(m instanceof ConnectionError, `${status} metrics: ${m}`);
    // The event stream ends with the redirect, never following it.
    const ended = new Promise((resolve) => c.on('error', resolve));
    c.on('started', () => {});
    const { value: error } = await within(ended, 5000);
    assert.ok(error instanceof ConnectionError, `${status} events: ${inspect(error)}`);
    await c.close();
    assert.equal(thief.requests.length, 0, `${status}: the other host saw ${JSON.stringify(thief.requests)}`);
  }
});

test('a key is trimmed; one with a control character is refused without being shown; inspect and JSON never show it', async (t) => {
  const server = await fakeServer(t, answerWith(200, (r) => JSON.stringify({ jsonrpc: '2.0', id: r.id, result: { changes: 1 } })));
  // A key file's newline: dropped.
  assert.deepEqual(await Client.connect(server.url, { key: '  lb_SECRET\n' }).execute(WRITE), { changes: 1 });
  assert.match(server.requests[0].head, /\r\nauthorization: Bearer lb_SECRET\r\n/i);
  for (const key of ['lb_SE\nCRET', 'lb_SE\rCRET', 'lb_SE\u0000CRET', 'lb_S\u0100CRET']) {
    assert.throws(
      () => Client.connect(server.url, { key }),
      (e) => e instanceof TypeError && /control character/.test(e.message) && !e.message.includes('CRET'),
    );
  }
  const c = Client.connect(server.url, { key: 'lb_SECRET_KEY' });
  assert.ok(!inspect(c, { depth: 10, showHidden: true }).includes('lb_SECRET_KEY'));
  assert.ok(!JSON.stringify(c).includes('lb_SECRET_KEY'));
  assert.ok(!inspect(c.transport, { depth: 10 }).includes('lb_SECRET_KEY'));
  await c.execute(WRITE);
  assert.match(server.requests[1].head, /\r\nauthorization: Bearer lb_SECRET_KEY\r\n/i);
});

test('a URL with a password is refused without showing it; a request fetch refuses to make was not sent', async (t) => {
  assert.throws(
    () => Client.connect('http://admin:hunter2@127.0.0.1:7070'),
    (e) => e instanceof TypeError && !e.message.includes('hunter2'),
  );
  // fetch's own TypeError, with no network error as its cause: nothing left the process.
  const refusing = async (_url, init) => {
    throw new TypeError(`Headers.append: "${init.headers.authorization}" is an invalid header value.`);
  };
  const c = Client.connect('http://127.0.0.1:1', { key: 'lb_SECRET_KEY', fetch: refusing });
  const e = await c.execute(WRITE).catch((x) => x);
  assert.ok(e instanceof ConnectionError && !(e instanceof OutcomeUnknownError), e);
  assert.equal(e.kind, 'unavailable');
  assert.match(e.message, /not sent/);
  assert.ok(!e.message.includes('lb_SECRET_KEY'), e.message);
});

test('a 2xx that is not a JSON-RPC reply to this request: a write or call may have run, a read fails clearly', async (t) => {
  const cases = {
    'JSON of another kind': answerWith(200, '{"status":"ok"}'),
    'an empty object': answerWith(200, '{}'),
    'a reply to another id': answerWith(200, '{"jsonrpc":"2.0","id":999,"result":{"changes":1,"last_insert_rowid":7}}'),
    'an empty batch': answerWith(200, '[]'),
    'a string': answerWith(200, '"ok"'),
    'no jsonrpc member': answerWith(200, (r) => JSON.stringify({ id: r.id, result: { changes: 1 } })),
    'neither result nor error': answerWith(200, (r) => JSON.stringify({ jsonrpc: '2.0', id: r.id })),
    'both result and error': answerWith(200, (r) =>
      JSON.stringify({ jsonrpc: '2.0', id: r.id, result: 1, error: { code: -32000, message: 'm' } }),
    ),
    'an empty error': answerWith(200, (r) => JSON.stringify({ jsonrpc: '2.0', id: r.id, error: {} })),
    'an error with a code that is not an integer': answerWith(200, (r) =>
      JSON.stringify({ jsonrpc: '2.0', id: r.id, error: { code: 'boom', message: 'm' } }),
    ),
    'a 204': (socket) => socket.end('HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n'),
  };
  for (const [name, answer] of Object.entries(cases)) {
    const { url } = await fakeServer(t, answer);
    const c = Client.connect(url);
    const w = await c.execute(WRITE).catch((x) => x);
    assert.ok(w instanceof OutcomeUnknownError, `${name}: execute gave ${inspect(w)}`);
    assert.match(w.message, /may or may not have run/, name);
    const call = await c.call('charge', ['acct', 10]).catch((x) => x);
    assert.ok(call instanceof OutcomeUnknownError, `${name}: call gave ${inspect(call)}`);
    const r = await c.query('SELECT 1').catch((x) => x);
    assert.ok(r instanceof ConnectionError && !(r instanceof OutcomeUnknownError), `${name}: query gave ${inspect(r)}`);
  }
  // A reply with this request's id, and an error with a null id, are replies.
  const { url } = await fakeServer(t, answerWith(200, (r) => JSON.stringify({ jsonrpc: '2.0', id: r.id, result: { changes: 2 } })));
  assert.deepEqual(await Client.connect(url).execute(WRITE), { changes: 2 });
  const refused = await fakeServer(
    t,
    answerWith(200, '{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error: x"}}'),
  );
  assert.ok((await Client.connect(refused.url).execute(WRITE).catch((x) => x)) instanceof ProtocolError);
});

test("a gateway's 502 or 504 with JSON of its own is not litebridge's error: the write may have run", async (t) => {
  for (const [status, body] of [
    [504, '{"error":{"code":504,"message":"upstream request timeout","status":"DEADLINE_EXCEEDED"}}'],
    [502, '{"error":{}}'],
    [504, '{"jsonrpc":"2.0","id":null,"error":{"code":504,"message":"upstream request timeout"}}'],
  ]) {
    const { url } = await fakeServer(t, answerWith(status, body));
    const e = await Client.connect(url).execute(WRITE).catch((x) => x);
    assert.ok(e instanceof OutcomeUnknownError, `${status} ${body}: ${inspect(e)}`);
    assert.match(e.message, new RegExp(`answered ${status}`));
  }
  // litebridge's own refusals still are its errors.
  const unauthorized = await fakeServer(
    t,
    answerWith(
      401,
      '{"jsonrpc":"2.0","id":null,"error":{"code":-32006,"message":"the API key is not valid","data":{"kind":"unauthorized","recoverable":false}}}',
    ),
  );
  assert.ok((await Client.connect(unauthorized.url).execute(WRITE).catch((x) => x)) instanceof UnauthorizedError);
  const tooBig = await fakeServer(
    t,
    answerWith(413, '{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request: the body is too large"}}'),
  );
  assert.ok((await Client.connect(tooBig.url).execute(WRITE).catch((x) => x)) instanceof ProtocolError);
});

test('an integer past 2^53 in what a call or a write returned is a BigInt, never a failure after it ran', async (t) => {
  const big = '{"jsonrpc":"2.0","id":ID,"result":{"account":"a","charged":9007199254740993}}';
  const { url } = await fakeServer(t, answerWith(200, (r) => big.replace('ID', r.id)));
  const c = Client.connect(url);
  assert.deepEqual(await c.call('charge', ['a', 9007199254740993n]), { account: 'a', charged: 9007199254740993n });
  assert.deepEqual(await c.request('sql.execute', { sql: WRITE }), { account: 'a', charged: 9007199254740993n });
  // A read still says which option it takes (nothing ran).
  await assert.rejects(c.request('sql.query', { sql: 'SELECT 1' }), RangeError);
  assert.deepEqual(await c.request('sql.query', { sql: 'SELECT 1' }, { bigint: true }), {
    account: 'a',
    charged: 9007199254740993n,
  });
});

test('batch mode: a value JSON cannot carry fails its own call; a write missing from the reply may have run', async (t) => {
  const { url, bodies } = await fakeServer(
    t,
    answerWith(200, (batch) =>
      JSON.stringify(batch.map((r) => ({ jsonrpc: '2.0', id: r.id, result: { columns: ['n'], rows: [[r.id]], truncated: false } }))),
    ),
  );
  const c = Client.connect(url, { batch: true });
  const cyclic = {};
  cyclic.self = cyclic;
  const [good, nan, cyc, read] = await Promise.allSettled([
    c.execute('INSERT INTO t VALUES (?1)', ['good']),
    c.query('SELECT ?1', [NaN]),
    c.call('echo', [cyclic]),
    c.query('SELECT 1'),
  ]);
  assert.equal(good.status, 'fulfilled', inspect(good));
  assert.ok(nan.reason instanceof InvalidArgumentError, inspect(nan));
  assert.ok(cyc.reason instanceof InvalidArgumentError, inspect(cyc));
  assert.equal(read.status, 'fulfilled', inspect(read));
  assert.equal(bodies.length, 1);
  assert.equal(JSON.parse(bodies[0]).length, 2);

  // A reply without the answers: the write may have run, the read failed.
  const empty = await fakeServer(t, answerWith(200, '[]'));
  const b = Client.connect(empty.url, { batch: true });
  const [w, q] = await Promise.allSettled([b.execute(WRITE), b.query('SELECT 1')]);
  assert.ok(w.reason instanceof OutcomeUnknownError, inspect(w));
  assert.ok(q.reason instanceof ConnectionError && !(q.reason instanceof OutcomeUnknownError), inspect(q));
});

test('batch mode splits a tick of calls into bodies under the server limit (16 MiB)', async (t) => {
  const { url, bodies } = await fakeServer(
    t,
    answerWith(200, (batch) => {
      const one = (r) => ({ jsonrpc: '2.0', id: r.id, result: { changes: 1 } });
      return JSON.stringify(Array.isArray(batch) ? batch.map(one) : one(batch));
    }),
  );
  const c = Client.connect(url, { batch: true });
  const v = 'x'.repeat(1_500_000);
  const results = await Promise.all(Array.from({ length: 12 }, () => c.execute('INSERT INTO blobs VALUES (?1)', [v])));
  assert.equal(results.length, 12);
  assert.ok(bodies.length >= 2, `${bodies.length} bodies`);
  for (const body of bodies) assert.ok(Buffer.byteLength(body) <= 16 * 1024 * 1024, `${Buffer.byteLength(body)} bytes`);
});

test('a server that never answers, or trickles: a write is OutcomeUnknownError and a read a TimeoutError at the deadline', async (t) => {
  const hang = await fakeServer(t, () => {});
  const c = Client.connect(hang.url, { deadline: 300 });
  let started = Date.now();
  const w = await c.execute(WRITE, [], { signal: AbortSignal.timeout(100_000) }).catch((x) => x);
  assert.ok(w instanceof OutcomeUnknownError, inspect(w));
  assert.match(w.message, /300 ms/);
  assert.ok(Date.now() - started < 3000);
  started = Date.now();
  const r = await c.query('SELECT 1').catch((x) => x);
  assert.ok(r instanceof TimeoutError && r.kind === 'timeout', inspect(r));
  assert.ok(Date.now() - started < 3000);
  // Headers, then one byte at a time: the deadline covers the body too.
  const trickle = await fakeServer(t, (socket) => {
    socket.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n');
    const drip = setInterval(() => socket.writable && socket.write('1\r\n \r\n'), 50);
    socket.on('close', () => clearInterval(drip));
  });
  started = Date.now();
  const d = await Client.connect(trickle.url, { deadline: 400 })
    .call('charge', ['a', 1])
    .catch((x) => x);
  assert.ok(d instanceof OutcomeUnknownError, inspect(d));
  assert.ok(Date.now() - started < 3000);
  // A call's own timeout sets its deadline: that and 5 s.
  started = Date.now();
  const own = await within(Client.connect(hang.url).query('SELECT 1', [], { timeout: 100 }), 15_000);
  assert.ok(own.error instanceof TimeoutError, inspect(own));
  assert.match(own.error.message, /5100 ms/);
  assert.ok(Date.now() - started >= 5000);
  assert.throws(() => Client.connect(hang.url, { deadline: -1 }), TypeError);
});

test('answers are read up to maxResponseBytes, never inflated', async (t) => {
  const long = (r) => JSON.stringify({ jsonrpc: '2.0', id: r.id, result: { columns: ['x'], rows: [['x'.repeat(200_000)]], truncated: false } });
  const chunked = (socket, request) => {
    const body = long(JSON.parse(request.body));
    socket.end(
      'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n' +
        `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`,
    );
  };
  for (const [name, answer] of [
    ['with a content-length', answerWith(200, long)],
    ['chunked', chunked],
  ]) {
    const { url } = await fakeServer(t, answer);
    const c = Client.connect(url, { maxResponseBytes: 100_000 });
    const r = await c.query('SELECT x').catch((x) => x);
    assert.ok(r instanceof TooLargeError, `${name}: ${inspect(r)}`);
    assert.match(r.message, /maxResponseBytes/);
    const w = await c.execute(WRITE).catch((x) => x);
    assert.ok(w instanceof OutcomeUnknownError, `${name}: ${inspect(w)}`);
    // Under the limit, the same answer is read.
    assert.equal((await Client.connect(url).query('SELECT x'))[0].x.length, 200_000);
  }
  // Compressed though not asked for: not inflated.
  const gzip = await fakeServer(t, (socket, request) => {
    const body = gzipSync(long(JSON.parse(request.body)));
    socket.end(
      Buffer.concat([
        Buffer.from(
          `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n`,
        ),
        body,
      ]),
    );
  });
  const g = await Client.connect(gzip.url).execute(WRITE).catch((x) => x);
  assert.ok(g instanceof OutcomeUnknownError, inspect(g));
  assert.match(gzip.requests[0].head, /\r\naccept-encoding: identity\r\n/i);
});

test('metrics(): an error answer is an error, an unreachable server a ConnectionError', async (t) => {
  const { url } = await fakeServer(
    t,
    answerWith(
      401,
      '{"jsonrpc":"2.0","id":null,"error":{"code":-32006,"message":"the API key is not valid (unknown or revoked)","data":{"kind":"unauthorized","recoverable":false}}}',
    ),
  );
  await assert.rejects(Client.connect(url, { key: 'lb_wrong' }).metrics(), UnauthorizedError);
  const e = await Client.connect(`http://127.0.0.1:${await deadPort()}`)
    .metrics()
    .catch((x) => x);
  assert.ok(e instanceof ConnectionError && e.recoverable, inspect(e));
  const text = await fakeServer(t, reply(200, '# TYPE x counter\nx 1\n', { 'content-type': 'text/plain' }));
  assert.match(await Client.connect(text.url).metrics(), /# TYPE x counter/);
});

/** An event stream's answer: `events` written, then the connection closed. */
function sse(events) {
  return (socket) => {
    socket.write('HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n');
    for (const e of events) socket.write(e);
    socket.end();
  };
}

test('events: a failed GET /events without Retry-After waits 1 s, doubling, before trying again', async (t) => {
  const { url, requests } = await fakeServer(t, reply(500, 'oops', { 'content-type': 'text/plain' }));
  const c = Client.connect(url);
  c.on('started', () => {});
  await new Promise((r) => setTimeout(r, 2500));
  await c.close();
  // At 0 s, 1 s and 3 s: two in 2.5 s (no storm).
  assert.ok(requests.length >= 1 && requests.length <= 2, `${requests.length} requests in 2.5 s`);
});

test('events: an id a header cannot carry is dropped, and the stream goes on after reconnecting', async (t) => {
  let n = 0;
  const { url, requests } = await fakeServer(t, (socket) => {
    n += 1;
    if (n === 1) sse(['id: 7\x7fX-Injected: 1\ndata: {"event":"started","seq":1}\n\n'])(socket);
    else sse([`id: ok-${n}\ndata: {"event":"started","seq":${n}}\n\n`])(socket);
  });
  const c = Client.connect(url);
  const seen = [];
  c.on('started', (e) => seen.push(e.seq));
  for (let i = 0; i < 100 && seen.length < 2; i++) await new Promise((r) => setTimeout(r, 50));
  await c.close();
  assert.deepEqual(seen.slice(0, 2), [1, 2]);
  assert.ok(!requests[1].head.toLowerCase().includes('last-event-id'), requests[1].head);
});

test('events: lines end at CRLF, LF or a lone CR, even split across chunks; data lines join with LF', async (t) => {
  const { url } = await fakeServer(
    t,
    sse([
      'id: a\rdata: {"event":"started",\r',
      '\ndata:  "seq":1}\r\r',
      'data: {"event":"started","seq":2,"text":"x\\ny"}\r\n\r',
      '\n',
      'data: {"event":"started",\rdata: "seq":3}\n\n',
    ]),
  );
  const c = Client.connect(url);
  const seen = [];
  c.on('started', (e) => seen.push(e.seq));
  for (let i = 0; i < 100 && seen.length < 3; i++) await new Promise((r) => setTimeout(r, 50));
  await c.close();
  assert.deepEqual(seen, [1, 2, 3]);
});

test('events: a line or an event past 1 MiB is dropped, and the events after it arrive', async (t) => {
  const { url } = await fakeServer(
    t,
    sse([
      'data: {"event":"started","seq":1,"pad":"',
      'x'.repeat(3 * 1024 * 1024),
      '"}\n\n',
      'data: {"event":"started","seq":2}\n\n',
    ]),
  );
  const c = Client.connect(url);
  const seen = [];
  c.on('started', (e) => seen.push(e.seq));
  for (let i = 0; i < 100 && seen.length < 1; i++) await new Promise((r) => setTimeout(r, 50));
  await c.close();
  assert.deepEqual(seen, [2]);
});

test('events: a gzip-encoded stream (never asked for) is not inflated: no event of it arrives', async (t) => {
  const gzipped = gzipSync('data: {"event":"started","seq":1}\n\n');
  const { url, requests } = await fakeServer(t, (socket) => {
    socket.write(
      'HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: gzip\r\n' +
        `content-length: ${gzipped.length}\r\nconnection: close\r\n\r\n`,
    );
    socket.end(gzipped);
  });
  const c = Client.connect(url);
  const seen = [];
  c.on('started', (e) => seen.push(e.seq));
  for (let i = 0; i < 30 && requests.length < 2; i++) await new Promise((r) => setTimeout(r, 50));
  await new Promise((r) => setTimeout(r, 200));
  await c.close();
  assert.ok(requests.length >= 1, 'the stream was asked for');
  assert.deepEqual(seen, []);
});

test('a URL that does not parse is refused, and a password in it is never shown', async (t) => {
  for (const url of [
    'http://admin:s3cret@localhost:99999',
    'http://admin:s3cret@[::1:7070',
    'http:admin:s3cret@localhost:7070',
    'http:\\\\admin:s3cret@localhost:7070',
    'http://admin:s3c/ret@localhost:7070',
    // A password holding `?`, `#` or `/` after digits: the URL reads as host
    // `admin` (or localhost), and the key went there (review 208).
    'http://localhost:7070?s3cret@127.0.0.1:7070',
    'http://admin:7070#s3cret@127.0.0.1:7070',
    'http://admin:7070/s3cret@127.0.0.1:7070',
    'http://[::1:7070',
    'http://localhost:99999',
    'http://127.0.0.1:7070/?s3c=1',
    'http://127.0.0.1:7070/s3c ret',
    'http://127.0.0.1:7070/s3c\x7fret',
    // Read as another host than the text shows (review 209).
    'http://127.0.0.1:7070\\s3c.trusted.example:7070',
    'http://127\u30020\u30020\u30021:7070/s3c',
    'http:s3c.example:7070',
    'file:///etc/s3c7070',
  ]) {
    assert.throws(
      () => Client.connect(url, { key: 'k' }),
      (e) => e instanceof TypeError && !e.message.includes('s3c') && !e.message.includes('7070') && !e.message.includes('99999'),
      url,
    );
  }
  for (const url of ['http://127.0.0.1:7070/', ' http://localhost:7070/x\n', 'http://[::1]:7070']) {
    assert.doesNotThrow(() => Client.connect(url), url);
  }
});

test("Node's fetch giving up on an answer's headers after 300 s: a write may have run, a read timed out; the limit is named", async () => {
  // What Node's fetch (undici) rejects with when headersTimeout (300 s) passes, whatever the signal's deadline.
  const giveUp = async () => {
    const cause = Object.assign(new Error('Headers Timeout Error'), { name: 'HeadersTimeoutError', code: 'UND_ERR_HEADERS_TIMEOUT' });
    throw new TypeError('fetch failed', { cause });
  };
  const c = Client.connect('http://127.0.0.1:1', { fetch: giveUp, deadline: 400_000 });
  const w = await c.execute(WRITE).catch((x) => x);
  assert.ok(w instanceof OutcomeUnknownError, inspect(w));
  assert.match(w.message, /300 s/);
  assert.match(w.message, /headersTimeout/);
  const r = await c.query('SELECT 1').catch((x) => x);
  assert.ok(r instanceof TimeoutError && !(r instanceof OutcomeUnknownError), inspect(r));
  assert.equal(r.kind, 'timeout');
  assert.match(r.message, /300 s/);
});

test('fromWire: kinds that name Object.prototype members, odd codes, and unbounded retry_after_ms', () => {
  for (const kind of ['constructor', '__proto__', 'toString', 'hasOwnProperty']) {
    const e = fromWire({ code: -32000, message: 'm', data: { kind } });
    assert.ok(e instanceof SqlError, `${kind}: ${inspect(e)}`);
    assert.equal(e.message, 'm');
  }
  for (const code of ['boom', null, Infinity, 1.5]) {
    const e = fromWire({ code, message: 'm' });
    assert.ok(e instanceof LitebridgeError);
    assert.equal(e.code, 0);
  }
  assert.ok(fromWire('a string') instanceof LitebridgeError);
  assert.ok(fromWire({ code: -32000, message: { toString: 1 } }) instanceof SqlError);
  const over = { code: -32002, message: 'm', data: { kind: 'overloaded', recoverable: true } };
  assert.equal(fromWire({ ...over, data: { ...over.data, retry_after_ms: 1e300 } }).retryAfter, 300_000);
  assert.equal(fromWire({ ...over, data: { ...over.data, retry_after_ms: -5 } }).retryAfter, 0);
  assert.equal(fromWire({ ...over, data: { ...over.data, retry_after_ms: 250 } }).retryAfter, 250);
});

test('events: data that is not an event of the list (null, "error", "newListener") is dropped, not emitted', async (t) => {
  // Review 192: `data: null` was a TypeError thrown in the client's own
  // code, and an event named "error" an unhandled 'error': either took the
  // process down.
  const { url } = await fakeServer(
    t,
    sse([
      'data: null\n\n',
      'data: 7\n\n',
      'data: {"event":"error","seq":0}\n\n',
      'data: {"event":"newListener","seq":0}\n\n',
      'data: {"event":"started","seq":1}\n\n',
    ]),
  );
  const c = Client.connect(url);
  const seen = [];
  c.on('started', (e) => seen.push(e.seq));
  for (let i = 0; i < 100 && seen.length < 1; i++) await new Promise((r) => setTimeout(r, 50));
  await c.close();
  assert.deepEqual(seen, [1]);
});

/** A `litebridge stdio` stand-in: answers its start, then runs `then` (Python) on the next request, `line`. */
function fakeChild(t, then) {
  const dir = mkdtempSync(join(tmpdir(), 'lb-child-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const script = join(dir, 'child.py');
  writeFileSync(
    script,
    '#!/usr/bin/env python3\nimport json, os, sys\n' +
      'first = json.loads(sys.stdin.readline())\n' +
      'sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": first["id"], "result": {}}) + "\\n")\n' +
      'sys.stdout.flush()\n' +
      // The next request of a caller's (not the client's own subscription).
      'line = {"method": "events.subscribe"}\n' +
      'while line.get("method") == "events.subscribe":\n    line = json.loads(sys.stdin.readline())\n' +
      then,
    { mode: 0o755 },
  );
  return script;
}

test('stdio: an event line with no params is dropped, and the call is answered', async (t) => {
  const bin = fakeChild(
    t,
    'sys.stdout.write(\'{"jsonrpc":"2.0","method":"event"}\\n\')\n' +
      'sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": line["id"], "result": {"columns": ["x"], "rows": [[1]]}}) + "\\n")\n' +
      'sys.stdout.flush()\nsys.stdin.read()\n',
  );
  const c = Client.spawn({ bin });
  c.on('started', () => {});
  try {
    assert.deepEqual(await c.query('SELECT 1 AS x'), [{ x: 1 }]);
  } finally {
    await c.close();
  }
});

test('stdio: a line past maxResponseBytes stops the child and fails its calls, where it was an uncaught RangeError', async (t) => {
  const bin = fakeChild(
    t,
    'os.write(2, b"e" * (1 << 20))\nchunk = b"x" * (1 << 16)\nwhile True:\n    os.write(1, chunk)\n',
  );
  const c = Client.spawn({ bin, maxResponseBytes: 4 * 1024 * 1024 });
  try {
    const got = await within(c.execute(WRITE), 30_000);
    assert.ok(got.error instanceof OutcomeUnknownError, String(got.error ?? got.value));
    assert.match(got.error.message, /longer than 4194304 characters/);
    assert.ok(got.error.message.length < 200_000, `${got.error.message.length} characters`);
  } finally {
    await c.close();
  }
});

test('stdio: a line that is not a JSON-RPC reply to the request is not taken for a success', async (t) => {
  // Review 192: neither `result` nor `error` resolved as a success, and
  // `"id": "<n>"` answered request n.
  for (const answer of ['{"jsonrpc": "2.0", "id": line["id"]}', '{"jsonrpc": "2.0", "id": str(line["id"]), "result": 1}']) {
    const bin = fakeChild(t, `sys.stdout.write(json.dumps(${answer}) + "\\n")\nsys.stdout.flush()\nsys.stdin.read()\n`);
    const c = Client.spawn({ bin });
    try {
      const got = await within(c.execute(WRITE), 10_000);
      assert.ok(got.error instanceof OutcomeUnknownError, `${answer}: ${String(got.error ?? JSON.stringify(got.value))}`);
    } finally {
      await c.close();
    }
  }
});

test("a batched call fails at its own deadline, not at the batch's slowest (review 208)", async (t) => {
  const { url, requests } = await fakeServer(t, () => {}); // never answers
  const c = Client.connect(url, { batch: true, deadline: 60_000 });
  const began = Date.now();
  const quick = c.query('SELECT 1', [], { timeout: 100 }).catch((x) => x);
  const slow = c.query('SELECT 2').catch((x) => x);
  const e = await quick;
  assert.ok(e instanceof TimeoutError, inspect(e));
  const took = Date.now() - began;
  assert.ok(took < 20_000, `failed after ${took} ms`);
  assert.equal(requests.length, 1, 'one batch was sent');
  await c.close();
  assert.ok((await slow) instanceof ConnectionError);
});

test('close() cuts off the calls in flight and refuses later ones, with a fetch of the caller\'s too (review 208)', async (t) => {
  const { url, requests } = await fakeServer(t, () => {}); // never answers
  for (const fetch of [undefined, globalThis.fetch]) {
    const c = Client.connect(url, { fetch, deadline: 30_000 });
    const write = c.execute(WRITE).catch((x) => x);
    const read = c.query('SELECT 1').catch((x) => x);
    while (requests.length < 2) await new Promise((r) => setTimeout(r, 10));
    const began = Date.now();
    await c.close();
    const [w, r] = [await write, await read];
    assert.ok(Date.now() - began < 2_000, `${fetch ? 'given' : 'own'} fetch: ${Date.now() - began} ms`);
    assert.ok(w instanceof OutcomeUnknownError, inspect(w));
    assert.ok(r instanceof ConnectionError && !(r instanceof OutcomeUnknownError), inspect(r));
    const after = await c.execute(WRITE).catch((x) => x);
    assert.ok(after instanceof ConnectionError && !(after instanceof OutcomeUnknownError), inspect(after));
    assert.equal(after.recoverable, false);
    assert.match(after.message, /closed/);
    await assert.rejects(c.metrics(), ConnectionError);
    assert.equal(requests.length, 2, 'nothing was sent after close()');
    requests.length = 0;
  }
});

test('an integer too long for a number is never Infinity (review 208)', async (t) => {
  const huge = '1' + '0'.repeat(350);
  const { url } = await fakeServer(t, (socket, request) => {
    const id = JSON.parse(request.body).id;
    reply(200, `{"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":{"columns":["x"],"rows":[[${huge}]]}}`)(socket);
  });
  const c = Client.connect(url);
  t.after(() => c.close());
  for (const bigint of [false, true]) {
    const got = await c.query('SELECT x', [], { bigint }).then((rows) => rows[0].x, (e) => e);
    assert.ok(got instanceof Error || typeof got === 'bigint', `bigint ${bigint}: ${inspect(got)}`);
  }
});

test("a query result of another shape is a ConnectionError, not a TypeError (review 208)", async (t) => {
  for (const result of [{ columns: 'x', rows: [] }, { rows: [[1]] }, { columns: ['x'], rows: [1] }, [], 7]) {
    const { url } = await fakeServer(t, (socket, request) => {
      const id = JSON.parse(request.body).id;
      reply(200, JSON.stringify({ jsonrpc: '2.0', id, result }))(socket);
    });
    const c = Client.connect(url);
    const e = await c.query('SELECT 1').catch((x) => x);
    assert.ok(e instanceof ConnectionError && /not a result of rows/.test(e.message), `${inspect(result)}: ${inspect(e)}`);
    await c.close();
  }
});

test('a request past the 16 MiB litebridge reads is refused unsent, alone and in a batch (review 244)', async (t) => {
  // Sent, it was refused by its length, and the reset after could report a
  // write that never ran as one that may have.
  const { url, requests } = await fakeServer(t, reply(200, '{}'));
  for (const batch of [false, true]) {
    const c = Client.connect(url, { batch });
    const e = await c.execute('INSERT INTO t VALUES (?1)', ['x'.repeat(17 << 20)]).catch((x) => x);
    assert.ok(e instanceof TooLargeError, `batch ${batch}: ${inspect(e)}`);
    assert.match(e.message, /not sent/);
    c.close();
  }
  assert.equal(requests.length, 0);
});

test("the key never reaches an error's message through an answer that quotes the request (review 244)", async (t) => {
  const key = 'lb_SECRET_KEY_4f1e';
  const echoes = [
    ['200 with no JSON', (s, r) => reply(200, r.head)(s)],
    ['503 saying it in JSON', (s, r) => reply(503, JSON.stringify({ error: r.head }), { 'content-type': 'application/json' })(s)],
    // Review 245: cut to 40 characters before it was blanked, a prefix of
    // the key was left.
    ['200 in an encoding named by the key', (s, r) => reply(200, '{}', { 'content-encoding': /authorization: ([^\r\n]*)/i.exec(r.head)[1] })(s)],
  ];
  for (const [name, answer] of echoes) {
    const { url } = await fakeServer(t, answer);
    const c = Client.connect(url, { key });
    for (const [what, call] of [
      ['execute', () => c.execute(WRITE)],
      ['query', () => c.query('SELECT 1')],
      ['metrics', () => c.metrics()],
    ]) {
      const e = await call().catch((x) => x);
      // A 200 to GET /metrics is its text, handed back as it came.
      if (what === 'metrics' && name.startsWith('200')) continue;
      assert.ok(e instanceof Error, `${name}, ${what}: ${inspect(e)}`);
      assert.ok(!e.message.includes(key.slice(0, 8)), `${name}, ${what}: ${e.message}`);
    }
    c.close();
  }
});

test('a reply nested 50,000 levels deep is read whole, where it was a RangeError after the call ran (review 244)', async (t) => {
  const depth = 50_000;
  const nested = (leaf) => '['.repeat(depth) + leaf + ']'.repeat(depth);
  const leaves = { plain: '{"$blob":"AQI="}', unsafe: '9007199254740993' };
  const { url } = await fakeServer(t, (socket, request) => {
    const { id } = JSON.parse(request.body);
    const leaf = leaves[request.body.includes('unsafe') ? 'unsafe' : 'plain'];
    reply(200, `{"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":${nested(leaf)}}`)(socket);
  });
  const c = Client.connect(url);
  t.after(() => c.close());
  let v = await c.call('tree', ['plain']);
  for (let i = 0; i < depth; i++) {
    assert.ok(Array.isArray(v) && v.length === 1, `level ${i}`);
    v = v[0];
  }
  assert.deepEqual(v, new Uint8Array([1, 2]), 'a blob at the bottom is revived');
  // An integer past 2^53 is read by hand to keep it exact, to a depth of 2048:
  // deeper, the call (which ran) may have run, and the error says why.
  const got = await c.call('tree', ['unsafe']).then(
    () => null,
    (e) => e,
  );
  assert.ok(got instanceof OutcomeUnknownError, inspect(got));
  assert.match(got.message, /nested deeper than 2048 levels/);
});

test("the key never reaches an error's message through litebridge-shaped errors or an events refusal quoting the request", async (t) => {
  const key = 'lb_SECRET_KEY_4f1e';
  const own = (id, head) =>
    JSON.stringify({ jsonrpc: '2.0', id, error: { code: -32603, message: `failed: ${head}`, data: { kind: 'internal', seen: [{ head }] } } });
  const answers = [
    ['200 with an error of its shape', (s, r) => reply(200, own(JSON.parse(r.body || '{"id":null}').id, r.head), { 'content-type': 'application/json' })(s)],
    ['401 with an error of its shape', (s, r) => reply(401, own(null, r.head), { 'content-type': 'application/json' })(s)],
    ['401 saying it in JSON', (s, r) => reply(401, JSON.stringify({ error: r.head }), { 'content-type': 'application/json' })(s)],
  ];
  for (const [name, answer] of answers) {
    for (const batch of [false, true]) {
      const { url } = await fakeServer(t, answer);
      const c = Client.connect(url, { key, batch });
      const errors = [];
      c.on('error', (e) => errors.push(e));
      c.on('started', () => {});
      for (const [what, call] of [
        ['execute', () => c.execute(WRITE)],
        ['query', () => c.query('SELECT 1')],
      ]) {
        const e = await call().catch((x) => x);
        assert.ok(e instanceof Error, `${name}, ${what}: ${inspect(e)}`);
        // Nor anywhere the error is shown: its data too (review 248).
        for (const shown of [e.message, inspect(e, { depth: null }), JSON.stringify(e)]) {
          assert.ok(!shown.includes(key.slice(0, 8)), `${name}, batch ${batch}, ${what}: ${shown}`);
        }
      }
      if (name.startsWith('401')) {
        // GET /events refused for good: the stream ends with an error event.
        for (let i = 0; i < 100 && errors.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
        assert.equal(errors.length, 1, `${name}: the events' refusal`);
        assert.ok(!errors[0].message.includes(key.slice(0, 8)), `${name}, events: ${errors[0].message}`);
      }
      c.close();
    }
  }
});
