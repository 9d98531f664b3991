// The litebridge dashboard: polls GET /api/dashboard every second (not while
// the tab is hidden) and draws what it says. Text goes in with textContent
// only; the key lives in this tab's sessionStorage, never in a URL or a
// cookie. See crates/litebridge-cli/src/dashboard/mod.rs.
'use strict';

const POLL_MS = 1000;
// An answer that takes longer is given up on, and the page says the server does not answer.
const ANSWER_MS = 5000;
const KEPT = 300;
const KEY = 'litebridge.key';

let points = [];
let lastSeq = 0;
let run = null;
let seenTs = null;
let seenTsAt = 0;
let timer = null;
let scopes = '';

const $ = (id) => document.getElementById(id);

function key() {
  return sessionStorage.getItem(KEY) || '';
}

function headers(extra) {
  const h = Object.assign({}, extra);
  if (key()) h.Authorization = 'Bearer ' + key();
  return h;
}

function say(text, bad) {
  const m = $('message');
  m.textContent = text;
  m.className = bad ? 'bad' : '';
}

// ----- units --------------------------------------------------------------

function num(x, digits) {
  if (x === null || x === undefined || Number.isNaN(x)) return '–';
  return Number(x).toLocaleString('en-US', { maximumFractionDigits: digits === undefined ? 1 : digits });
}

function msText(x) {
  if (x === null || x === undefined) return '–';
  if (x < 1) return num(x * 1000, 0) + ' µs';
  if (x < 1000) return num(x, 1) + ' ms';
  return num(x / 1000, 2) + ' s';
}

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return num(n, i ? 1 : 0) + ' ' + units[i];
}

function duration(s) {
  if (s === null || s === undefined) return '–';
  if (s < 60) return num(s, 0) + ' s';
  if (s < 3600) return num(Math.floor(s / 60), 0) + ' min ' + num(s % 60, 0) + ' s';
  if (s < 86400) return num(Math.floor(s / 3600), 0) + ' h ' + num(Math.floor((s % 3600) / 60), 0) + ' min';
  return num(Math.floor(s / 86400), 0) + ' d ' + num(Math.floor((s % 86400) / 3600), 0) + ' h';
}

function percent(x) {
  return x === null || x === undefined ? '–' : num(x * 100, 1) + ' %';
}

// ----- drawing --------------------------------------------------------------

function cell(row, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function rows(tableId, items, fill) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  for (const item of items) {
    const tr = document.createElement('tr');
    fill(tr, item);
    body.appendChild(tr);
  }
}

function facts(listId, pairs) {
  const dl = $(listId);
  dl.replaceChildren();
  for (const [name, value, cls] of pairs) {
    const dt = document.createElement('dt');
    dt.textContent = name;
    const dd = document.createElement('dd');
    dd.textContent = value;
    if (cls) dd.className = cls;
    dl.append(dt, dd);
  }
}

function chart(svgId, values, format) {
  const svg = $(svgId);
  svg.replaceChildren();
  if (values.length < 2) return;
  const max = Math.max(...values, 1e-9);
  const step = 300 / (KEPT - 1);
  const start = 300 - (values.length - 1) * step;
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute(
    'points',
    values.map((v, i) => (start + i * step).toFixed(1) + ',' + (58 - (v / max) * 54).toFixed(1)).join(' '),
  );
  svg.appendChild(line);
  const label = document.createElementNS('http://www.w3.org/2000/svg', 'text');
  label.setAttribute('x', '2');
  label.setAttribute('y', '10');
  label.textContent = 'max ' + format(max);
  svg.appendChild(label);
}

