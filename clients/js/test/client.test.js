// The client over a spawned `litebridge stdio`, against the real binary
// and real Python workers.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';

import {
  Client,
  sql,
  SqlError,
  ForbiddenError,
  ReadOnlyError,
  WorkerError,
  TimeoutError,
  CircuitOpenError,
  ConnectionError,
  OutcomeUnknownError,
  WorkerCrashedError,
  isRecoverableError,
} from '../src/index.js';
import { BIN, WORKER, alive, tempDir } from './helpers.js';

function client(t, options = {}) {
  const dir = tempDir(t);
  const c = Client.spawn({ bin: BIN, db: join(dir, 'c.db'), workers: WORKER, processes: 1, ...options });
  t.after(() => c.close());
  return c;
}

test('rows as objects or arrays, values bound, blobs and 64-bit integers exact', async (t) => {
  const c = client(t);
  await c.execute('CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, data BLOB, big INTEGER)');
  const blob = new Uint8Array([0, 1, 2, 255]);
  const big = 9223372036854775807n;
  const r = await c.execute('INSERT INTO t(name, data, big) VALUES (?1, ?2, ?3)', ['ada', blob, big]);
  assert.deepEqual(r, { changes: 1, last_insert_rowid: 1 });
  const name = 'ada';
  const rows = await c.query(sql`SELECT id, name, data, big FROM t WHERE name = ${name}`, undefined, { bigint: true });
  assert.deepEqual(rows, [{ id: 1, name: 'ada', data: blob, big }]);
  assert.deepEqual(await c.query('SELECT id, name FROM t', [], { rows: 'arrays' }), [[1, 'ada']]);
  assert.deepEqual(await c.get('SELECT name FROM t WHERE id = ?1', [1]), { name: 'ada' });
  // Never rounded: refused, naming the option.
  await assert.rejects(c.query('SELECT big FROM t'), /pass \{ bigint: true \}/);
  const inj = "x'); DROP TABLE t; --";
  assert.deepEqual(await c.query(sql`SELECT count(*) AS n FROM t WHERE name = ${inj}`), [{ n: 0 }]);
});

test('a call litebridge refuses for what it holds is answered, not left waiting', async (t) => {
  // An integer past 64 bits (2 ** 64 as a Number) and nesting past 128
  // levels: litebridge refused them with a null id, and the call waited
  // for good (review 159).
  const c = client(t);
  let deep = 1;
  for (let i = 0; i < 130; i++) deep = [deep];
  for (const [what, call] of [
    ['2 ** 64', () => c.query('SELECT ?1 AS x', [2 ** 64])],
    ['130 levels', () => c.call('echo', [deep])],
  ]) {
    let timer;
    const late = new Promise((resolve) => {
      timer = setTimeout(resolve, 10000, 'still waiting');
    });
    const settled = await Promise.race([call().then((v) => ({ v }), (e) => ({ e })), late]);
    clearTimeout(timer);
    assert.ok(settled.e, `${what}: ${JSON.stringify(settled)}`);
    assert.match(settled.e.message, /64-bit|recursion/, what);
  }
  // The session goes on.
  assert.deepEqual(await c.query('SELECT 1 AS x'), [{ x: 1 }]);
});

test('a write answers the rows it returns as query gives rows', async (t) => {
  const c = client(t);
  await c.execute('CREATE TABLE n(id INTEGER PRIMARY KEY, body BLOB)');
  const blob = new Uint8Array([0, 1]);
  const r = await c.execute('INSERT INTO n(body) VALUES (?1) RETURNING id, body', [blob]);
  assert.deepEqual(r, { changes: 1, last_insert_rowid: 1, columns: ['id', 'body'], rows: [{ id: 1, body: blob }] });
  const arrays = await c.execute('UPDATE n SET body = NULL RETURNING id, body', [], { rows: 'arrays' });
  assert.deepEqual(arrays.rows, [[1, null]]);
  const { results } = await c.batch([{ sql: 'INSERT INTO n(id) VALUES (5) RETURNING id' }, { sql: 'DELETE FROM n WHERE id = 1' }]);
  assert.deepEqual(results, [
    { changes: 1, last_insert_rowid: 5, columns: ['id'], rows: [{ id: 5 }] },
    { changes: 1, last_insert_rowid: 5 },
  ]);
});

