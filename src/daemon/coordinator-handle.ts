// The supervisor's side of one coordinator process: fork, the init/ready handshake, request ids,
// and restarts with exponential back-off after a coordinator that was ready once dies.

import { fork, type ChildProcess } from 'node:child_process';
import type { CacheConfig, DaemonConfig } from '../config/types.js';
import type { CacheStatus, CoordinatorToSupervisor, InheritedListeners, SupervisorToCoordinator } from './ipc.js';
import type { Logger } from './logger.js';
import { PcachedError } from '../util/errors.js';
import { toPcachedError } from './control.js';
import { COORDINATOR_NAME_ARG } from '../util/proc-info.js';
import { overridesAfterReload } from '../coordinator/tunables.js';
import { coordinatorEnv } from './threadpool.js';

export type CoordinatorState = 'starting' | 'running' | 'restarting' | 'draining' | 'stopped';

export interface BackoffOptions {
  /** Delay before the first restart. */
  initialMs: number;
  /** Cap of the doubling delay. */
  maxMs: number;
  /** A coordinator that ran this long since `ready` restarts with initialMs again. */
  stableMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 250, maxMs: 30_000, stableMs: 60_000 };

export interface CoordinatorHandleOptions {
  cache: CacheConfig;
  logLevel: DaemonConfig['logLevel'];
  /** Compiled coordinator entry point (dist/src/coordinator/main.js). */
  modulePath: string;
  logger: Logger;
  backoff: BackoffOptions;
  /** How long a coordinator may take from fork to `ready`. */
  startupTimeoutMs: number;
  /** Socket-activated listeners for this cache: the supervisor's fds, passed again at every restart. */
  listenFds?: InheritedListeners;
  /** Called when the coordinator died and a restart is scheduled (why), and when one is serving again (null). */
  onRestart?: (why: string | null) => void;
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

function describeExit(code: number | null, signal: NodeJS.Signals | null): string {
  return signal ? `killed by ${signal}` : `exited with code ${code}`;
}

export class CoordinatorHandle {
  #cache: CacheConfig;
  #logLevel: DaemonConfig['logLevel'];
  readonly #opts: CoordinatorHandleOptions;
  readonly #log: Logger;
  #child: ChildProcess | undefined;
  #state: CoordinatorState = 'stopped';
  #pending = new Map<number, Pending>();
  #nextId = 1;
  #restarts = 0;
  #backoffMs: number;
  #restartTimer: NodeJS.Timeout | undefined;
  #readyAt = 0;
  #stopping = false;
  #lastReady: { listeners: string[]; originSize: number } = { listeners: [], originSize: 0 };
  /** Values set by message, as the coordinator last reported them: a restart gets them back. */
  #overrides: Record<string, unknown> = {};
  /** The reason a coordinator gave (`fatal`) before it exited, for the exit log line. */
  #lastFatal: string | undefined;

  constructor(opts: CoordinatorHandleOptions) {
    this.#opts = opts;
    this.#cache = opts.cache;
    this.#logLevel = opts.logLevel;
    this.#log = opts.logger.child({ cache: opts.cache.name });
    this.#backoffMs = opts.backoff.initialMs;
  }

  get name(): string {
    return this.#cache.name;
  }
  get cache(): CacheConfig {
    return this.#cache;
  }
  get state(): CoordinatorState {
    return this.#state;
  }
  get pid(): number {
    return this.#child?.pid ?? 0;
  }
  get restarts(): number {
    return this.#restarts;
  }
  get listeners(): string[] {
    return this.#lastReady.listeners;
  }

  /** First start. Rejects (and does not restart) when the coordinator cannot come up. */
  async start(): Promise<void> {
    this.#stopping = false;
    await this.#spawn();
  }

  /** Sends a control-plane request; rejects with ERR_NOT_RUNNING unless the coordinator is up. */
  request(body: { op: 'status' } | { op: 'table' } | { op: 'message'; words: string[] }, timeoutMs: number): Promise<unknown> {
    if (this.#state !== 'running') {
      return Promise.reject(new PcachedError('ERR_NOT_RUNNING', `cache "${this.name}" is ${this.#state}${this.#state === 'stopped' ? '' : ': try again in a moment (pcached status shows when it runs)'}`));
    }
    const id = this.#nextId++;
    return this.#call(id, { type: 'request', id, ...body } as SupervisorToCoordinator, timeoutMs);
  }