function render(d) {
  const ready = d.ready === true;
  const status = $('status');
  // Figures that stopped changing are not the server now (its sampler is
  // held). Judged by this page's clock only: the server's may differ.
  if (d.ts !== seenTs) {
    seenTs = d.ts;
    seenTsAt = Date.now();
  }
  const stale = Date.now() - seenTsAt > 5 * POLL_MS;
  status.textContent = stale ? 'stale' : ready ? 'ready' : 'not ready';
  status.className = 'badge ' + (stale ? 'unknown' : ready ? 'ok' : 'failing');
  $('version').textContent = 'v' + d.version;
  $('uptime').textContent = 'up ' + duration(d.uptime_s);
  const problems = d.problems || [];
  $('problems').hidden = problems.length === 0;
  $('problem-list').replaceChildren(
    ...problems.map((p) => {
      const li = document.createElement('li');
      li.textContent = p;
      return li;
    }),
  );

  const last = points[points.length - 1];
  $('requests-rate').textContent = last ? num(last.requests_per_s, 1) : '–';
  $('errors-rate').textContent = last ? num(last.errors_per_s, 1) : '–';
  $('errors-rate').className = 'value ' + (last && last.errors_per_s > 0 ? 'degraded' : '');
  chart('chart-requests', points.map((p) => p.requests_per_s), (x) => num(x, 1) + ' requests/s');
  chart('chart-latency', points.map((p) => p.write.p99_ms), (x) => 'write p99 ' + msText(x));
  chart('chart-wal', points.map((p) => p.wal_bytes), bytes);

  const lanes = last ? [['reads', last.read], ['writes', last.write]] : [];
  if (last && last.call) lanes.push(['worker calls', last.call]);
  rows('latency', lanes, (tr, [name, w]) => {
    // Nothing ran in that second: no percentiles, rather than zeros.
    const ran = w.per_s > 0;
    cell(tr, name);
    cell(tr, num(w.per_s, 1));
    cell(tr, ran ? msText(w.p50_ms) : '–');
    cell(tr, ran ? msText(w.p95_ms) : '–');
    cell(tr, ran ? msText(w.p99_ms) : '–');
  });

  const m = (d.db && d.db.pool_metrics) || {};
  facts('writer', [
    ['write queue', num(last ? last.write_queue : null, 0)],
    ['batches/s', num(last ? last.batches_per_s : null, 1)],
    ['requests per batch', num(last ? last.batch_size : null, 1)],
    ['largest batch', num(m.batches ? m.batches.max_size : null, 0)],
    ['timeouts, last second', num(last ? last.timeouts : null, 0), last && last.timeouts ? 'degraded' : ''],
    ['overloaded, last second', num(last ? last.overloaded : null, 0), last && last.overloaded ? 'degraded' : ''],
    ['timeouts since start', num(m.timeouts, 0)],
    ['overloaded since start', num(m.overloaded, 0)],
    ['writer restarts since start', num(m.writer_restarts, 0), m.writer_restarts ? 'degraded' : ''],
  ]);
  facts('wal', [
    ['database size', bytes(d.db_bytes)],
    ['WAL size', bytes(m.wal_bytes)],
    ['checkpoints', num(m.checkpoints, 0)],
    ['reads, writes since start', num(m.total_reads, 0) + ', ' + num(m.total_writes, 0)],
  ]);
  const pool = (d.health && d.health.pool_status) || {};
  const queues = pool.queue_lengths || {};
  facts('readers', [
    ['readers free', num(pool.available_readers, 0) + ' of ' + num(pool.total_connections, 0) + ' connections'],
    ['read queue', num(queues.read_queue, 0)],
    ['heavy lane queue', num(queues.worker_queue, 0)],
    ['heavy lane free', num(pool.available_workers, 0)],
  ]);

  const b = d.bridge;
  $('workers-section').hidden = !b;
  $('breakers-section').hidden = !b || !b.breakers.length;
  $('methods-section').hidden = !b || !b.methods.length;
  // Over NATS the workers run on hosts elsewhere, each with its heartbeat.
  $('hosts-section').hidden = !b || !b.hosts;
  if (b) {
    rows('workers', b.workers, (tr, w) => {
      cell(tr, String(w.pid));
      cell(tr, num(w.in_flight, 0));
      cell(tr, num(w.calls, 0));
      cell(tr, duration(w.uptime_ms / 1000));
    });
    facts('pool', [
      ['processes', num(b.workers.length, 0) + ' of ' + num(b.processes, 0), b.healthy ? 'ok' : 'failing'],
      ['restarts since start', num(b.restarts, 0)],
      ['crashes since start', num(b.crashes, 0), b.crashes ? 'degraded' : ''],
      ['recycled since start', num(b.recycled, 0)],
      ['calls waiting', num(b.waiting, 0)],
      ...(b.hosts
        ? [
            ['worker hosts', num(b.hosts.filter((h) => h.healthy && !h.draining).length, 0) + ' of ' + num(b.hosts.length, 0) + ' serving'],
            ['late answers (dropped)', num(b.late_answers, 0), b.late_answers ? 'degraded' : ''],
          ]
        : []),
    ]);
    if (b.hosts) {
      rows('hosts', b.hosts, (tr, h) => {
        // Its methods on hover: a list of any length stays out of the table.
        cell(tr, h.id).title = 'methods: ' + h.methods.join(', ');
        if (h.draining) cell(tr, 'draining', 'degraded');
        else cell(tr, h.healthy ? 'healthy' : 'unhealthy', h.healthy ? 'ok' : 'failing');
        cell(tr, num(h.processes, 0));
        cell(tr, num(h.in_flight, 0));
        cell(tr, msText(h.last_seen_ms) + ' ago');
      });
    }
    const canReset = scopes.includes('bridge') || scopes.includes('admin');
    rows('breakers', b.breakers, (tr, br) => {
      cell(tr, br.method);
      const state = br.state;
      cell(tr, state, state === 'closed' ? 'ok' : state === 'open' ? 'failing' : 'degraded');
      cell(tr, percent(br.failure_rate));
      const td = cell(tr, '');
      if (canReset && state !== 'closed') {
        const button = document.createElement('button');
        button.type = 'button';
        button.textContent = 'Reset';
        button.dataset.method = br.method;
        button.addEventListener('click', () => resetBreaker(br.method));
        td.appendChild(button);
      }
    });
    rows('methods', b.methods, (tr, x) => {
      cell(tr, x.method);
      cell(tr, num(x.calls, 0));
      cell(tr, x.calls ? percent(x.errors / x.calls) : '–', x.errors ? 'degraded' : '');
      cell(tr, msText(x.p50_ms));
      cell(tr, msText(x.p95_ms));
      cell(tr, msText(x.p99_ms));
    });
  }

  const c = d.cache || {};
  facts('cache', [
    ['hit rate', percent(c.hit_rate)],
    ['hits, misses', num(c.hits, 0) + ', ' + num(c.misses, 0)],
    ['in memory', num(c.l1_size, 0)],
    ['in the table', c.l2_size === null || c.l2_size === undefined ? '–' : num(c.l2_size, 0)],
    ['table', c.l2 || '–', c.l2 === 'ok' || c.l2 === 'none' ? '' : 'degraded'],
  ]);

  $('quotas-section').hidden = !d.quotas;
  if (d.quotas) {
    const limit = (n, l) => num(n, 0) + (l ? ' of ' + num(l, 0) : '');
    rows('quotas', d.quotas, (tr, q) => {
      cell(tr, q.name);
      cell(tr, q.tier);
      cell(tr, limit(q.today, q.daily_limit), q.daily_limit && q.today >= q.daily_limit ? 'failing' : '');
      cell(tr, limit(q.month, q.monthly_limit), q.monthly_limit && q.month >= q.monthly_limit ? 'failing' : '');
    });
  }

  $('backups-section').hidden = !d.backups;
  if (d.backups) {
    const k = d.backups;
    facts('backups', [
      ['newest', k.newest || 'none yet', k.newest || !k.scheduled ? '' : 'degraded'],
      ['age', duration(k.age_s)],
      ['schedule', k.scheduled ? 'every ' + duration(k.interval_s) : 'none (taken on demand)'],
      ['next due in', k.scheduled ? duration(k.next_due_s) : '–'],
      ['directory', k.dir],
    ]);
    $('backup-now').hidden = !scopes.includes('admin');
  }

  $('events').replaceChildren(
    ...(d.events || [])
      .slice()
      .reverse()
      .map((e) => {
        const li = document.createElement('li');
        const fields = Object.entries(e)
          .filter(([k]) => !['event', 'ts', 'seq'].includes(k))
          .map(([k, v]) => k + '=' + (typeof v === 'object' ? JSON.stringify(v) : String(v)))
          .join(' ');
        li.textContent = (e.ts || '') + '  ' + e.event + (fields ? '  ' + fields : '');
        return li;
      }),
  );
}

