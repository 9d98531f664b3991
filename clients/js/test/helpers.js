// What the tests share: the litebridge binary `cargo test` built, the
// repository's example worker, temporary directories, a served HTTP server.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { once } from 'node:events';
import { createServer } from 'node:net';

const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(HERE, '..', '..', '..');
// The binary `cargo test` built (in CARGO_TARGET_DIR when that is set).
export const BIN =
  process.env.LITEBRIDGE_CLIENT_BIN ??
  join(resolve(REPO, process.env.CARGO_TARGET_DIR ?? 'target'), 'debug', 'litebridge');
export const WORKER = `python3 ${join(REPO, 'examples', 'worker.py')}`;
export const SDK = join(REPO, 'python');
export const FRAMEWORK = join(HERE, 'fixtures', 'framework');

/** A temporary directory, removed by `t.after`. */
export function tempDir(t) {
  const dir = mkdtempSync(join(tmpdir(), 'lb-js-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Creates a key in `db`; its secret. */
export function createKey(db, name, scope, tier = 'enterprise') {
  const out = execFileSync(BIN, ['keys', 'create', '--db', db, '--scope', scope, '--tier', tier, '--name', name], {
    encoding: 'utf8',
  });
  return out.trim().split(/\s+/).pop();
}

/** `litebridge serve` on a free loopback port, stopped by `t.after`; its URL. */
export async function serve(t, db, args = [], env = {}) {
  const child = spawn(BIN, ['serve', '--db', db, '--listen', '127.0.0.1:0', ...args], {
    cwd: REPO,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  t.after(async () => {
    if (child.exitCode === null) {
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      await exited;
    }
  });
  const lines = createInterface({ input: child.stdout });
  const [first] = await once(lines, 'line');
  return { url: `http://${first.replace('listening on ', '').trim()}`, child };
}

/** Whether process `pid` is alive. */
export function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * A server of the test's own (node:net), stopped by `t.after` with every
 * connection it holds: reads one whole HTTP request per connection (head and
 * body), then does `answer(socket, request)`. Its URL, and the requests it
 * read (`{head, body}`, `head` with the request line and headers as sent).
 */
export async function fakeServer(t, answer) {
  const requests = [];
  const bodies = [];
  const sockets = new Set();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let buf = Buffer.alloc(0);
    const onData = (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.subarray(0, end).toString();
      const length = Number(/content-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
      if (buf.length < end + 4 + length) return;
      socket.off('data', onData);
      const request = { head, body: buf.subarray(end + 4, end + 4 + length).toString() };
      requests.push(request);
      bodies.push(request.body);
      answer(socket, request);
    };
    socket.on('data', onData);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    return new Promise((resolve) => server.close(resolve));
  });
  return { url: `http://127.0.0.1:${server.address().port}`, bodies, requests };
}

/** An HTTP answer, then the connection closed. */
export function reply(status, body, headers = {}) {
  return (socket) => {
    const lines = [`HTTP/1.1 ${status} Whatever`, `content-length: ${Buffer.byteLength(body)}`, 'connection: close'];
    for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
    socket.end(`${lines.join('\r\n')}\r\n\r\n${body}`);
  };
}

/** A port nothing listens on. */
export async function deadPort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}
