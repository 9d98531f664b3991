// The client's own API, typed: a program using both transports, every
// method family, typed rows, errors narrowed by class. Checked by `tsc`, not
// run.

import {
  Client,
  sql,
  SqlError,
  ForbiddenError,
  QuotaExceededError,
  WorkerError,
  LitebridgeError,
  ConnectionError,
  OutcomeUnknownError,
  type Row,
  type Value,
  type ExecResult,
  type LitebridgeEvent,
} from '@litebridge/client';

interface User {
  id: number;
  name: string;
  avatar: Uint8Array | null;
  balance: bigint;
}

export async function embedded(): Promise<void> {
  const db = Client.spawn({ db: 'app.db', workers: 'python3 worker.py', processes: 2, bigint: true });
  db.on('circuit-breaker-state-change', (e: LitebridgeEvent) => console.log(e.seq, e.ts, e['method']));
  try {
    const created: ExecResult = await db.execute('CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT)');
    console.log(created.changes, created.last_insert_rowid);
    const name = 'ada';
    await db.execute(sql`INSERT INTO users (name) VALUES (${name})`, undefined, { timeout: 2_000 });
    const users = await db.query<User>('SELECT * FROM users WHERE id > ?1', [0], { maxRows: 100 });
    const first: User | undefined = users[0];
    console.log(first?.name, first?.balance);
    const asArrays = await db.query<Value[]>('SELECT id, name FROM users', [], { rows: 'arrays' });
    console.log(asArrays.length);
    const one: Row | undefined = await db.get('SELECT count(*) AS n FROM users');
    console.log(one?.['n']);
    await db.batch([{ sql: 'DELETE FROM users WHERE id = ?1', params: [1] }, sql`DELETE FROM users WHERE name = ${name}`]);
    await db.executeMany('INSERT INTO users (name) VALUES (?1)', [['b'], ['c']]);
    const controller = new AbortController();
    const reply = await db.call<{ echoed: string }>('echo', { text: 'hi' }, {
      timeout: 30_000,
      retry: true,
      maxRetries: 2,
      cacheKey: 'echo:hi',
      signal: controller.signal,
    });
    console.log(reply.echoed);
    await db.state.save('run-1', { step: 1 }, { status: 'running' });
    await db.memory.store('agent', 'k', { v: 1 }, 60);
    const remembered = await db.memory.get('agent', 'k');
    if (remembered.found) console.log(remembered.value);
    await db.cache.set('k', 'v', 10);
    console.log(await db.stats(), await db.isHealthy(), (await db.metrics()).length);
    await db.resetBreaker('echo');
  } catch (error) {
    if (error instanceof SqlError) console.error(error.code, error.kind, error.recoverable);
    else if (error instanceof WorkerError) console.error(error.type, error.traceback);
    else if (error instanceof LitebridgeError) console.error(error.retryAfter, error.data);
    else throw error;
  } finally {
    await db.close();
  }
}

export async function remote(customFetch: typeof fetch): Promise<void> {
  const client = Client.connect('http://127.0.0.1:7070', {
    key: 'lb_secret',
    batch: true,
    fetch: customFetch,
    deadline: 60_000,
    maxResponseBytes: 16 * 1024 * 1024,
  });
  client.on('error', (error) => console.error(error.kind, error.recoverable));
  try {
    const [a, b] = await Promise.all([client.query('SELECT 1 AS one'), client.query('SELECT 2 AS two')]);
    console.log(a, b);
    await client.admin.createKey('read', { tier: 'free', name: 'reader' });
  } catch (error) {
    if (error instanceof ForbiddenError || error instanceof QuotaExceededError) console.error(error.message);
    // May have run: not sent again unless the server says it is safe to.
    else if (error instanceof OutcomeUnknownError && !error.recoverable) console.error(error.kind);
    else if (error instanceof ConnectionError && error.recoverable) console.error('not sent:', error.message);
  } finally {
    await client.close();
  }
}

// What the declarations refuse.
export async function refused(db: Client): Promise<void> {
  // @ts-expect-error: values are SQLite's types, not objects
  await db.query('SELECT ?1', [{ nested: true }]);
  // @ts-expect-error: a write cannot be withdrawn once sent, so it takes no signal
  await db.execute('DELETE FROM t', [], { signal: new AbortController().signal });
  // @ts-expect-error: rows come as objects or arrays
  await db.query('SELECT 1', [], { rows: 'columns' });
  // @ts-expect-error: the lanes are read and heavy
  await db.query('SELECT 1', [], { lane: 'write' });
}