// ----- talking to the server ---------------------------------------------

async function poll() {
  timer = null;
  try {
    const res = await fetch('/api/dashboard?since=' + lastSeq, {
      headers: headers(),
      cache: 'no-store',
      signal: AbortSignal.timeout(ANSWER_MS),
    });
    const body = await res.json().catch(() => null);
    if (!res.ok) {
      const why = body && body.error ? body.error.message : 'HTTP ' + res.status;
      say(res.status === 401 ? 'This server needs an API key with the read scope: ' + why : why, true);
      $('status').textContent = res.status === 401 ? 'key needed' : 'refused';
      $('status').className = 'badge unknown';
    } else {
      if (body.run !== run) {
        // Another run of the server: its points start over.
        run = body.run;
        points = [];
        lastSeq = 0;
      }
      for (const p of body.points) if (p.seq > lastSeq) points.push(p);
      if (points.length > KEPT) points = points.slice(points.length - KEPT);
      if (points.length) lastSeq = points[points.length - 1].seq;
      scopes = body.scopes || '';
      if ($('message').className === 'bad') say('');
      render(body);
    }
  } catch (e) {
    say(e.name === 'TimeoutError' ? 'The server has not answered for ' + ANSWER_MS / 1000 + ' s.' : 'The server does not answer: ' + e.message, true);
    $('status').textContent = 'unreachable';
    $('status').className = 'badge failing';
  }
  schedule();
}

