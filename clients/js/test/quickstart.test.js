// The seed system's Quick Start (seeds/000), verbatim but for its import
// line and the framework's path (the seed's is a placeholder).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';

import { BIN, FRAMEWORK, SDK, tempDir } from './helpers.js';

test('the seed Quick Start runs unchanged but for the import', async (t) => {
  const dir = tempDir(t);
  process.env.LITEBRIDGE_CLIENT_BIN = BIN;
  process.env.LITEBRIDGE_WORKERS_PYTHON_PATH = SDK;
  process.env.LITEBRIDGE_DB_PATH = join(dir, 'quickstart.db');
  const logged = [];
  const console = { log: (...args) => logged.push(args) };

  const { createBridge } = await import('../src/compat.js');

  // Create and start bridge
  const bridge = await createBridge({
    frameworkPath: FRAMEWORK,
  });

  // Call Python methods
  const result = await bridge.call(
    'src.generator.llm_agent_interface.analyze_requirements',
    {
      description: 'Calculate portfolio value at risk',
      domain: 'finance'
    }
  );

  console.log('Recommendations:', result);

  // Shutdown gracefully
  await bridge.shutdown();

  assert.deepEqual(logged[0][1], {
    domain: 'finance',
    recommendations: ['model Calculate', 'model portfolio', 'model value'],
  });
  delete process.env.LITEBRIDGE_DB_PATH;
  delete process.env.LITEBRIDGE_WORKERS_PYTHON_PATH;
});

test('the seed getStats counts the calls just made; a bad binary fails at once', async (t) => {
  const dir = tempDir(t);
  const { createBridge, PythonError } = await import('../src/compat.js');
  const bridge = await createBridge({
    bin: BIN,
    db: join(dir, 'stats.db'),
    frameworkPath: FRAMEWORK,
    env: { LITEBRIDGE_WORKERS_PYTHON_PATH: SDK },
  });
  t.after(() => bridge.shutdown());
  await bridge.call('src.generator.llm_agent_interface.analyze_requirements', { description: 'a b' });
  await assert.rejects(
    bridge.call('src.generator.llm_agent_interface.analyze_requirements', { description: 5 }),
    PythonError,
  );
  const s = bridge.getStats();
  assert.equal(s.totalCalls, 2);
  assert.equal(s.successRate, 50);
  assert.ok(s.latency.p95 > 0);
  assert.equal(typeof (await bridge.stats()).total_calls, 'number');
  const started = Date.now();
  await assert.rejects(createBridge({ bin: join(dir, 'no-such-litebridge'), frameworkPath: FRAMEWORK }), /could not run/);
  assert.ok(Date.now() - started < 5000);
});