  /** Pushes reloadable settings. The new cache config is kept for restarts even if this fails. */
  reconfigure(cache: CacheConfig, logLevel: DaemonConfig['logLevel'], timeoutMs: number): Promise<unknown> {
    // The rule holds while no coordinator runs too: a key the file changed drops its override.
    this.#overrides = overridesAfterReload(this.#overrides, this.#cache, cache);
    this.#cache = cache;
    this.#logLevel = logLevel;
    if (this.#state !== 'running') return Promise.resolve(undefined);
    const id = this.#nextId++;
    return this.#call(id, { type: 'reconfigure', id, cache, logLevel }, timeoutMs);
  }

  /** Status as the coordinator reports it, or one the supervisor makes up when it cannot answer. */
  async status(timeoutMs: number): Promise<CacheStatus> {
    if (this.#state === 'running') {
      try {
        const s = (await this.request({ op: 'status' }, timeoutMs)) as CacheStatus;
        // The supervisor is the one that knows about restarts.
        return { ...s, pid: this.pid, restarts: this.#restarts };
      } catch (err) {
        this.#log.warn({ err: (err as Error).message }, 'status request failed');
        return this.#syntheticStatus('unresponsive');
      }
    }
    return this.#syntheticStatus(this.#state);
  }

  #syntheticStatus(state: string): CacheStatus {
    const c = this.#cache;
    return {
      name: c.name, mode: c.mode, state, pid: this.pid, origin: c.origin, originSize: this.#lastReady.originSize,
      cache: c.cache, readOnly: c.readOnly, listeners: this.#lastReady.listeners, connections: 0, stripes: c.stripes,
      uptimeSec: 0, restarts: this.#restarts, stats: {}, stripeStats: [],
    };
  }

  /**
   * Graceful stop: `shutdown`, then wait up to timeoutMs for the exit, then SIGKILL. No restart
   * follows.
   */
  async stop(timeoutMs: number): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#restartTimer);
    this.#restartTimer = undefined;
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) {
      this.#state = 'stopped';
      return;
    }
    this.#state = 'draining';
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    this.#send(child, { type: 'shutdown' });
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      exited.then(() => false),
      new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(true), timeoutMs); }),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      this.#log.warn({ childPid: child.pid, timeoutMs }, 'coordinator did not drain in time; killing it');
      child.kill('SIGKILL');
      await exited;
    }
    this.#state = 'stopped';
  }

  /** Immediate stop (second SIGINT). */
  kill(): void {
    this.#stopping = true;
    clearTimeout(this.#restartTimer);
    this.#child?.kill('SIGKILL');
  }

  #call(id: number, message: SupervisorToCoordinator, timeoutMs: number): Promise<unknown> {
    const child = this.#child;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new PcachedError('ERR_COORDINATOR', `cache "${this.name}": no answer from the coordinator within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      if (!child || !this.#send(child, message)) {
        clearTimeout(timer);
        this.#pending.delete(id);
        reject(new PcachedError('ERR_NOT_RUNNING', `cache "${this.name}": the coordinator is not connected`));
      }
    });
  }

  #send(child: ChildProcess, message: SupervisorToCoordinator): boolean {
    if (!child.connected) return false;
    try {
      child.send(message, (err) => {
        if (err) this.#log.debug({ err: err.message, type: message.type }, 'IPC send failed');
      });
      return true;
    } catch {
      return false;
    }
  }

  #rejectPending(reason: string): void {
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(new PcachedError('ERR_COORDINATOR', `cache "${this.name}": ${reason}`));
      this.#pending.delete(id);
    }
  }

  /** Forks and waits for `ready`; rejects on `fatal`, an early exit or the start-up timeout. */
  #spawn(): Promise<void> {
    this.#state = this.#restarts === 0 && this.#readyAt === 0 ? 'starting' : 'restarting';
    this.#lastFatal = undefined;
    const passed = (['unix', 'tcp'] as const).flatMap((kind) => {
      const l = this.#opts.listenFds?.[kind];
      return l === undefined ? [] : [{ kind, ...l }];
    });
    const listenFds: InheritedListeners = Object.fromEntries(passed.map((p, i) => [p.kind, { fd: 4 + i, address: p.address }]));
    let child: ChildProcess;
    try {
      // The cache name in argv lets /proc/PID/cmdline say whose coordinator holds a device.
      child = fork(this.#opts.modulePath, [COORDINATOR_NAME_ARG, this.#cache.name], {
        serialization: 'advanced',
        env: coordinatorEnv(this.#cache),
        // Activated sockets follow the IPC channel: fds 4 and up in the child.
        stdio: ['ignore', 'inherit', 'inherit', 'ipc', ...passed.map((p) => p.fd)],
        // Own process group: a terminal's Ctrl-C reaches only the supervisor, which then drains
        // the coordinators in order instead of having them all die at once.
        detached: true,
      });
    } catch (err) {
      return Promise.reject(new PcachedError('ERR_COORDINATOR', `cache "${this.name}": cannot fork the coordinator: ${(err as Error).message}`, { cause: err }));
    }
    this.#child = child;
    const log = this.#log;
    log.debug({ childPid: child.pid, module: this.#opts.modulePath }, 'coordinator forked');

    return new Promise<void>((resolve, reject) => {
      let ready = false;
      let settled = false;
      const settle = (err?: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(startTimer);
        if (err) reject(err);
        else resolve();
      };
      const startTimer = setTimeout(() => {
        settle(new PcachedError('ERR_COORDINATOR', `cache "${this.name}": coordinator not ready after ${this.#opts.startupTimeoutMs} ms`));
        child.kill('SIGKILL');
      }, this.#opts.startupTimeoutMs);

      child.on('message', (m: CoordinatorToSupervisor) => {
        switch (m?.type) {
          case 'ready':
            ready = true;
            this.#readyAt = Date.now();
            this.#state = 'running';
            this.#lastReady = { listeners: m.listeners, originSize: m.originSize };
            log.info({ childPid: child.pid, listeners: m.listeners, originSize: m.originSize }, 'coordinator ready');
            settle();
            break;
          case 'fatal':
            this.#lastFatal = `${m.code}: ${m.message}`;
            log.error({ childPid: child.pid, code: m.code }, `coordinator fatal: ${m.message}`);
            if (!ready) settle(toPcachedError({ code: m.code, message: `cache "${this.name}": ${m.message}` }));
            break;
          case 'tunables':
            this.#overrides = m.overrides;
            break;
          case 'response': {
            const p = this.#pending.get(m.id);
            if (!p) break;
            this.#pending.delete(m.id);
            clearTimeout(p.timer);
            if (m.ok) p.resolve(m.result);
            else p.reject(toPcachedError(m.error));
            break;
          }
          default:
            log.warn({ message: m }, 'unexpected message from the coordinator');
        }
      });
      child.on('error', (err) => {
        log.error({ err: err.message }, 'coordinator process error');
        settle(new PcachedError('ERR_COORDINATOR', `cache "${this.name}": ${err.message}`, { cause: err }));
      });
      child.on('exit', (code, signal) => {
        const why = describeExit(code, signal);
        this.#rejectPending(`the coordinator ${why}`);
        if (this.#child === child) this.#child = undefined;
        if (!ready) {
          settle(this.#lastFatal !== undefined
            ? new PcachedError('ERR_COORDINATOR', `cache "${this.name}": ${this.#lastFatal}`)
            : new PcachedError('ERR_COORDINATOR', `cache "${this.name}": the coordinator ${why} before it was ready`));
          return;
        }
        if (this.#stopping) {
          log.info({ childPid: child.pid, code, signal }, 'coordinator stopped');
          this.#state = 'stopped';
          return;
        }
        this.#scheduleRestart(child.pid ?? 0, why);
      });

      this.#send(child, { type: 'init', cache: this.#cache, logLevel: this.#logLevel, overrides: this.#overrides, listenFds });
    });
  }

  #scheduleRestart(pid: number, why: string): void {
    this.#state = 'restarting';
    // A coordinator that ran a good while was not crash-looping: start the back-off over.
    if (this.#readyAt && Date.now() - this.#readyAt >= this.#opts.backoff.stableMs) this.#backoffMs = this.#opts.backoff.initialMs;
    const delayMs = this.#backoffMs;
    this.#backoffMs = Math.min(this.#backoffMs * 2, this.#opts.backoff.maxMs);
    this.#log.warn({ childPid: pid, reason: why, fatal: this.#lastFatal, restartInMs: delayMs }, `coordinator ${why}; restarting in ${delayMs} ms`);
    this.#opts.onRestart?.(why);
    this.#restartTimer = setTimeout(() => {
      this.#restartTimer = undefined;
      if (this.#stopping) return;
      this.#restarts++;
      this.#readyAt = 0;
      this.#spawn().then(
        () => {
          this.#log.info({ restarts: this.#restarts }, 'coordinator restarted');
          this.#opts.onRestart?.(null);
        },
        (err: Error) => {
          if (this.#stopping) return;
          this.#child?.kill('SIGKILL');
          this.#child = undefined;
          this.#scheduleRestart(0, `failed to restart (${err.message})`);
        },
      );
    }, delayMs);
  }
}
