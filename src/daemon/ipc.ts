// Messages between the supervisor and a coordinator process (child_process.fork IPC channel,
// 'advanced' serialization). Control-plane only: never per I/O.

import type { CacheConfig, DaemonConfig } from '../config/types.js';

export interface CacheStatus {
  name: string;
  mode: string;
  /** 'starting' | 'running' | 'draining' | 'stopped' | 'restarting' */
  state: string;
  pid: number;
  origin: string;
  originSize: number;
  cache: string;
  readOnly: boolean;
  listeners: string[];
  connections: number;
  stripes: number;
  uptimeSec: number;
  restarts: number;
  /** Stripe worker threads respawned after dying (the coordinator kept running). */
  stripeRestarts?: number;
  /**
   * At queue depth 1-2: how long completions have recently taken from submission (moving
   * average) and how long the coordinator now polls for the next one (src/coordinator/poll-budget.ts).
   */
  lowDepthPoll?: { averageUs: number; budgetUs: number };
  /** Counter name → value (see src/stats/counters.ts). */
  stats: Record<string, number>;
  /** Per-stripe counters, index = stripe id. */
  stripeStats: Record<string, number>[];
  /** `pcached detach` released the cache: the volume is served from the origin. */
  detached?: boolean;
  /** The cache's state (blocks, tails, gc_percent, errors); absent once detached. */
  cacheState?: import('../coordinator/cache-runtime.js').CacheStatusFields;
  /** clean, dirty, cleaning, draining, failed, degraded or detached (docs/operations.md). */
  condition?: string;
  /** Totals and their rates over the last minute and hour (src/stats/rates.ts). */
  rates?: {
    total: Record<string, number>;
    minute?: RateWindowStatus;
    hour?: RateWindowStatus;
  };
}

export interface RateWindowStatus {
  /** Seconds the window covers (less than its length while the cache is younger). */
  spanSec: number;
  perSec: Record<string, number>;
  /** Read hits / read blocks within the window; null without reads. */
  hitRatio: number | null;
}

/** Socket-activated listeners handed to a coordinator: the fd numbers in the coordinator. */
export interface InheritedListeners {
  /** address: the socket's path or HOST:PORT, as /proc tells it (a Unix server on an fd cannot say). */
  unix?: { fd: number; address: string };
  tcp?: { fd: number; address: string };
}

export type SupervisorToCoordinator =
  | { type: 'init'; cache: CacheConfig; logLevel: DaemonConfig['logLevel']; overrides?: Record<string, unknown>; listenFds?: InheritedListeners }
  | { type: 'request'; id: number; op: 'status' }
  | { type: 'request'; id: number; op: 'table' }
  | { type: 'request'; id: number; op: 'message'; words: string[] }
  | { type: 'reconfigure'; id: number; cache: CacheConfig; logLevel: DaemonConfig['logLevel'] }
  | { type: 'shutdown' };

export type CoordinatorToSupervisor =
  | { type: 'ready'; listeners: string[]; originSize: number }
  | { type: 'fatal'; code: string; message: string }
  /** After a message or a reload: the values messages set, for a restart after a crash. */
  | { type: 'tunables'; overrides: Record<string, unknown> }
  | { type: 'response'; id: number; ok: true; result: unknown }
  | { type: 'response'; id: number; ok: false; error: { code: string; message: string } };

/** Control socket (Unix, u32 BE length + msgpackr frame), served by the supervisor. */
export type ControlRequest =
  | { id: number; op: 'ping' }
  | { id: number; op: 'status'; name?: string }
  | { id: number; op: 'table'; name: string }
  | { id: number; op: 'message'; name: string; words: string[] }
  | { id: number; op: 'reload' };

export type ControlResponse =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: { code: string; message: string } };
