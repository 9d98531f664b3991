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
  #snapshot = null;
  #refreshing = false;
  #calls = 0;
  #failures = 0;
  /** The last call latencies, ms (a ring). */
  #latencies = [];

  constructor(config = {}) {
    const env = { ...(config.env ?? {}) };
    for (const [option, name] of Object.entries(SETTINGS)) {
      if (config[option] !== undefined) env[name] = String(config[option]);
    }
    if (config.debug) env.LITEBRIDGE_SERVER_LOG_LEVEL = 'debug';
    if (config.frameworkPath) env.LITEBRIDGE_WORKERS_FRAMEWORK_PATH = config.frameworkPath;
    const spawned = Client.spawn({
      ...config,
      frameworkPath: undefined,
      processes: config.maxProcesses ?? config.processes,
      env,
    });
    super(spawned.transport, config);
  }

  /** Starts the workers and waits until they answer (the seed's `start`). */
  async start() {
    await this.waitForReady(READY_MS);
    return this;
  }

  /**
   * Resolves once litebridge and its workers are up, within `timeout` ms.
   * A litebridge that cannot start (no binary, a bad setting, no workers)
   * is an error at once, not a wait.
   */
  async waitForReady(timeout = READY_MS) {
    const deadline = Date.now() + timeout;
    for (;;) {
      const s = await this.request('bridge.health', {});
      this.#snapshot = s;
      if (s.healthy) return;
      if (Date.now() >= deadline) {
        throw new TimeoutError(`the workers were not all up within ${timeout} ms`, { kind: 'timeout', recoverable: true });
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async call(method, params, options) {
    const started = performance.now();
    try {
      const r = await super.call(method, params, options);
      return r;
    } catch (e) {
      this.#failures++;
      throw e;
    } finally {
      this.#calls++;
      this.#latencies.push(performance.now() - started);
      if (this.#latencies.length > 1000) this.#latencies.shift();
      this.#refresh();
    }
  }

  /** The pool's figures, asked again at most one at a time. */
  #refresh() {
    if (this.#refreshing) return;
    this.#refreshing = true;
    this.request('bridge.stats', {})
      .then((s) => (this.#snapshot = s), () => {})
      .finally(() => (this.#refreshing = false));
  }

  /**
   * The seed's statistics, now: totalCalls, successRate (percent),
   * averageLatency and latency.{p50,p95,p99} (ms) of this bridge's calls
   * (the last 1,000), and processPool.{processCount,availableProcesses} from
   * the pool's latest figures.
   */
  getStats() {
    const sorted = [...this.#latencies].sort((a, b) => a - b);
    const at = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] : 0);
    const s = this.#snapshot ?? {};
    return {
      totalCalls: this.#calls,
      successes: this.#calls - this.#failures,
      failures: this.#failures,
      successRate: this.#calls ? ((this.#calls - this.#failures) * 100) / this.#calls : 100,
      averageLatency: sorted.length ? sorted.reduce((a, b) => a + b, 0) / sorted.length : 0,
      latency: { p50: at(0.5), p95: at(0.95), p99: at(0.99) },
      processPool: {
        processCount: s.process_count ?? s.workers?.length ?? 0,
        availableProcesses: s.available_processes ?? 0,
      },
      circuitBreakers: s.breakers ?? [],
      raw: s,
    };
  }

  isHealthy() {
    return this.transport.child !== null && this.#snapshot?.healthy === true;
  }

  /** The seed's figures in Prometheus' text format. */
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

const READY_MS = 30_000;

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
