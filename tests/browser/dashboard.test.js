// The dashboard in a real browser: Debian's Chromium (scripts/install-chromium.sh)
// driven by playwright-core, against the real litebridge binary with real
// Python workers, loaded through the JavaScript client. A screenshot is left
// at target/dashboard.png (or under CARGO_TARGET_DIR) for a person to look at.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync } from 'node:fs';
import http from 'node:http';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

import { chromium } from 'playwright-core';

import { Client } from '../../clients/js/src/index.js';
import { BIN, REPO, WORKER, createKey, serve, tempDir } from '../../clients/js/test/helpers.js';

const BROWSER = process.env.LITEBRIDGE_CHROMIUM ?? execFileSync('bash', [join(REPO, 'scripts', 'install-chromium.sh')], {
  encoding: 'utf8',
  stdio: ['ignore', 'pipe', 'inherit'],
}).trim();
const SHOTS = resolve(REPO, process.env.CARGO_TARGET_DIR ?? 'target');

/** GET `path` with a chosen Host header; the status. */
function statusWithHost(url, path, host) {
  const { hostname, port } = new URL(url);
  return new Promise((done, fail) => {
    http
      .get({ hostname, port, path, headers: { Host: host } }, (res) => {
        res.resume();
        done(res.statusCode);
      })
      .on('error', fail);
  });
}

