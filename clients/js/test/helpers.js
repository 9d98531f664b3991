// What the tests share: the litebridge binary `cargo test` built, the
// repository's example worker, temporary directories, a served HTTP server.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { once } from 'node:events';

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
