// The seed's Quick Start (seed 000), typed, as a TypeScript program writes it
// with only the import line changed. Checked by `tsc`, not run.

import {
  createBridge,
  ConfigBuilder,
  TimeoutError,
  CircuitBreakerError,
  PythonError,
  ValidationError,
  isRecoverableError,
  type SQLiteFrameworkBridge,
} from '@litebridge/client/compat';

interface Requirements {
  requirements: string[];
  complexity: 'low' | 'medium' | 'high';
}

export async function quickStart(): Promise<void> {
  const bridge: SQLiteFrameworkBridge = await createBridge({
    frameworkPath: '/path/to/sqlite-framework',
  });
  bridge.on('process-restarted', (event) => console.log(event.seq, event.event));
  try {
    const result = await bridge.call<Requirements>(
      'src.generator.llm_agent_interface.analyze_requirements',
      { prompt: 'Create a user management system' },
      { timeout: 60_000 },
    );
    const first: string | undefined = result.requirements[0];
    console.log(first, result.complexity);
    const stats = bridge.getStats();
    console.log(stats.totalCalls, stats.successRate, stats.latency.p99, stats.processPool.processCount);
    const healthy: boolean = bridge.isHealthy();
    const metrics: string = bridge.getMetrics();
    console.log(healthy, metrics.length);
  } catch (error) {
    if (error instanceof TimeoutError) console.error('timed out', error.retryAfter);
    else if (error instanceof CircuitBreakerError) {
      const wait: number | undefined = error.retryAfter;
      console.error('breaker open, retry in', wait);
      await bridge.circuitBreakers.reset('src.generator.llm_agent_interface.analyze_requirements');
    } else if (error instanceof PythonError) console.error(error.type, error.traceback);
    else if (error instanceof ValidationError) console.error(error.kind, error.data);
    else if (isRecoverableError(error)) console.error('try again');
    else throw error;
  } finally {
    await bridge.shutdown();
  }
}

export function configured(): Promise<SQLiteFrameworkBridge> {
  const config = new ConfigBuilder()
    .setFrameworkPath('/srv/framework')
    .setMaxProcesses(4)
    .setRequestTimeout(120_000)
    .setRetry(3, 'exponential')
    .setCircuitBreaker(true, 5, 60_000)
    .enableProduction()
    .build();
  return createBridge(config);
}

// What the declarations refuse.
export function refused(bridge: SQLiteFrameworkBridge): void {
  // @ts-expect-error: no such backoff
  new ConfigBuilder().setRetry(3, 'fibonacci');
  // @ts-expect-error: getStats() answers at once, not a promise
  void bridge.getStats().then;
}