/** `litebridge_NAME` from /metrics. */
async function metric(url, key, name) {
  const text = await (await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${key}` } })).text();
  const line = text.split('\n').find((l) => l.startsWith(`litebridge_${name} `));
  return Number(line.split(' ')[1]);
}

/** Chromium with a page of 1280x800, closed by `t.after`; the page and the
 * errors it reports (a CSP violation is a console error, "Refused to ..."). */
async function openPage(t) {
  const browser = await chromium.launch({
    executablePath: BROWSER,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--disable-background-networking'],
  });
  t.after(() => browser.close());
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 401/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  return { page, problems };
}

test('the dashboard shows the server living, resets a breaker, and keeps its rules', async (t) => {
  const dir = tempDir(t);
  const db = join(dir, 'd.db');
  const key = createKey(db, 'operator', 'admin');
  const { url } = await serve(t, db, ['--workers', WORKER, '--processes', '2']);
  const { page, problems } = await openPage(t);

  // Without a key: the page says one is needed.
  await page.goto(`${url}/`);
  await page.waitForFunction(() => document.getElementById('status').textContent === 'key needed');
  // The key typed in, kept for the tab only.
  await page.fill('#key', key);
  await page.click('#use-key');
  await page.waitForFunction(() => document.getElementById('status').textContent === 'ready');
  assert.equal(await page.evaluate(() => document.cookie), '');
  assert.ok(!page.url().includes(key));
  assert.equal(await page.evaluate(() => sessionStorage.getItem('litebridge.key')), key);

  // Load through the client: the figures move.
  const client = Client.connect(url, { key });
  t.after(() => client.close());
  await client.execute('CREATE TABLE t(x)');
  const until = Date.now() + 5000;
  let i = 0;
  while (Date.now() < until) {
    await Promise.all([client.execute('INSERT INTO t VALUES (?1)', [i]), client.call('echo', { value: i })]);
    i++;
  }
  await page.waitForFunction(() => Number(document.getElementById('requests-rate').textContent.replace(/,/g, '')) > 0, null, {
    timeout: 10_000,
  });
  await page.waitForFunction(() => document.querySelectorAll('#workers tbody tr').length === 2);
  await page.waitForFunction(() => document.querySelectorAll('#chart-requests polyline').length === 1);

  // The page and /metrics agree on the writes. (Quota counters are written
  // in the background, so the count may move on: the page's figure lies
  // between two reads of /metrics taken around it.)
  const pageWrites = () =>
    page.evaluate(() => {
      const dts = [...document.querySelectorAll('#wal dt')];
      const dd = dts.find((d) => d.textContent === 'reads, writes since start')?.nextElementSibling;
      return dd ? Number(dd.textContent.split(', ')[1].replace(/,/g, '')) : -1;
    });
  const before = await metric(url, key, 'db_writes_total');
  await page.waitForFunction(
    (n) => {
      const dts = [...document.querySelectorAll('#wal dt')];
      const dd = dts.find((d) => d.textContent === 'reads, writes since start')?.nextElementSibling;
      return dd && Number(dd.textContent.split(', ')[1].replace(/,/g, '')) >= n;
    },
    before,
    { timeout: 10_000 },
  );
  const shown = await pageWrites();
  const after = await metric(url, key, 'db_writes_total');
  assert.ok(before <= shown && shown <= after, `/metrics ${before}..${after}, the page ${shown}`);
  assert.ok(shown >= i, `${i} inserts were made, the page shows ${shown} writes`);

  // A breaker opened by failures, reset from the page.
  for (let k = 0; k < 5; k++) await client.call('fail', ['x']).catch(() => {});
  const reset = page.locator('#breakers button', { hasText: 'Reset' });
  await reset.waitFor({ timeout: 10_000 });
  assert.equal(await page.locator('#breakers td.failing').first().textContent(), 'open');
  await reset.click();
  await page.waitForFunction(() => document.getElementById('message').textContent.includes('is closed'));
  await page.waitForFunction(() => document.querySelector('#breakers td.ok')?.textContent === 'closed');
  assert.equal(await client.call('echo', { value: 'after' }), 'after');

  // A backup taken from the page.
  await page.click('#backup-now');
  await page.waitForFunction(() => document.getElementById('message').textContent.startsWith('Backup written'), null, {
    timeout: 20_000,
  });
  await page.waitForFunction(() => {
    const dts = [...document.querySelectorAll('#backups dt')];
    const newest = dts.find((d) => d.textContent === 'newest')?.nextElementSibling.textContent;
    return newest && newest !== 'none yet';
  });

  // Hidden, the page stops asking; shown again, it asks at once.
  const asked = [];
  page.on('request', (r) => r.url().includes('/api/dashboard') && asked.push(Date.now()));
  const hide = (state) =>
    page.evaluate((s) => {
      Object.defineProperty(document, 'visibilityState', { value: s, configurable: true });
      document.dispatchEvent(new Event('visibilitychange'));
    }, state);
  await hide('hidden');
  await new Promise((r) => setTimeout(r, 500)); // a request already on its way may land
  const hiddenAt = asked.length;
  await new Promise((r) => setTimeout(r, 5000));
  assert.equal(asked.length, hiddenAt, 'no request while hidden');
  await hide('visible');
  await new Promise((r) => setTimeout(r, 500));
  assert.ok(asked.length > hiddenAt, 'asked again when shown');

  // Readable on a narrow screen too; a picture for a person.
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, 'dashboard.png'), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  const wide = await page.evaluate(() =>
    [...document.querySelectorAll('body *')]
      .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
      .map((e) => `${e.tagName}#${e.id}.${e.className} ${Math.round(e.getBoundingClientRect().right)}px`)
      .slice(0, 5),
  );
  assert.ok(overflow <= 1, `the page is ${overflow}px wider than a narrow screen: ${wide.join(', ')}`);
  await page.screenshot({ path: join(SHOTS, 'dashboard-narrow.png'), fullPage: true });

  // A foreign Host is refused, the page's files and its data alike.
  assert.equal(await statusWithHost(url, '/', 'evil.example'), 403);
  assert.equal(await statusWithHost(url, '/api/dashboard', 'evil.example'), 403);

  assert.deepEqual(problems, []);
});

