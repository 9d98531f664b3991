// The client's cost, measured: the same calls sent through `Client` and
// through a minimal hand-written loop (spawn `litebridge stdio`, write JSON
// lines, match replies by id), one after the other in the same run, against
// the same binary. Cases: `sql.query` of one row (what the client adds is
// the largest share of it) and `bridge.call` of a Python worker's `echo`.
//
//   node clients/js/bench/bench.js [--bin PATH] [--seconds 6] [--rounds 12] [--depth 64] [--json]
//
// Per case, both take turns `--rounds` times (new processes each round),
// each turn a block of one-at-a-time calls then one with `--depth` in
// flight, each side `--seconds` in all per mode. Reported: sequential p50 over all blocks
// and pipelined calls per second. The binary defaults to the release build.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { Client } from '../src/index.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const { values: opts } = parseArgs({
  options: {
    bin: { type: 'string', default: join(resolve(REPO, process.env.CARGO_TARGET_DIR ?? 'target'), 'release', 'litebridge') },
    seconds: { type: 'string', default: '6' },
    rounds: { type: 'string', default: '12' },
    depth: { type: 'string', default: '64' },
    json: { type: 'boolean', default: false },
  },
});
const SECONDS = Number(opts.seconds);
const ROUNDS = Number(opts.rounds);
const DEPTH = Number(opts.depth);
const WORKER = `python3 ${join(REPO, 'examples', 'worker.py')}`;

/** The hand-written loop a user would write without the client. */
function handWritten(args) {
  const child = spawn(opts.bin, args, { stdio: ['pipe', 'pipe', 'ignore'] });
  const pending = new Map();
  let buffer = '';
  let next = 0;
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk) => {
    buffer += chunk;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const reply = JSON.parse(buffer.slice(0, nl));
      buffer = buffer.slice(nl + 1);
      const done = pending.get(reply.id);
      pending.delete(reply.id);
      if (reply.error) done.reject(new Error(reply.error.message));
      else done.resolve(reply.result);
    }
  });
  return {
    request(method, params) {
      const id = ++next;
      return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject });
        child.stdin.write(`${JSON.stringify({ jsonrpc: '2.0', id, method, params })}\n`);
      });
    },
    close() {
      child.stdin.end();
      return new Promise((r) => child.once('exit', r));
    },
  };
}

const CASES = {
  query: {
    raw: (c, i) => c.request('sql.query', { sql: 'SELECT ?1 AS v', params: [i] }).then((r) => r.rows[0][0]),
    client: (c, i) => c.query('SELECT ?1 AS v', [i]).then((rows) => rows[0].v),
  },
  call: {
    raw: (c, i) => c.request('bridge.call', { method: 'echo', params: { value: i } }),
    client: (c, i) => c.call('echo', { value: i }),
  },
};

/** Latencies (us) of calls one at a time for `ms`. */
async function sequential(send, ms, into) {
  const end = performance.now() + ms;
  for (let i = 0; performance.now() < end; i++) {
    const t0 = performance.now();
    const v = await send(i);
    into.push((performance.now() - t0) * 1000);
    if (v !== i) throw new Error(`wrong answer ${v} for ${i}`);
  }
}

/** Calls and seconds with `DEPTH` in flight for `ms`. */
async function pipelined(send, ms) {
  let done = 0;
  const end = performance.now() + ms;
  const t0 = performance.now();
  const lane = async (k) => {
    for (let i = k; performance.now() < end; i += DEPTH) {
      if ((await send(i)) !== i) throw new Error('wrong answer');
      done++;
    }
  };
  await Promise.all(Array.from({ length: DEPTH }, (_, k) => lane(k)));
  return [done, (performance.now() - t0) / 1000];
}

const p50 = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'lb-js-bench-'));
  const args = ['stdio', '--db', join(dir, 'b.db'), '--workers', WORKER, '--processes', '1'];
  const results = {};
  try {
    for (const [name, c] of Object.entries(CASES)) {
      // Short blocks taken in turns (the order swapped every round), each
      // round with processes of its own: a slow moment of the machine, or
      // a process placed badly, costs both sides alike.
      const block = (SECONDS * 1000) / ROUNDS;
      const lat = { raw: [], client: [] };
      const rate = { raw: [0, 0], client: [0, 0] };
      for (let round = 0; round < ROUNDS; round++) {
        const raw = handWritten(args);
        const client = Client.spawn({ bin: opts.bin, args: args.slice(1) });
        const sides = [
          ['raw', (i) => c.raw(raw, i)],
          ['client', (i) => c.client(client, i)],
        ];
        for (const [, send] of sides) for (let i = 0; i < 200; i++) await send(i); // warm
        for (const [side, send] of round % 2 ? sides.reverse() : sides) {
          await sequential(send, block, lat[side]);
          const [n, secs] = await pipelined(send, block);
          rate[side][0] += n;
          rate[side][1] += secs;
        }
        await raw.close();
        await client.close();
      }
      const r = {
        raw_p50_us: p50(lat.raw),
        client_p50_us: p50(lat.client),
        raw_calls_per_s: rate.raw[0] / rate.raw[1],
        client_calls_per_s: rate.client[0] / rate.client[1],
      };
      r.p50_added_us = r.client_p50_us - r.raw_p50_us;
      r.pipelined_ratio = r.client_calls_per_s / r.raw_calls_per_s;
      results[name] = r;
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  if (opts.json) {
    console.log(JSON.stringify(results, null, 2));
    return;
  }
  console.log('case    hand p50  client p50  added   | hand calls/s  client calls/s  ratio');
  for (const [name, r] of Object.entries(results)) {
    console.log(
      `${name.padEnd(7)} ${r.raw_p50_us.toFixed(1).padStart(7)}us ${r.client_p50_us.toFixed(1).padStart(8)}us ` +
        `${r.p50_added_us.toFixed(1).padStart(6)}us | ${r.raw_calls_per_s.toFixed(0).padStart(12)} ` +
        `${r.client_calls_per_s.toFixed(0).padStart(15)}  ${r.pipelined_ratio.toFixed(2)}`,
    );
  }
}

await main();