test('a write sent again with its idempotency key applies once', async (t) => {
  const c = client(t);
  await c.execute('CREATE TABLE once(x)');
  const first = await c.execute('INSERT INTO once VALUES (1)', [], { idempotencyKey: 'order-17' });
  const again = await c.execute('INSERT INTO once VALUES (1)', [], { idempotencyKey: 'order-17' });
  assert.deepEqual(again, first);
  for (let i = 0; i < 2; i++) {
    await c.batch([{ sql: 'INSERT INTO once VALUES (2)' }], { idempotencyKey: 'batch-1' });
    await c.executeMany('INSERT INTO once VALUES (?1)', [[3], [4]], { idempotencyKey: 'many-1' });
  }
  assert.deepEqual(await c.query('SELECT x FROM once ORDER BY x', [], { rows: 'arrays' }), [[1], [2], [3], [4]]);
  await assert.rejects(c.execute('INSERT INTO once VALUES (5)', [], { idempotencyKey: 'order-17' }));
  for (const bad of ['', 17]) {
    await assert.rejects(c.execute('INSERT INTO once VALUES (6)', [], { idempotencyKey: bad }), TypeError);
  }
  assert.deepEqual(await c.query('SELECT count(*) AS n FROM once'), [{ n: 4 }]);
});

test('a litebridge that cannot start fails the requests as not sent, naming why', async (t) => {
  const dir = tempDir(t);
  const c = Client.spawn({ bin: BIN, db: join(dir, 'missing', 'x.db') });
  t.after(() => c.close());
  const both = await Promise.allSettled([c.query('SELECT 1'), c.execute('CREATE TABLE t(x)')]);
  for (const r of both) {
    assert.equal(r.status, 'rejected');
    const e = r.reason;
    assert.ok(e instanceof ConnectionError && !(e instanceof OutcomeUnknownError), `${e?.name}: ${e?.message}`);
    assert.match(e.message, /did not start/);
    assert.match(e.message, /missing/);
    assert.equal(e.kind, 'unavailable');
    assert.equal(isRecoverableError(e), true); // nothing ran
  }
});

test('every failure is its own class, with code, kind and data', async (t) => {
  const c = client(t);
  await c.execute('CREATE TABLE u(x INTEGER UNIQUE)');
  await c.execute('INSERT INTO u VALUES (1)');
  const unique = await c.execute('INSERT INTO u VALUES (1)').catch((e) => e);
  assert.ok(unique instanceof SqlError, unique);
  assert.equal(unique.code, -32000);
  assert.equal(unique.data.sqlite_extended_code, 2067);
  assert.ok(!unique.message.includes('INSERT'), 'no SQL text in the message');
  assert.ok((await c.execute('BEGIN').catch((e) => e)) instanceof ForbiddenError);
  assert.ok((await c.query('INSERT INTO u VALUES (2)').catch((e) => e)) instanceof ReadOnlyError);
  const py = await c.call('fail', ['bad input']).catch((e) => e);
  assert.ok(py instanceof WorkerError, py);
  assert.equal(py.type, 'ValueError');
  assert.match(py.traceback, /Traceback/);
  const slow = await c.call('wait', [5], { timeout: 200 }).catch((e) => e);
  assert.ok(slow instanceof TimeoutError, slow);
  assert.ok(isRecoverableError(slow));
});