test('over NATS, the dashboard lists the worker hosts and shows one lost', async (t) => {
  // scripts/test.sh starts the server (scripts/nats.sh) and requires this test.
  const nats = process.env.LB_TEST_NATS;
  if (!nats) {
    assert.ok(
      !(process.env.LB_TEST_REQUIRE ?? '').split(',').includes('nats'),
      'LB_TEST_REQUIRE names nats but LB_TEST_NATS is not set (eval "$(scripts/nats.sh start)")',
    );
    t.skip('no NATS server: eval "$(scripts/nats.sh start)"');
    return;
  }
  // A prefix of its own: other tests' hosts on the same server are not seen.
  const env = {
    ...process.env,
    LITEBRIDGE_NATS_URL: nats,
    LITEBRIDGE_NATS_PREFIX: `lbdash${process.pid}`,
    LITEBRIDGE_NATS_HEARTBEAT_MS: '200',
    LITEBRIDGE_SERVER_LOG_LEVEL: 'warn',
  };
  const host = spawn(BIN, ['worker-host', '--name', 'dash-host', '--workers', WORKER, '--processes', '2'], {
    cwd: REPO,
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.after(() => host.exitCode === null && host.signalCode === null && host.kill('SIGKILL'));
  const [said] = await once(createInterface({ input: host.stdout }), 'line');
  assert.ok(said.startsWith('serving '), `worker-host said ${said}`);

  const dir = tempDir(t);
  const db = join(dir, 'd.db');
  const key = createKey(db, 'operator', 'admin');
  const { url } = await serve(t, db, [], { ...env, LITEBRIDGE_WORKERS_TRANSPORT: 'nats' });
  const { page, problems } = await openPage(t);
  await page.goto(`${url}/`);
  await page.fill('#key', key);
  await page.click('#use-key');

  // The host, from its heartbeats and its announcement.
  await page.waitForFunction(
    () => {
      const cells = [...document.querySelectorAll('#hosts tbody tr:first-child td')].map((td) => td.textContent);
      return cells[0] === 'dash-host' && cells[1] === 'healthy' && cells[2] === '2' && cells[4].endsWith(' ago');
    },
    null,
    { timeout: 10_000 },
  );
  assert.equal(await page.locator('#hosts tbody tr').count(), 1);
  const methods = await page.locator('#hosts tbody tr td').first().getAttribute('title');
  assert.ok(methods.replace('methods: ', '').split(', ').includes('echo'), methods);
  // Its workers (two processes on the host) and a call through it.
  await page.waitForFunction(() => document.querySelectorAll('#workers tbody tr').length === 2);
  const client = Client.connect(url, { key });
  t.after(() => client.close());
  assert.equal(await client.call('echo', { value: 'over nats' }), 'over nats');
  await page.waitForFunction(() =>
    [...document.querySelectorAll('#methods tbody tr')].some((tr) => tr.cells[0].textContent === 'echo' && tr.cells[1].textContent === '1'),
  );
  assert.equal(await page.locator('#problems').isHidden(), true);
  // The host was there before the server: its joining is among the events.
  const joined = (await page.locator('#events').textContent()).split('host-joined  host=dash-host').length - 1;
  assert.equal(joined, 1, 'host-joined is shown once');
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, 'dashboard-nats.png'), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page is ${overflow}px wider than a narrow screen`);
  await page.setViewportSize({ width: 1280, height: 800 });

  // Killed: its heartbeats stop, it is dropped, and the page says nothing serves.
  const exited = once(host, 'exit');
  host.kill('SIGKILL');
  await exited;
  await page.waitForFunction(() => document.querySelectorAll('#hosts tbody tr').length === 0, null, { timeout: 10_000 });
  await page.waitForFunction(() => document.getElementById('problems').textContent.includes('no worker host is serving calls'), null, {
    timeout: 5_000,
  });
  await page.waitForFunction(() => document.getElementById('events').textContent.includes('host-lost'), null, { timeout: 5_000 });
  await assert.rejects(client.call('echo', { value: 'nobody' }), (e) => e.kind === 'unavailable');

  assert.deepEqual(problems, []);
});
