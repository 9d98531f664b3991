// The client over HTTP (`litebridge serve` with keys), against the real binary.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';

import { Client, UnauthorizedError, ForbiddenError, UnsupportedError, QuotaExceededError } from '../src/index.js';
import { WORKER, createKey, serve, tempDir } from './helpers.js';

test('over HTTP with a key: the same API, keys and scopes enforced, events and metrics', async (t) => {
  const dir = tempDir(t);
  const db = join(dir, 'h.db');
  const admin = createKey(db, 'admin', 'admin');
  const reader = createKey(db, 'reader', 'read');
  const { url } = await serve(t, db, ['--workers', WORKER, '--processes', '1']);
  const c = Client.connect(url, { key: admin });
  t.after(() => c.close());
  await c.execute('CREATE TABLE t(x)');
  await c.execute('INSERT INTO t VALUES (?1)', [42]);
  assert.deepEqual(await c.query('SELECT x FROM t'), [{ x: 42 }]);
  assert.equal(await c.call('echo', { value: 'hi' }), 'hi');

  const bad = Client.connect(url, { key: 'lb_wrong' });
  assert.ok((await bad.query('SELECT 1').catch((e) => e)) instanceof UnauthorizedError);
  const readOnly = Client.connect(url, { key: reader });
  assert.deepEqual(await readOnly.query('SELECT x FROM t'), [{ x: 42 }]);
  assert.ok((await readOnly.execute('DELETE FROM t').catch((e) => e)) instanceof ForbiddenError);
  assert.ok((await c.request('events.subscribe', {}).catch((e) => e)) instanceof UnsupportedError);

  // Events from GET /events.
  const seen = [];
  c.on('circuit-breaker-state-change', (e) => seen.push(e));
  await new Promise((r) => setTimeout(r, 300));
  for (let i = 0; i < 5; i++) await c.call('fail', ['x']).catch(() => {});
  for (let i = 0; i < 100 && seen.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(seen[0]?.to, 'open', JSON.stringify(seen));

  const metrics = await c.metrics();
  assert.match(metrics, /# TYPE/);

  // A stream whose key is revoked ends with the refusal of its reconnection, as an 'error'.
  const watcher = (await c.admin.createKey('read', { name: 'watcher' })).secret;
  const w = Client.connect(url, { key: watcher });
  t.after(() => w.close());
  const ended = new Promise((resolve) => w.on('error', resolve));
  w.on('circuit-breaker-state-change', () => {});
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(await c.admin.revokeKey('watcher'), { revoked: true });
  const started = Date.now();
  const error = await ended;
  assert.ok(error instanceof UnauthorizedError, error);
  assert.ok(Date.now() - started < 15_000);
});

test('batching the calls of one tick, and aborting a call', async (t) => {
  const dir = tempDir(t);
  const db = join(dir, 'b.db');
  const key = createKey(db, 'k', 'admin');
  const { url } = await serve(t, db, ['--workers', WORKER, '--processes', '1']);
  const c = Client.connect(url, { key, batch: true });
  t.after(() => c.close());
  const results = await Promise.all(Array.from({ length: 200 }, (_, i) => c.call('echo', { value: i })));
  assert.deepEqual(results, Array.from({ length: 200 }, (_, i) => i));
  const controller = new AbortController();
  const waiting = c.call('wait', [30], { signal: controller.signal });
  setTimeout(() => controller.abort(), 100);
  await assert.rejects(waiting, { name: 'AbortError' });
  assert.equal(await c.call('echo', { value: 'after' }), 'after');
});

test('a low quota is its own error', async (t) => {
  const dir = tempDir(t);
  const db = join(dir, 'q.db');
  const key = createKey(db, 'free', 'read', 'free');
  const { url } = await serve(t, db, [], { LITEBRIDGE_QUOTA_FREE_DAILY: '2' });
  const c = Client.connect(url, { key });
  await c.query('SELECT 1');
  await c.query('SELECT 1');
  const e = await c.query('SELECT 1').catch((x) => x);
  assert.ok(e instanceof QuotaExceededError, e);
  assert.ok(e.retryAfter > 0);
});