function schedule() {
  if (timer === null && document.visibilityState === 'visible') timer = setTimeout(poll, POLL_MS);
}

async function rpc(method, params) {
  const res = await fetch('/rpc', {
    method: 'POST',
    headers: headers({ 'Content-Type': 'application/json' }),
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }),
  });
  const reply = await res.json();
  if (reply.error) throw new Error(reply.error.message);
  return reply.result;
}

async function resetBreaker(method) {
  try {
    const r = await rpc('bridge.breaker.reset', { method });
    say(r.reset ? 'The breaker of ' + method + ' is closed.' : 'No breaker for ' + method + '.');
  } catch (e) {
    say('Reset refused: ' + e.message, true);
  }
  refresh();
}

async function backupNow() {
  const button = $('backup-now');
  if (button.disabled) return;
  button.disabled = true;
  say('Backing up…');
  try {
    const r = await rpc('admin.backup', {});
    say('Backup written: ' + r.path + ' (' + bytes(r.bytes) + ').');
  } catch (e) {
    say('Backup failed: ' + e.message, true);
  } finally {
    button.disabled = false;
  }
  refresh();
}

function refresh() {
  if (timer !== null) clearTimeout(timer);
  timer = null;
  poll();
}

document.addEventListener('DOMContentLoaded', () => {
  // Not a form: a browser offers to save what a form submits, and the key is for this tab only.
  const useKey = () => {
    const k = $('key').value.trim();
    if (k) sessionStorage.setItem(KEY, k);
    $('key').value = '';
    refresh();
  };
  $('use-key').addEventListener('click', useKey);
  $('key').addEventListener('keydown', (e) => {
    if (e.key === 'Enter') useKey();
  });
  $('forget').addEventListener('click', () => {
    sessionStorage.removeItem(KEY);
    refresh();
  });
  $('backup-now').addEventListener('click', backupNow);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') refresh();
    else if (timer !== null) {
      clearTimeout(timer);
      timer = null;
    }
  });
  poll();
});
