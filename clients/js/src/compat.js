// The seed system's JavaScript API (`createBridge`, `ConfigBuilder`, its
// error names, `isRecoverableError`), over the litebridge client: a program
// written for the seed runs with only its import line changed.

import { Client } from './index.js';
import {
  CircuitOpenError,
  InvalidArgumentError,
  WorkerError,
  TimeoutError,
  LitebridgeError,
  WorkerCrashedError,
  ConnectionError,
  isRecoverableError,
} from './errors.js';

export { TimeoutError, isRecoverableError };
/** The seed's names for litebridge's error classes. */
export const SQLiteFrameworkError = LitebridgeError;
export const BridgeError = LitebridgeError;
export const CircuitBreakerError = CircuitOpenError;
export const PythonError = WorkerError;
export const ValidationError = InvalidArgumentError;
export const ProcessError = WorkerCrashedError;
export { ConnectionError };

// The seed's options, as the server's configuration (environment names
// `litebridge stdio` reads; see its `--print-config`).
const SETTINGS = {
  pythonExecutable: 'LITEBRIDGE_WORKERS_PYTHON',
  requestTimeout: 'LITEBRIDGE_WORKERS_TIMEOUT_MS',
  retryAttempts: 'LITEBRIDGE_WORKERS_MAX_RETRIES',
  retryBackoff: 'LITEBRIDGE_WORKERS_RETRY_BACKOFF',
  circuitBreakerEnabled: 'LITEBRIDGE_WORKERS_BREAKER_ENABLED',
  circuitBreakerThreshold: 'LITEBRIDGE_WORKERS_BREAKER_THRESHOLD',
  circuitBreakerTimeout: 'LITEBRIDGE_WORKERS_BREAKER_OPEN_MS',
  processIdleTimeout: 'LITEBRIDGE_WORKERS_MAX_IDLE_MS',
  cacheEnabled: 'LITEBRIDGE_CACHE_ENABLED',
  logLevel: 'LITEBRIDGE_SERVER_LOG_LEVEL',
};

/** The seed's bridge: a spawned litebridge serving the framework's functions. */
export class SQLiteFrameworkBridge extends Client {
  constructor(config = {}) {
    const env = { ...(config.env ?? {}) };
    for (const [option, name] of Object.entries(SETTINGS)) {
      if (config[option] !== undefined) env[name] = String(config[option]);
    }
    if (config.debug) env.LITEBRIDGE_SERVER_LOG_LEVEL = 'debug';
    const spawned = Client.spawn({
      ...config,
      processes: config.maxProcesses ?? config.processes,
      env,
    });
    super(spawned.transport, config);
    this.stats = { snapshot: null };
  }

  /** Starts the workers and waits until they answer (the seed's `start`). */
  async start() {
    await this.waitForReady(config_ready_ms);
    return this;
  }

  /** Resolves once litebridge and its workers are up, within `timeout` ms. */
  async waitForReady(timeout = config_ready_ms) {
    const deadline = Date.now() + timeout;
    let last;
    while (Date.now() < deadline) {
      try {
        const s = await this.request('bridge.health', {});
        this.stats.snapshot = s;
        if (s.healthy) return;
      } catch (e) {
        last = e;
        if (!(e instanceof ConnectionError) && e.kind !== 'unavailable') throw e;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new TimeoutError(`litebridge was not ready within ${timeout} ms${last ? `: ${last.message}` : ''}`, {
      kind: 'timeout',
      recoverable: true,
    });
  }

  async call(method, params, options) {
    const r = await super.call(method, params, options);
    this.refresh();
    return r;
  }

  refresh() {
    this.request('bridge.stats', {}).then(
      (s) => (this.stats.snapshot = s),
      () => {},
    );
  }

  /**
   * The seed's statistics, from the latest snapshot (refreshed after each
   * call): totalCalls, successRate (percent), averageLatency and
   * latency.{p50,p95,p99} (ms), processPool.{processCount,availableProcesses}.
   */
  getStats() {
    const s = this.stats.snapshot ?? {};
    return {
      totalCalls: s.total_calls ?? 0,
      successes: s.successes ?? 0,
      failures: s.failures ?? 0,
      successRate: s.success_rate ?? 100,
      averageLatency: s.average_latency_ms ?? 0,
      latency: s.latency_ms ?? { p50: 0, p95: 0, p99: 0 },
      processPool: {
        processCount: s.process_count ?? 0,
        availableProcesses: s.available_processes ?? 0,
      },
      circuitBreakers: s.breakers ?? [],
      raw: s,
    };
  }

  isHealthy() {
    return this.stats.snapshot?.healthy === true;
  }

  /** The snapshot's figures in Prometheus' text format. */
  getMetrics() {
    const s = this.getStats();
    return [
      '# TYPE litebridge_bridge_calls_total counter',
      `litebridge_bridge_calls_total ${s.totalCalls}`,
      '# TYPE litebridge_bridge_failures_total counter',
      `litebridge_bridge_failures_total ${s.failures}`,
      '# TYPE litebridge_bridge_processes gauge',
      `litebridge_bridge_processes ${s.processPool.processCount}`,
      '',
    ].join('\n');
  }

  get circuitBreakers() {
    return { reset: (method) => this.resetBreaker(method) };
  }

  get processPool() {
    return this;
  }
}

const config_ready_ms = 30_000;

/** Creates and starts a bridge (the seed's Quick Start). */
export async function createBridge(config = {}) {
  const bridge = new SQLiteFrameworkBridge(config);
  await bridge.start();
  return bridge;
}

/** The seed's fluent configuration; `build()` gives the options of `createBridge`. */
export class ConfigBuilder {
  constructor() {
    this.config = {};
  }
  setFrameworkPath(path) {
    this.config.frameworkPath = path;
    return this;
  }
  setPythonExecutable(path) {
    this.config.pythonExecutable = path;
    return this;
  }
  setMaxProcesses(n) {
    this.config.maxProcesses = n;
    return this;
  }
  setRequestTimeout(ms) {
    this.config.requestTimeout = ms;
    return this;
  }
  setRetry(attempts, backoff = 'exponential') {
    this.config.retryAttempts = attempts;
    this.config.retryBackoff = backoff;
    return this;
  }
  setCircuitBreaker(enabled, threshold, timeout) {
    this.config.circuitBreakerEnabled = enabled;
    if (threshold !== undefined) this.config.circuitBreakerThreshold = threshold;
    if (timeout !== undefined) this.config.circuitBreakerTimeout = timeout;
    return this;
  }
  setCache(enabled) {
    this.config.cacheEnabled = enabled;
    return this;
  }
  enableDebug() {
    this.config.debug = true;
    return this;
  }
  enableProduction() {
    this.config.logLevel = 'warn';
    return this;
  }
  build() {
    return { ...this.config };
  }
}
