// The supervisor: one per host, in the foreground of `pcached start`. It owns the configuration
// (load, SIGHUP reload), the files the embedded default needs, the control socket, and one
// coordinator process per cache (src/daemon/coordinator-handle.ts). It never touches NBD traffic.

import { fileURLToPath } from 'node:url';
import { diffConfig, loadConfig, type LoadedConfig } from '../config/load.js';
import type { DaemonConfig } from '../config/types.js';
import { PcachedError } from '../util/errors.js';
import { ControlServer } from './control.js';
import { MetricsServer } from './metrics.js';
import { CoordinatorHandle, DEFAULT_BACKOFF, type BackoffOptions } from './coordinator-handle.js';
import { checkDistinctFiles, describeCreated, prepareCacheFiles } from './files.js';
import type { CacheStatus, ControlRequest } from './ipc.js';
import { createLogger, type Logger } from './logger.js';
import type { TableRow } from '../coordinator/tunables.js';
import { resolveGroup } from '../util/group.js';
import type { NotifyFields, SdNotifier } from './sd-notify.js';
import type { PidFile } from './pidfile.js';
import { matchListeners, type ActivatedSocket } from './socket-activation.js';
import { formatNbdUri, listenerTarget, type NbdTarget } from '../nbd/uri.js';

/** dist/src/daemon/supervisor.js → dist/src/coordinator/main.js */
export const COORDINATOR_MODULE = fileURLToPath(new URL('../coordinator/main.js', import.meta.url));

export interface SupervisorOptions {
  loaded: LoadedConfig;
  logger?: Logger;
  coordinatorModule?: string;
  backoff?: Partial<BackoffOptions>;
  /** SIGTERM: how long coordinators get to drain before SIGKILL. */
  shutdownTimeoutMs?: number;
  statusTimeoutMs?: number;
  messageTimeoutMs?: number;
  reconfigureTimeoutMs?: number;
  /** Fork to `ready`. Default: 60 s, or longer when an NBD origin may take originTimeoutMs to answer. */
  startupTimeoutMs?: number;
  /** systemd readiness (READY=1 once every cache serves, STOPPING=1 on drain, STATUS=). */
  notifier?: SdNotifier;
  /** Socket-activated listeners (src/daemon/socket-activation.ts), matched to caches before any fork. */
  listenSockets?: ActivatedSocket[];
  /** --pidfile: checked before start-up, written once ready, removed once stopped. */
  pidFile?: PidFile;
}

/** One connectable address of one cache, as the ready line and `pcached run` give it. */
export interface ServedUri {
  cache: string;
  uri: string;
  target: NbdTarget;
}

export interface ReloadResult {
  /** False when there was nothing to reload (no config file). */
  reloaded: boolean;
  changed: string[];
  /** Caches whose coordinator did not take the new settings (they get them on their next start). */
  failed: { name: string; message: string }[];
}

export class Supervisor {
  #loaded: LoadedConfig;
  readonly #log: Logger;
  readonly #opts: SupervisorOptions;
  readonly #handles = new Map<string, CoordinatorHandle>();
  #control: ControlServer | undefined;
  #metrics: MetricsServer | undefined;
  #startedAt = Date.now();
  #state: 'new' | 'starting' | 'running' | 'stopping' | 'stopped' = 'new';
  #reloading: Promise<ReloadResult> | undefined;
  #reloadAgain = false;
  #stopping: Promise<void> | undefined;
  #stopRequested: string | undefined;
  /** Caches whose coordinator died and is being restarted, with why. */
  readonly #restarting = new Map<string, string>();
  #resolveStopped!: (code: number) => void;
  /** Resolves with the process exit code once the supervisor has stopped. */
  readonly stopped: Promise<number>;

