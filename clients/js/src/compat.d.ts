// Type declarations of the seed system's API (src/compat.js).

import { Client, SpawnOptions, LitebridgeError } from './index.js';

export {
  TimeoutError,
  ConnectionError,
  isRecoverableError,
} from './index.js';
export {
  CircuitOpenError as CircuitBreakerError,
  WorkerError as PythonError,
  InvalidArgumentError as ValidationError,
  WorkerCrashedError as ProcessError,
} from './index.js';
export declare const SQLiteFrameworkError: typeof LitebridgeError;
export declare const BridgeError: typeof LitebridgeError;

export interface BridgeConfig extends SpawnOptions {
  frameworkPath?: string;
  pythonExecutable?: string;
  maxProcesses?: number;
  processIdleTimeout?: number;
  requestTimeout?: number;
  retryAttempts?: number;
  retryBackoff?: 'exponential' | 'linear' | 'constant';
  circuitBreakerEnabled?: boolean;
  circuitBreakerThreshold?: number;
  circuitBreakerTimeout?: number;
  cacheEnabled?: boolean;
  enableMetrics?: boolean;
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
  debug?: boolean;
}

export interface SeedStats {
  totalCalls: number;
  successes: number;
  failures: number;
  successRate: number;
  averageLatency: number;
  latency: { p50: number; p95: number; p99: number };
  processPool: { processCount: number; availableProcesses: number };
  circuitBreakers: unknown[];
  raw: Record<string, unknown>;
}

/**
 * A `Client` whose `isHealthy()` answers at once (the seed's signature) from
 * the latest pool figures; `Client.isHealthy()` asks the server.
 */
declare const SeedClient: new (...args: any[]) => Omit<Client, 'isHealthy'>;

export class SQLiteFrameworkBridge extends SeedClient {
  constructor(config?: BridgeConfig);
  start(): Promise<this>;
  waitForReady(timeout?: number): Promise<void>;
  getStats(): SeedStats;
  isHealthy(): boolean;
  getMetrics(): string;
  readonly circuitBreakers: { reset(method: string): Promise<{ reset: boolean }> };
  readonly processPool: this;
}

export function createBridge(config?: BridgeConfig): Promise<SQLiteFrameworkBridge>;

export class ConfigBuilder {
  setFrameworkPath(path: string): this;
  setPythonExecutable(path: string): this;
  setMaxProcesses(n: number): this;
  setRequestTimeout(ms: number): this;
  setRetry(attempts: number, backoff?: 'exponential' | 'linear' | 'constant'): this;
  setCircuitBreaker(enabled: boolean, threshold?: number, timeout?: number): this;
  setCache(enabled: boolean): this;
  enableDebug(): this;
  enableProduction(): this;
  build(): BridgeConfig;
}