test('a breaker opens with retryAfter, events say so, and a reset closes it', async (t) => {
  const c = client(t);
  const changes = [];
  c.on('circuit-breaker-state-change', (e) => changes.push(`${e.from}->${e.to}`));
  for (let i = 0; i < 5; i++) await c.call('fail', ['x']).catch(() => {});
  const open = await c.call('fail', ['x']).catch((e) => e);
  assert.ok(open instanceof CircuitOpenError, open);
  assert.ok(open.retryAfter > 0);
  assert.deepEqual(await c.resetBreaker('fail'), { reset: true });
  await assert.rejects(c.call('fail', ['x']), WorkerError);
  for (let i = 0; i < 50 && changes.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(changes.slice(0, 2), ['closed->open', 'open->closed']);
});

test('abort cancels the call in its worker; the next call works', async (t) => {
  const c = client(t);
  const controller = new AbortController();
  const started = Date.now();
  const waiting = c.call('wait', [30], { signal: controller.signal });
  setTimeout(() => controller.abort(), 100);
  await assert.rejects(waiting, { name: 'AbortError' });
  assert.ok(Date.now() - started < 5000);
  assert.equal(await c.call('echo', { value: 3 }), 3);
});

test('500 calls at once', async (t) => {
  const c = client(t);
  const results = await Promise.all(Array.from({ length: 500 }, (_, i) => c.call('echo', { value: i })));
  assert.deepEqual(results, Array.from({ length: 500 }, (_, i) => i));
});

test('a killed litebridge fails what was pending clearly; the next call starts it again', async (t) => {
  const c = client(t);
  await c.call('echo', { value: 1 });
  const pid = c.transport.child.pid;
  const pending = c.call('wait', [10]);
  // Its line is in the pipe (written as the tick ends, nothing left in the
  // stream): litebridge may have read it.
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(c.transport.child.stdin.writableLength, 0);
  process.kill(pid, 'SIGKILL');
  const e = await pending.catch((x) => x);
  assert.ok(e instanceof ConnectionError, e);
  assert.match(e.message, /killed by SIGKILL/);
  // It may have run: not to be tried again blindly.
  assert.ok(e instanceof OutcomeUnknownError, e);
  assert.equal(e.kind, 'outcome_unknown');
  assert.equal(e.recoverable, false);
  assert.ok(!isRecoverableError(e));
  assert.match(e.message, /may or may not have run/);
  assert.equal(await c.call('echo', { value: 2 }), 2);
  assert.notEqual(c.transport.child.pid, pid);
});

test('a litebridge killed before a request was written to it: that one is recoverable, the one it was reading is not', async (t) => {
  const c = client(t);
  await c.call('echo', { value: 1 });
  const pid = c.transport.child.pid;
  // Stopped, litebridge reads nothing: a line of 1 MiB fills the pipe's
  // 64 KiB (and first the stream's buffer, the tick's lines held together),
  // and the next line waits behind it in the client.
  process.kill(pid, 'SIGSTOP');
  const big = c.query('SELECT length(?1) AS n', ['x'.repeat(1 << 20)]).catch((x) => x);
  assert.ok(c.transport.drained, 'the pipe is full');
  const small = c.execute('CREATE TABLE never(x)').catch((x) => x);
  assert.equal(c.transport.backlog.length, 1, 'the second line waits for the pipe');
  process.kill(pid, 'SIGKILL');
  const [partly, unsent] = [await big, await small];
  assert.ok(partly instanceof OutcomeUnknownError, partly);
  assert.equal(partly.recoverable, false);
  assert.ok(unsent instanceof ConnectionError && !(unsent instanceof OutcomeUnknownError), unsent);
  assert.equal(unsent.kind, 'unavailable');
  assert.ok(isRecoverableError(unsent));
  assert.match(unsent.message, /killed by SIGKILL before the request was written to it/);
  // Indeed never run.
  assert.deepEqual(await c.query("SELECT count(*) AS n FROM sqlite_master WHERE name = 'never'"), [{ n: 0 }]);
});

test('a killed worker: a call that may not be retried fails naming the signal, an idempotent one is retried, the next call works', async (t) => {
  const c = client(t);
  await c.call('echo', { value: 1 });
  const [{ pid }] = (await c.stats()).workers;
  const notRetried = c.call('wait', [5], { retry: false }).catch((e) => e);
  const retried = c.call('wait', [0.5]);
  await new Promise((r) => setTimeout(r, 200));
  process.kill(pid, 'SIGKILL');
  const e = await notRetried;
  assert.ok(e instanceof WorkerCrashedError, e);
  assert.equal(e.kind, 'worker_crashed');
  assert.match(e.message, new RegExp(`worker process ${pid} died \\(signal 9 \\(SIGKILL\\)\\)`));
  assert.equal(await retried, 0.5);
  assert.equal(await c.call('echo', { value: 2 }), 2);
  assert.notEqual((await c.stats()).workers[0].pid, pid);
});

test('close drains and leaves no process behind', async (t) => {
  const c = client(t);
  await c.execute('CREATE TABLE k(x)');
  await c.execute('INSERT INTO k VALUES (1)');
  const stats = await c.stats();
  const pids = [c.transport.child.pid, ...stats.workers.map((w) => w.pid)];
  assert.ok(pids.every(alive));
  await c.close();
  for (let i = 0; i < 100 && pids.some(alive); i++) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(pids.filter(alive), []);
  await assert.rejects(c.call('echo', {}), ConnectionError);
});

test('what a review found: truncated reads, aborted writes, odd values', async (t) => {
  const c = client(t);
  // More rows than the server's default limit: said, not cut silently.
  const many = 'WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) SELECT i FROM n';
  await assert.rejects(c.query(many), { name: 'TooLargeError' });
  assert.equal((await c.query(many, [], { maxRows: 20000 })).length, 20000);
  // A write once sent is answered with its outcome, whatever the signal.
  await c.execute('CREATE TABLE w(x)');
  const controller = new AbortController();
  const writing = c.executeMany('INSERT INTO w VALUES (?1)', Array.from({ length: 20000 }, (_, i) => [i]), {
    signal: controller.signal,
  });
  controller.abort();
  assert.deepEqual(await writing, { changes: 20000 });
  // No string passes for a BigInt; __proto__ stays data; infinities come back.
  const value = { s: '\u0000bigint:42', n: 7n, __proto__: null };
  Object.defineProperty(value, '__proto__', { value: { admin: true }, enumerable: true });
  await c.memory.store('ns', 'k', value);
  const got = (await c.memory.get('ns', 'k')).value;
  assert.equal(got.s, '\u0000bigint:42');
  assert.equal(got.n, 7);
  assert.deepEqual(Object.keys(got).sort(), ['__proto__', 'n', 's']);
  assert.equal(got.admin, undefined, 'not inherited');
  assert.deepEqual(await c.query('SELECT 1e999 AS x'), [{ x: Infinity }]);
  const [row] = await c.query(`SELECT json('{"admin":true}') AS "__proto__", 2 AS y`);
  assert.deepEqual(Object.keys(row), ['__proto__', 'y']);
  assert.equal(row.admin, undefined, 'a column named __proto__ is data');
  // A committed insert with a rowid past 2^53 is not reported as a failure.
  await c.execute('CREATE TABLE r(id INTEGER PRIMARY KEY)');
  const r = await c.execute('INSERT INTO r VALUES (9007199254740993)');
  assert.equal(r.last_insert_rowid, 9007199254740993n);
});

test('what a second review found: values litebridge could not read are refused before they are sent', async (t) => {
  const c = client(t);
  // Each would have been answered without its id (the call waiting for ever), or stored changed.
  await assert.rejects(c.query('SELECT ?1', [NaN]), { name: 'InvalidArgumentError', message: /NaN/ });
  await assert.rejects(c.query('SELECT ?1', ['\ud800']), { name: 'InvalidArgumentError', message: /lone surrogate/ });
  await assert.rejects(c.query('SELECT ?1', [2n ** 70n]), { name: 'InvalidArgumentError', message: /64 bits/ });
  // A function or Symbol had been bound as NULL (review 208).
  await assert.rejects(c.query('SELECT ?1', [() => 1]), { name: 'InvalidArgumentError', message: /a function/ });
  await assert.rejects(c.query('SELECT ?1', [Symbol('s')]), { name: 'InvalidArgumentError', message: /a symbol/ });
  // A line over litebridge's limit counted in bytes, not UTF-16 units.
  await assert.rejects(c.query('SELECT ?1', ['é'.repeat(40 * 1024 * 1024)]), { name: 'TooLargeError' });
  // Infinities travel as reals, both ways; a backslash before "ud800" is text.
  assert.deepEqual(await c.query('SELECT ?1 AS a, ?2 AS b', [Infinity, -Infinity]), [{ a: Infinity, b: -Infinity }]);
  assert.deepEqual(await c.query('SELECT ?1 AS s', ['\\ud800']), [{ s: '\\ud800' }]);
  // An object shaped like a Buffer's JSON is data, whatever else the request holds.
  const shaped = { type: 'Buffer', data: [1, 2] };
  await c.memory.store('ns', 'a', { shaped, n: 7n });
  await c.memory.store('ns', 'b', { shaped });
  assert.deepEqual((await c.memory.get('ns', 'a')).value.shaped, shaped);
  assert.deepEqual((await c.memory.get('ns', 'b')).value.shaped, shaped);
  assert.deepEqual(await c.query('SELECT 1 AS one'), [{ one: 1 }]);
});