  constructor(opts: SupervisorOptions) {
    this.#opts = opts;
    this.#loaded = opts.loaded;
    this.#log = opts.logger ?? createLogger({ level: opts.loaded.config.logLevel, name: 'pcached' });
    this.stopped = new Promise((resolve) => { this.#resolveStopped = resolve; });
  }

  get config(): DaemonConfig {
    return this.#loaded.config;
  }

  /**
   * Creates the files, claims the control socket and starts every coordinator. A coordinator that
   * cannot start the first time is an operator error: everything started is stopped again and the
   * error is thrown (no restart loop).
   */
  async start(): Promise<void> {
    if (this.#state !== 'new') throw new Error('Supervisor.start() called twice');
    this.#state = 'starting';
    this.#startedAt = Date.now();
    const { config, configFile, embeddedDefault, overrides } = this.#loaded;
    this.#log.info({ configFile: configFile ?? null, embeddedDefault, overrides, caches: config.caches.map((c) => c.name) }, 'pcached starting');
    const notifier = this.#opts.notifier;
    notifier?.notify({ STATUS: `starting ${config.caches.length} cache${config.caches.length === 1 ? '' : 's'}` });
    let listenFds: ReturnType<typeof matchListeners>;
    try {
      this.#opts.pidFile?.check();
      listenFds = matchListeners(this.#opts.listenSockets ?? [], config.caches);
      for (const s of this.#opts.listenSockets ?? []) this.#log.info({ fd: s.fd, fdName: s.name || undefined, kind: s.kind, address: s.address }, 'socket-activated listener');
      for (const cache of config.caches) {
        const created = prepareCacheFiles(cache, { createOrigin: embeddedDefault });
        for (const line of describeCreated(cache, created)) this.#log.info({ cache: cache.name }, line);
      }
      checkDistinctFiles(config.caches);
      this.#control = new ControlServer({
        path: config.control, handler: (r) => this.#handleControl(r), logger: this.#log,
        access: { mode: config.controlMode, gid: resolveGroup(config.controlGroup, 'controlGroup') },
      });
      await this.#control.listen();
      const m = config.metrics.listen;
      if (m) {
        this.#metrics = new MetricsServer({ host: m.host, port: m.port, status: () => this.status(), log: this.#log });
        try {
          const at = await this.#metrics.listen();
          this.#log.info({ metrics: `http://${at.host.includes(':') ? `[${at.host}]` : at.host}:${at.port}/metrics` }, 'metrics listening');
        } catch (err) {
          await this.#control.close();
          throw new PcachedError('ERR_LISTEN', `cannot listen for metrics on ${m.host}:${m.port}: ${(err as Error).message}`, { cause: err });
        }
      }
    } catch (err) {
      this.#state = 'stopped';
      throw err;
    }
    if (this.#stopRequested !== undefined) {
      await this.#shutdown(this.#stopRequested);
      this.#resolveStopped(0);
      return;
    }

    const backoff = { ...DEFAULT_BACKOFF, ...this.#opts.backoff };
    for (const cache of config.caches) {
      this.#handles.set(cache.name, new CoordinatorHandle({
        cache,
        logLevel: config.logLevel,
        modulePath: this.#opts.coordinatorModule ?? COORDINATOR_MODULE,
        logger: this.#log,
        backoff,
        startupTimeoutMs: this.#opts.startupTimeoutMs ?? Math.max(60_000, cache.originTimeoutMs + 30_000),
        listenFds: listenFds.get(cache.name),
        onRestart: (why) => {
          if (why === null) this.#restarting.delete(cache.name);
          else this.#restarting.set(cache.name, why);
          this.#notifyServing();
        },
      }));
    }
    const results = await Promise.allSettled([...this.#handles.values()].map((h) => h.start()));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await this.#shutdown('start-up failed');
      throw failed.reason;
    }
    this.#state = 'running';
    if (this.#stopRequested !== undefined) {
      await this.stop(this.#stopRequested);
      return;
    }
    const uris = this.uris();
    try {
      this.#opts.pidFile?.write();
    } catch (err) {
      await this.stop('cannot write the pidfile');
      throw err;
    }
    this.#log.info({ control: config.control, uris: uris.map((u) => u.uri), pidFile: this.#opts.pidFile?.path },
      `pcached ready: ${uris.map((u) => u.uri).join(' ')}`);
    this.#notifyServing({ READY: 1, MAINPID: process.pid });
  }

  /** STATUS= for `systemctl status`: what serves, and which coordinator is being restarted. */
  #notifyServing(extra: NotifyFields = {}): void {
    if (this.#state !== 'running') return;
    const n = this.#handles.size;
    const restarting = [...this.#restarting].map(([name, why]) => `; cache ${name} restarting (${why})`).join('');
    this.#opts.notifier?.notify({ ...extra, STATUS: `serving ${n} cache${n === 1 ? '' : 's'}: ${this.uris().map((u) => u.uri).join(' ')}${restarting}` });
  }

  /** Every URI a client can connect to, in listener order per cache (nbds… where TLS is required). */
  uris(): ServedUri[] {
    return [...this.#handles].flatMap(([name, h]) => h.listeners.flatMap((l) => {
      const plain = listenerTarget(l, name);
      const target = plain && h.cache.tls === 'require' ? { ...plain, tls: true } : plain;
      return target ? [{ cache: name, uri: formatNbdUri(target), target }] : [];
    }));
  }

  /** Graceful stop: drain every coordinator, remove the control socket. Idempotent. */
  stop(reason: string): Promise<void> {
    if (this.#state === 'new' || this.#state === 'starting') {
      // start() is still forking: it finishes its step and then stops (see #finishStart).
      this.#stopRequested ??= reason;
      return this.stopped.then(() => undefined);
    }
    this.#stopping ??= this.#shutdown(reason).then(() => this.#resolveStopped(0));
    return this.#stopping;
  }

  /** True once a stop was asked for (a second signal then kills instead). */
  get stopRequested(): boolean {
    return this.#stopping !== undefined || this.#stopRequested !== undefined;
  }

  async #shutdown(reason: string): Promise<void> {
    this.#state = 'stopping';
    this.#log.info({ reason }, 'pcached stopping: draining coordinators');
    this.#opts.notifier?.notify({ STOPPING: 1, STATUS: `draining (${reason})` });
    // Stop taking control requests first, so nobody sees a half-stopped daemon.
    await this.#control?.close();
    await this.#metrics?.close();
    const timeoutMs = this.#opts.shutdownTimeoutMs ?? 30_000;
    await Promise.all([...this.#handles.values()].map((h) => h.stop(timeoutMs)));
    this.#opts.pidFile?.remove();
    this.#state = 'stopped';
    this.#log.info('pcached stopped');
  }

  /** Installs SIGTERM/SIGINT (drain; a second one kills) and SIGHUP (reload). Returns the uninstaller. */
  installSignalHandlers(): () => void {
    let firstStopAt = 0;
    const onStop = (signal: NodeJS.Signals): void => {
      if (this.stopRequested) {
        // `timeout`, and a kill of the whole process group, deliver the same signal twice at
        // once; only a deliberate second signal (Ctrl-C again) skips the drain.
        if (Date.now() - firstStopAt < 1000) return;
        this.#log.warn({ signal }, 'second stop signal: killing coordinators now');
        for (const h of this.#handles.values()) h.kill();
        return;
      }
      firstStopAt = Date.now();
      void this.stop(signal);
    };
    const onHup = (): void => {
      this.reload().catch(() => {
        // Already logged with its reason; the old configuration stays in force.
      });
    };
    process.on('SIGTERM', onStop);
    process.on('SIGINT', onStop);
    process.on('SIGHUP', onHup);
    return () => {
      process.off('SIGTERM', onStop);
      process.off('SIGINT', onStop);
      process.off('SIGHUP', onHup);
    };
  }

  /**
   * Re-reads the config file into a new configuration, validates it strictly and applies it only
   * when every changed key is reloadable; otherwise rejects the whole reload
   * (ERR_CONFIG_RELOAD_REJECTED) and keeps running on the old one. Reloads arriving during one are
   * coalesced into one more.
   */
  reload(): Promise<ReloadResult> {
    if (this.#reloading) {
      this.#reloadAgain = true;
      return this.#reloading;
    }
    const run = async (): Promise<ReloadResult> => {
      // systemd shows the unit "reloading" until READY=1; MONOTONIC_USEC says since when.
      if (this.#state === 'running') this.#opts.notifier?.notify({ RELOADING: 1, MONOTONIC_USEC: String(process.hrtime.bigint() / 1000n) });
      try {
        let result = await this.#reloadOnce();
        while (this.#reloadAgain) {
          this.#reloadAgain = false;
          result = await this.#reloadOnce();
        }
        return result;
      } finally {
        this.#reloading = undefined;
        this.#notifyServing({ READY: 1 });
      }
    };
    this.#reloading = run();
    return this.#reloading;
  }

  async #reloadOnce(): Promise<ReloadResult> {
    const current = this.#loaded;
    if (current.configFile === undefined) {
      this.#log.info('reload: pcached runs without a config file (flags and environment only); nothing to reload');
      return { reloaded: false, changed: [], failed: [] };
    }
    if (this.#state !== 'running') {
      throw this.#rejectReload(`the daemon is ${this.#state}`, []);
    }
    let next: LoadedConfig;
    try {
      next = loadConfig(current.source);
    } catch (err) {
      throw this.#rejectReload((err as Error).message, []);
    }
    const diff = diffConfig(current.config, next.config);
    if (!diff.reloadable) {
      throw this.#rejectReload(`${diff.rejected.join(', ')} cannot change without a restart`, diff.rejected);
    }
    if (diff.changed.length === 0) {
      this.#log.info({ configFile: current.configFile }, 'reload: configuration unchanged');
      this.#loaded = next;
      return { reloaded: true, changed: [], failed: [] };
    }
    const logLevelChanged = current.config.logLevel !== next.config.logLevel;
    if (logLevelChanged) this.#log.level = next.config.logLevel;
    const targets = logLevelChanged ? next.config.caches.map((c) => c.name) : diff.changedCaches;
    const timeoutMs = this.#opts.reconfigureTimeoutMs ?? 10_000;
    const failed: ReloadResult['failed'] = [];
    await Promise.all(targets.map(async (name) => {
      const handle = this.#handles.get(name);
      const cache = next.config.caches.find((c) => c.name === name);
      if (!handle || !cache) return;
      try {
        await handle.reconfigure(cache, next.config.logLevel, timeoutMs);
      } catch (err) {
        failed.push({ name, message: (err as Error).message });
      }
    }));
    // Unchanged caches keep their objects; changed ones were handed over above.
    this.#loaded = next;
    if (failed.length) this.#log.error({ failed }, 'reload: some coordinators did not take the new settings (they get them when they restart)');
    this.#log.info({ changed: diff.changed, overriddenByFlagsOrEnv: next.overrides }, 'configuration reloaded');
    return { reloaded: true, changed: diff.changed, failed };
  }

  #rejectReload(why: string, keys: string[]): PcachedError {
    const err = new PcachedError('ERR_CONFIG_RELOAD_REJECTED', `reload rejected, still running the previous configuration: ${why}`);
    this.#log.error({ code: err.code, keys, configFile: this.#loaded.configFile }, err.message);
    return err;
  }

  /** Every cache's status (or one cache's); a coordinator that is restarting says so. */
  async status(name?: string): Promise<CacheStatus[]> {
    const handles = name === undefined ? [...this.#handles.values()] : [this.#handle(name)];
    const timeoutMs = this.#opts.statusTimeoutMs ?? 2000;
    return Promise.all(handles.map((h) => h.status(timeoutMs)));
  }

  /**
   * `pcached table NAME`: the coordinator's running tunables, with `config` told apart into the
   * config file, a flag, the environment or the default.
   */
  async table(name: string): Promise<{ name: string; tunables: (Omit<TableRow, 'source'> & { source: string })[] }> {
    const rows = (await this.#handle(name).request({ op: 'table' }, this.#opts.statusTimeoutMs ?? 2000)) as TableRow[];
    const sources = this.#loaded.keySources[name] ?? {};
    return { name, tunables: rows.map((r) => (r.source === 'config' ? { ...r, source: sources[r.key] ?? 'default' } : r)) };
  }

  /** Forwards `pcached message NAME words...` to that cache's coordinator. */
  message(name: string, words: string[]): Promise<unknown> {
    return this.#handle(name).request({ op: 'message', words }, this.#opts.messageTimeoutMs ?? 300_000);
  }

  #handle(name: string): CoordinatorHandle {
    const h = this.#handles.get(name);
    if (!h) {
      const known = [...this.#handles.keys()].map((n) => JSON.stringify(n)).join(', ');
      throw new PcachedError('ERR_UNKNOWN_CACHE', `no cache named ${JSON.stringify(name)} (caches: ${known || 'none'})`);
    }
    return h;
  }

  async #handleControl(request: ControlRequest): Promise<unknown> {
    switch (request.op) {
      case 'ping':
        return { pid: process.pid, uptimeSec: Math.floor((Date.now() - this.#startedAt) / 1000), state: this.#state, caches: [...this.#handles.keys()] };
      case 'status':
        return { caches: await this.status(request.name) };
      case 'table':
        return this.table(request.name);
      case 'message':
        return this.message(request.name, request.words);
      case 'reload':
        return this.reload();
    }
  }
}
