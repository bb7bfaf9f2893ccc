// One cache instance: its origin, its stripe workers, its NBD listeners and sessions, and the
// control operations the supervisor forwards (status, message, reconfigure, shutdown).

import { createServer, type Server, type Socket } from 'node:net';
import { availableParallelism } from 'node:os';
import type { Logger } from 'pino';
import { CACHE_MODES, type CacheConfig, type CacheMode } from '../config/types.js';
import type { CacheStatus, InheritedListeners } from '../daemon/ipc.js';
import { claimUnixSocketPath, listenUnixSocket, type SocketAccess } from '../util/unix-socket.js';
import { resolveGroup } from '../util/group.js';
import { loadTlsCredentials, type TlsCredentials } from '../tls/credentials.js';
import { PcachedError } from '../util/errors.js';
import { originSpecFor, probeOrigin, type OriginFacts } from '../origin/open.js';
import { isUri } from '../nbd/uri.js';
import { CounterBlock, COORDINATOR_COUNTERS, type CoordinatorCounter } from '../stats/counters.js';
import { StripeSet } from './stripes.js';
import { Session, type SessionContext } from './session.js';
import { FlowBudget } from './flow.js';
import { FLOW_LIMIT } from './limits.js';
import type { ExportInfo } from './negotiate.js';
import { StripeOp } from '../ring/layout.js';
import type { StripeWork } from './stripe-ring.js';
import { Errno, errnoName } from '../util/errno.js';
import { unlinkSync } from 'node:fs';
import { CacheRuntime, type WritecacheStatus } from './cache-runtime.js';
import { promotionHits } from '../config/tunable-descriptors.js';
import { FAULT_READS, FAULT_WRITES } from '../cache/shared.js';
import { SequentialDetector } from './sequential.js';
import type { HitReader } from './hit-reader.js';
import type { DirectHits } from './direct-hits.js';
import { releaseDevice } from './ownership.js';
import { basename } from 'node:path';
import { CACHE_ONLY_MESSAGES, RuntimeTunables, TUNABLE_MESSAGES, type TableRow } from './tunables.js';
import { conditionOf, listenHint, rateTotals, StatusRates } from './status-parts.js';

const RING_CAPACITY = 1024;
const SHUTDOWN_DRAIN_MS = 30_000;

/**
 * Latency at queue depth 1-2 is dominated by cross-thread wake-ups (on a VM, waking a thread on
 * a halted vCPU costs tens of microseconds). The stripe may then busy-poll for the next request
 * (up to spinNs, adaptively) and the coordinator polls for the completion (at least pollNs, and
 * about as long as completions recently took up to pollMaxNs: poll-budget.ts); at higher
 * depth both sleep between batches. At most maxSpinners stripes poll at once, leaving cores to
 * the client and the coordinator. PCACHED_SPIN_NS / PCACHED_POLL_NS / PCACHED_POLL_MAX_NS override
 * (0 = off).
 */
function envNs(name: string, fallback: number): number {
  const v = Number(process.env[name]);
  return process.env[name] !== undefined && Number.isFinite(v) && v >= 0 ? v : fallback;
}
const spinNs = (): number => envNs('PCACHED_SPIN_NS', 200_000);
const pollNs = (): number => envNs('PCACHED_POLL_NS', 30_000);
const pollMaxNs = (): number => envNs('PCACHED_POLL_MAX_NS', 250_000);
const maxSpinners = (): number => Math.max(1, availableParallelism() - 2);

/** What clients see as the export description: the configured text, or where the data comes from. */
function describe(cache: CacheConfig): string {
  if (cache.description) return cache.description;
  const origin = isUri(cache.origin) ? cache.origin.replace(/\?.*$/, '') : basename(cache.origin);
  return `pcached ${cache.mode} cache of ${origin}`;
}

export function parseHostPort(spec: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(spec);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new PcachedError('ERR_BAD_ARGUMENT', `invalid TCP address "${spec}": expected HOST:PORT`);
  return { host: (m[1] ?? m[2])!, port };
}

/** flush_on_suspend waits this long for writeback at a stop (the supervisor's own stop timeout is 30 s). */
const FLUSH_ON_SUSPEND_MS = 25_000;

export class Coordinator {
  readonly #log: Logger;
  readonly #tunables: RuntimeTunables;
  readonly #facts: OriginFacts;
  readonly #stripes: StripeSet;
  /** The cache (null once detached: the stripes then serve from the origin). */
  #cacheRt: CacheRuntime | null;
  #detached = false;
  readonly #sequential: SequentialDetector | null;
  /** Read hits served on this thread (hit-reader.ts); their counts go to the owning stripe's counters once per turn. */
  readonly #hits: HitReader | null;
  readonly #directHits: DirectHits | null;
  readonly #hitCounts: { hits: number; origin: number; originBytes: number; reads: number }[];
  #hitsPublish = false;
  readonly counters: CounterBlock<CoordinatorCounter>;
  readonly #servers: Server[] = [];
  readonly #listeners: string[] = [];
  readonly #sessions = new Set<Session>();
  readonly #exp: ExportInfo;
  /** Read at start (a reload cannot change the TLS keys). */
  readonly #tls: TlsCredentials | null;
  readonly #flow = new FlowBudget(FLOW_LIMIT);
  readonly #failures = { lastLogged: 0, suppressed: 0 };
  readonly #started = Date.now();
  #nextSession = 1;
  #state: 'running' | 'draining' | 'stopped' = 'running';
  #shutdown: Promise<void> | null = null;
  readonly #rates: StatusRates;
  /** `message NAME flush_on_suspend`: the next stop writes everything back first. */
  #flushOnSuspend = false;
  /** We created the Unix socket file (an activated one belongs to systemd and stays). */
  #ownsSocketFile = false;

  private constructor(tunables: RuntimeTunables, facts: OriginFacts, stripes: StripeSet, cacheRt: CacheRuntime | null, log: Logger) {
    this.#tunables = tunables;
    const cache = tunables.running;
    this.#facts = facts;
    this.#stripes = stripes;
    this.#cacheRt = cacheRt;
    this.#sequential = cacheRt ? new SequentialDetector(cache.sequentialCutoff) : null;
    this.#hitCounts = stripes.rings.map(() => ({ hits: 0, origin: 0, originBytes: 0, reads: 0 }));
    this.#hits = cacheRt ? cacheRt.hitReader(originSpecFor(cache), (stripe, blocks, hit, bytes) => this.#countHit(stripe, blocks, hit, bytes)) : null;
    this.#directHits = cacheRt ? cacheRt.directHits((stripe, blocks) => this.#countHit(stripe, blocks, true, 0)) : null;
    this.#log = log;
    this.counters = new CounterBlock(COORDINATOR_COUNTERS);
    this.#exp = { name: cache.name, description: describe(cache), size: facts.size, readOnly: cache.readOnly || facts.readOnly };
    this.#tls = loadTlsCredentials(cache);
    if (this.#tls) log.info({ tls: cache.tls, credentials: this.#tls.kind, from: this.#tls.source, verifyPeer: cache.tlsVerifyPeer }, 'TLS ready');
    if (cacheRt) {
      this.#wbRate.timer = setInterval(() => this.#sampleWritebackRate(), 1000);
      this.#wbRate.timer.unref();
    }
    this.#rates = new StatusRates(() => rateTotals(this.counters.snapshot() as Record<string, number>,
      this.#stripes.rings.map((r) => r.counters.snapshot() as Record<string, number>), this.#cacheRt?.counters.get('wb_bytes') ?? 0));
  }

  #countHit(stripe: number, blocks: number, hit: boolean, bytes: number): void {
    const k = this.#hitCounts[stripe]!;
    k.reads += blocks;
    if (hit) k.hits += blocks;
    else { k.origin++; k.originBytes += bytes; }
    if (this.#hitsPublish) return;
    this.#hitsPublish = true;
    setImmediate(() => {
      this.#hitsPublish = false;
      for (const [s, k] of this.#hitCounts.entries()) {
        if (k.reads === 0) continue;
        const c = this.#stripes.rings[s]!.counters;
        c.add('read_blocks', k.reads);
        if (k.hits) c.add('read_hits', k.hits);
        if (k.origin) { c.add('origin_reads', k.origin); c.add('origin_read_bytes', k.originBytes); }
        k.reads = k.hits = k.origin = k.originBytes = 0;
      }
    });
  }

  /** The running config: the configured one with what messages changed (./tunables.ts). */
  get #cache(): CacheConfig {
    return this.#tunables.running;
  }

  /**
   * `overrides`: values set by message before a restart (the supervisor kept them; ./tunables.ts).
   * `listenFds`: socket-activated listeners (docs/service.md).
   */
  static async start(configured: CacheConfig, log: Logger, logLevel: string, overrides: Record<string, unknown> = {}, listenFds: InheritedListeners = {}): Promise<Coordinator> {
    const tunables = new RuntimeTunables(configured, overrides);
    const cache = tunables.running;
    if (Object.keys(overrides).length) log.info({ overrides }, 'values set by message before the restart are kept');
    const spec = originSpecFor(cache);
    let facts: OriginFacts;
    try {
      facts = await probeOrigin(spec);
    } catch (err) {
      throw new PcachedError('ERR_ORIGIN', `cannot open origin ${cache.origin}: ${(err as Error).message}`, { cause: err });
    }
    log.info({ origin: facts.description, size: facts.size, readOnly: facts.readOnly }, 'origin opened');
    const cacheRt = await CacheRuntime.open(cache, facts.size, cache.stripes, spec, log, logLevel);
    let stripes: StripeSet;
    try {
      stripes = await StripeSet.start({
        stripes: cache.stripes, capacity: RING_CAPACITY, slabBytes: cache.slabSize, origin: spec, spinNs: spinNs(), pollNs: pollNs(), pollMaxNs: pollMaxNs(), maxSpinners: maxSpinners(), logLevel, log,
        cacheData: cacheRt ? (i) => cacheRt.stripeData(i) : undefined,
        onStripeDied: cacheRt ? (i) => cacheRt.stripeDied(i) : undefined,
      });
    } catch (err) {
      await cacheRt?.close();
      throw err;
    }
    const c = new Coordinator(tunables, facts, stripes, cacheRt, log);
    try {
      await c.#listen(listenFds);
    } catch (err) {
      await c.shutdown();
      throw err;
    }
    return c;
  }

  get listeners(): string[] {
    return [...this.#listeners];
  }

  get originSize(): number {
    return this.#facts.size;
  }

  /** A socket-activated listener replaces the configured one of its kind. */
  async #listen(inherited: InheritedListeners): Promise<void> {
    const { unix, tcp } = this.#cache;
    if (inherited.unix !== undefined) {
      await this.#serve({ fd: inherited.unix.fd }, `unix:${inherited.unix.address}`, false);
    } else if (unix) {
      await claimUnixSocketPath(unix);
      await this.#serve({ path: unix, access: { mode: this.#cache.unixMode, gid: resolveGroup(this.#cache.unixGroup, 'unixGroup') } }, `unix:${unix}`, false);
      this.#ownsSocketFile = true;
    }
    if (inherited.tcp !== undefined) {
      await this.#serve({ fd: inherited.tcp.fd }, `tcp:${inherited.tcp.address}`, true);
    } else if (tcp) {
      const { host, port } = parseHostPort(tcp);
      await this.#serve({ host, port }, `tcp:${tcp}`, true);
    }
  }

  #serve(addr: { path: string; access: SocketAccess } | { host: string; port: number } | { fd: number }, label: string, isTcp: boolean): Promise<void> {
    const server = createServer({ noDelay: true, pauseOnConnect: false }, (sock) => this.#accept(sock, isTcp));
    return new Promise((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => reject(new PcachedError('ERR_LISTEN', `cannot listen on ${label}: ${err.message}${listenHint(err, isTcp)}`, { cause: err })));
      const listening = (): void => {
        server.removeAllListeners('error');
        server.on('error', (err) => this.#log.error({ err, listener: label }, 'listener error'));
        this.#servers.push(server);
        const a = server.address();
        const listener = typeof a === 'object' && a !== null ? `tcp:${a.address.includes(':') ? `[${a.address}]` : a.address}:${a.port}` : label;
        this.#listeners.push(listener);
        this.#log.info({ listener, ...('fd' in addr ? { activatedFd: addr.fd } : {}), ...(this.#tls ? { tls: this.#cache.tls } : {}) }, 'listening');
        resolve();
      };
      const failed = (err: Error): void => reject(err instanceof PcachedError ? err : new PcachedError('ERR_LISTEN', `cannot listen on ${label}: ${err.message}`, { cause: err }));
      if ('path' in addr) listenUnixSocket(server, addr.path, addr.access).then(listening, failed);
      else server.listen(addr, listening);
    });
  }

  #accept(sock: Socket, tcp: boolean): void {
    const c = this.counters;
    if (this.#state !== 'running' || this.#sessions.size >= this.#cache.maxConnections) {
      c.add('connections_refused', 1);
      sock.destroy();
      return;
    }
    if (tcp) sock.setNoDelay(true);
    c.add('connections_total', 1);
    c.add('connections_open', 1);
    const ctx: SessionContext = {
      exp: this.#exp, tls: this.#cache.tls, tlsCredentials: this.#tls, stripes: this.#stripes, counters: c, flow: this.#flow, log: this.#log, failures: this.#failures, sequential: this.#sequential, hits: this.#hits, directHits: this.#directHits,
      closed: (s) => {
        if (this.#sessions.delete(s)) c.add('connections_open', -1);
      },
    };
    this.#sessions.add(new Session(this.#nextSession++, sock, ctx));
  }

  /**
   * Make every completed write durable: in write-back mode every stripe commits its keys and the
   * cache is synced (the origin is the writeback worker's business); in pass-through, the origin
   * is flushed (message flush, shutdown).
   */
  flushAll(): Promise<void> {
    return new Promise((resolve, reject) => {
      let remaining = this.#stripes.count;
      let firstErr = 0;
      const onDone = (_w: StripeWork, errno: number): void => {
        if (errno !== 0 && firstErr === 0) firstErr = errno;
        if (--remaining === 0) {
          if (firstErr === 0) resolve();
          else reject(new PcachedError(this.#cacheRt ? 'ERR_CACHE_FILE' : 'ERR_ORIGIN', `${this.#cacheRt ? 'cache' : 'origin'} flush failed: ${errnoName(firstErr)}`));
        }
      };
      for (let s = 0; s < this.#stripes.count; s++) {
        this.#stripes.submit({ op: StripeOp.FLUSH, flags: 0, offset: 0, length: 0, slabBytes: 0, payload: null, onDone, slabOff: 0, ring: null }, s);
      }
    });
  }

  status(restarts = 0): CacheStatus {
    const stats: Record<string, number> = this.counters.snapshot();
    const stripeStats = this.#stripes.rings.map((r) => r.counters.snapshot() as Record<string, number>);
    const cacheState = this.#cacheRt ? this.#cacheState(stripeStats) : undefined;
    return {
      name: this.#cache.name,
      mode: this.#cache.mode,
      state: this.#state,
      pid: process.pid,
      origin: this.#facts.description,
      originSize: this.#facts.size,
      cache: this.#cache.cache,
      readOnly: this.#exp.readOnly,
      listeners: this.listeners,
      connections: this.#sessions.size,
      stripes: this.#stripes.count,
      uptimeSec: Math.round((Date.now() - this.#started) / 1000),
      restarts,
      stripeRestarts: this.#stripes.restarts,
      lowDepthPoll: this.#stripes.lowDepthPoll,
      stats,
      stripeStats,
      ...(this.#detached ? { detached: true } : {}),
      ...(cacheState ? { cacheState } : {}),
      condition: this.#detached ? 'detached' : cacheState ? conditionOf(cacheState) : this.#state,
      rates: this.#rates.status(),
    };
  }

  /** The values messages set, which the supervisor keeps for a restart. */
  overrides(): Record<string, unknown> {
    return this.#tunables.overrides();
  }

  /** `pcached table NAME`: every running tunable and where its value came from. */
  table(): TableRow[] {
    const rows = this.#tunables.rows();
    const sh = this.#cacheRt?.shared;
    // gc_percent and the cleaner live in the cache engine too (stored gc_percent, detach's cleaner).
    for (const r of rows) {
      if (r.key === 'gcPercent' && sh && sh.gcPercent !== r.value) Object.assign(r, { value: sh.gcPercent, shown: `${sh.gcPercent} %`, source: 'cache file' });
    }
    return rows;
  }

  #cacheState(stripeStats: Record<string, number>[]): NonNullable<CacheStatus['cacheState']> {
    const sum = (k: string): number => stripeStats.reduce((a, s) => a + (s[k] ?? 0), 0);
    const st = this.#cacheRt!.status();
    const readBlocks = sum('read_blocks');
    const readHits = sum('read_hits');
    const writecache: WritecacheStatus = {
      error: st.errors.length > 0 ? -Errno.EIO : 0,
      blocks: st.blocks,
      freeBlocks: st.freeBlocks,
      blocksUnderWriteback: st.workers.wb_inflight_blocks ?? 0,
      readBlocks,
      readHits,
      writeBlocks: sum('write_blocks'),
      writeHitsUncommitted: sum('write_hits_uncommitted'),
      writeHitsCommitted: sum('write_hits_committed'),
      writeBypass: sum('write_bypass'),
      writeAllocations: sum('write_allocs'),
      writesBlockedOnFreelist: sum('write_blocked'),
      flushes: this.counters.get('reqs_flush'),
      discards: sum('discards'),
      mode: this.#cache.mode,
      dirtyBlocks: st.dirtyBlocks,
      keyHead: st.keyHead,
      dirtyTail: st.dirtyTail,
      keyTail: st.keyTail,
      segmentsUsed: st.segmentsUsed,
      gcPercent: st.gcPercent,
      epochsPending: st.epochsPending,
      writebackBytesPerSec: Math.round(this.#wbRate.rate),
      hitRatio: readBlocks > 0 ? Math.round((readHits / readBlocks) * 1000) / 1000 : 0,
    };
    return {
      ...st,
      readBlocks, readHits, writeBlocks: sum('write_blocks'),
      writeBypass: sum('write_bypass'), writeBlocked: sum('write_blocked'), flushes: sum('cache_flushes'), discards: sum('discards'),
      fills: sum('fills'), crcErrors: sum('crc_errors'), cacheErrors: sum('cache_errors'),
      writecache,
    };
  }

  /** Writeback bytes per second, sampled once a second from the workers' counter (smoothed over a few seconds). */
  readonly #wbRate = { bytes: 0, at: 0, rate: 0, timer: null as NodeJS.Timeout | null };

  #sampleWritebackRate(): void {
    const rt = this.#cacheRt;
    if (!rt) return;
    const now = performance.now();
    const bytes = rt.counters.get('wb_bytes');
    const r = this.#wbRate;
    if (r.at > 0 && now > r.at) {
      const inst = Math.max(0, bytes - r.bytes) / ((now - r.at) / 1000);
      r.rate = r.rate === 0 ? inst : r.rate * 0.5 + inst * 0.5;
    }
    r.bytes = bytes;
    r.at = now;
  }

  async message(words: string[]): Promise<unknown> {
    const [verb, ...args] = words;
    if (this.#detached && verb !== undefined && CACHE_ONLY_MESSAGES.has(verb)) {
      throw new PcachedError('ERR_BAD_ARGUMENT', `cache ${this.#cache.name} is detached (served from its origin until the next start; nothing is dirty): ${verb} has nothing to act on; restart pcached to attach the cache again`);
    }
    switch (verb) {
      case 'flush':
        if (args.length) throw new PcachedError('ERR_BAD_ARGUMENT', 'flush takes no arguments');
        await this.flushAll();
        return { flushed: true };
      case 'debug_crash_stripe': {
        if (process.env.PCACHED_TEST_HOOKS !== '1') break;
        const n = Number(args[0]);
        if (!Number.isInteger(n) || n < 0 || n >= this.#stripes.count) throw new PcachedError('ERR_BAD_ARGUMENT', `no stripe ${args[0] ?? ''}`);
        await this.#stripes.crashStripe(n);
        return { crashed: n };
      }
      case 'debug_cache_faults': {
        if (process.env.PCACHED_TEST_HOOKS !== '1' || !this.#cacheRt) break;
        const bits = { off: 0, reads: FAULT_READS, writes: FAULT_WRITES, all: FAULT_READS | FAULT_WRITES }[args[0] ?? ''];
        if (bits === undefined || args.length !== 1) throw new PcachedError('ERR_BAD_ARGUMENT', 'usage: debug_cache_faults off|reads|writes|all');
        this.#cacheRt.shared.setTestFaults(bits);
        return { cacheFaults: args[0] };
      }
      case 'clear_stats':
        if (args.length) throw new PcachedError('ERR_BAD_ARGUMENT', 'clear_stats takes no arguments');
        this.counters.clear();
        for (const r of this.#stripes.rings) r.counters.clear();
        this.#cacheRt?.counters.clear();
        this.#rates.reset();
        return { cleared: true };
      case 'mode': {
        if (!this.#cacheRt) break;
        if (args.length !== 1 || !(CACHE_MODES as readonly string[]).includes(args[0]!)) {
          throw new PcachedError('ERR_BAD_ARGUMENT', `usage: mode M (one of ${CACHE_MODES.join(', ')})`);
        }
        const from = this.#cache.mode;
        this.#setMode(args[0] as CacheMode);
        return { mode: args[0], from, dirtyBlocks: this.#cacheRt.status().dirtyBlocks };
      }
      case 'cleaner': {
        if (!this.#cacheRt) break;
        if (args.length > 1 || (args.length === 1 && args[0] !== 'on' && args[0] !== 'off')) {
          throw new PcachedError('ERR_BAD_ARGUMENT', 'usage: cleaner [on|off]');
        }
        const on = args[0] !== 'off';
        this.#tunables.set('cleaner', on);
        this.#cacheRt.applyTunables(this.#cache);
        this.#log.info({ cleaner: on, dirtyBlocks: this.#cacheRt.status().dirtyBlocks }, on ? 'cleaner on: writes go to the origin, everything is written back' : 'cleaner off');
        return { cleaner: on, dirtyBlocks: this.#cacheRt.status().dirtyBlocks };
      }
      case 'promotion': {
        if (!this.#cacheRt) break;
        const n = args.length === 1 ? promotionHits(args[0]!) : null;
        if (n === null) throw new PcachedError('ERR_BAD_ARGUMENT', 'usage: promotion always|nhit:N (N 2-16)');
        this.#tunables.set('promotion', args[0]);
        this.#cacheRt.applyTunables(this.#cache);
        return { promotion: args[0] };
      }
      case 'detach':
        if (args.length) throw new PcachedError('ERR_BAD_ARGUMENT', 'detach takes no arguments');
        return this.#detach();
      case 'flush_on_suspend':
        if (!this.#cacheRt) break;
        if (args.length) throw new PcachedError('ERR_BAD_ARGUMENT', 'flush_on_suspend takes no arguments');
        this.#tunables.flushOnSuspend = true;
        return { flushOnSuspend: true };
      case 'gc_percent': {
        if (!this.#cacheRt) throw new PcachedError('ERR_BAD_ARGUMENT', `gc_percent needs a cache; this one runs in ${this.#cache.mode} mode`);
        if (args.length !== 1 || !/^\d+$/.test(args[0]!)) throw new PcachedError('ERR_BAD_ARGUMENT', 'usage: gc_percent N (an integer 0-90)');
        this.#cacheRt.setGcPercent(Number(args[0]));
        this.#tunables.set('gcPercent', Number(args[0]));
        return { gcPercent: Number(args[0]) };
      }
    }
    if (this.#cacheRt && verb !== undefined && Object.hasOwn(TUNABLE_MESSAGES, verb)) {
      const [key, min, max, configKey] = TUNABLE_MESSAGES[verb]!;
      if (args.length !== 1 || !/^\d+$/.test(args[0]!) || Number(args[0]) < min || Number(args[0]) > max) {
        throw new PcachedError('ERR_BAD_ARGUMENT', `usage: ${verb} N (an integer ${min}-${max})`);
      }
      const n = Number(args[0]);
      const sh = this.#cacheRt.shared;
      if (key === 'lowWatermark' && n > sh.highWatermark) throw new PcachedError('ERR_BAD_ARGUMENT', `low_watermark ${n} is above high_watermark ${sh.highWatermark}`);
      if (key === 'highWatermark' && n < sh.lowWatermark) throw new PcachedError('ERR_BAD_ARGUMENT', `high_watermark ${n} is below low_watermark ${sh.lowWatermark}`);
      this.#tunables.set(configKey, n);
      this.#cacheRt.applyTunables(this.#cache);
      return { [key]: n };
    }
    const known = this.#cacheRt
      ? `flush, clear_stats, mode M, gc_percent N, cleaner [on|off], flush_on_suspend, promotion always|nhit:N, ${Object.keys(TUNABLE_MESSAGES).map((k) => `${k} N`).join(', ')}`
      : 'flush, clear_stats';
    throw new PcachedError('ERR_UNKNOWN_MESSAGE', `unknown message ${JSON.stringify(verb ?? '')}; this cache understands: ${known}`);
  }

  /**
   * Online mode switch: the stripes read the mode word per request. Leaving write-back keeps every
   * dirty block served from the cache until writeback has drained it (status shows the drain).
   */
  #setMode(mode: CacheMode): void {
    if (mode === this.#cache.mode) return;
    this.#log.info({ from: this.#cache.mode, to: mode, dirtyBlocks: this.#cacheRt?.status().dirtyBlocks }, 'cache mode switched');
    this.#cacheRt?.setMode(mode);
    this.#tunables.set('mode', mode);
    this.#exp.description = describe(this.#cache);
  }

  /**
   * `pcached detach NAME` (after `clean`): release the cache file and keep serving from the origin.
   * Refused while anything is dirty. The cleaner goes on first, so no write can make new dirty
   * data meanwhile; then the stripes let go of their engines (finishing what is in motion), the
   * writeback and GC threads stop, the cache info is marked "detached clean", the file closed and
   * its lock released: it can be deleted, reused, or attached again (the next start formats it afresh).
   */
  async #detach(): Promise<unknown> {
    const rt = this.#cacheRt;
    if (!rt) throw new PcachedError('ERR_BAD_ARGUMENT', `cache ${this.#cache.name} is already detached`);
    this.#tunables.set('cleaner', true);
    rt.applyTunables(this.#cache);
    const dirty = rt.status().dirtyBlocks;
    if (dirty > 0) {
      throw new PcachedError('ERR_BAD_ARGUMENT', `${dirty} blocks are still dirty; the cleaner is on now: write them back first (pcached clean ${this.#cache.name}; pcached detach ${this.#cache.name} does both)`);
    }
    // From here on writes may reach the origin without the index: no hit is served from it.
    this.#hits?.disable();
    this.#directHits?.disable();
    rt.shared.markDetached();
    await this.#stripes.detachCache();
    await rt.stopWorkers();
    rt.markDetached();
    await rt.close();
    // Nothing of this process touches the file any more: others may have it now.
    releaseDevice('cache');
    this.#cacheRt = null;
    this.#detached = true;
    if (this.#wbRate.timer) clearInterval(this.#wbRate.timer);
    this.#tunables.set('mode', 'passthrough', 'detach');
    this.#tunables.set('cleaner', true, 'detach');
    this.#exp.description = describe(this.#cache);
    this.#log.info({ cacheFile: this.#cache.cache }, 'cache detached: serving from the origin; the cache file is released');
    return { detached: true, cache: this.#cache.cache };
  }

  /** Cleaner on, then wait (at most `limitMs`) until nothing is dirty; true when it got there. */
  async #writeBackAll(limitMs: number): Promise<boolean> {
    const rt = this.#cacheRt!;
    rt.shared.setTunables({ cleaner: true });
    const t0 = Date.now();
    this.#log.info({ dirtyBlocks: rt.status().dirtyBlocks }, 'flush_on_suspend: writing everything back before stopping');
    while (rt.status().dirtyBlocks > 0) {
      if (Date.now() - t0 > limitMs) {
        this.#log.warn({ dirtyBlocks: rt.status().dirtyBlocks, ms: Date.now() - t0 }, 'flush_on_suspend: gave up waiting; the rest stays dirty in the cache');
        return false;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    this.#log.info({ ms: Date.now() - t0 }, 'flush_on_suspend: everything written back');
    return true;
  }

  /**
   * Apply the reloadable keys; the supervisor has already refused anything else. Only keys whose
   * configured value changed are applied: one a message set otherwise keeps its value (./tunables.ts).
   */
  reconfigure(next: CacheConfig): string[] {
    const { before, after } = this.#tunables.reload(next);
    const changed: string[] = [];
    if (after.mode !== before.mode) {
      this.#cacheRt?.setMode(after.mode);
      this.#log.info({ from: before.mode, to: after.mode }, 'cache mode switched by reload');
      changed.push('mode');
    }
    if (after.description !== before.description || after.mode !== before.mode) {
      this.#exp.description = describe(after);
      if (after.description !== before.description) changed.push('description');
    }
    if (after.maxConnections !== before.maxConnections) changed.push('maxConnections');
    if (after.originTimeoutMs !== before.originTimeoutMs) changed.push('originTimeoutMs (applies to new origin connections)');
    if (this.#cacheRt) {
      changed.push(...this.#cacheRt.reconfigure(before, after));
      if (after.sequentialCutoff !== before.sequentialCutoff) {
        this.#sequential!.cutoff = after.sequentialCutoff;
        changed.push('sequentialCutoff');
      }
    }
    return changed;
  }

  /**
   * Stop accepting, let in-flight requests finish (at most `drainMs`), commit and sync, stop the
   * stripes. `prompt` (an orphan) skips flush_on_suspend's wait for writeback.
   */
  shutdown(opts: { drainMs?: number; prompt?: boolean } = {}): Promise<void> {
    this.#shutdown ??= this.#shutdownOnce(opts.drainMs ?? SHUTDOWN_DRAIN_MS, opts.prompt === true);
    return this.#shutdown;
  }

  /** Ends the drain of a shutdown (under way or to come) at the latest `ms` from now. */
  hurry(ms: number): void {
    this.#drainDeadline = Math.min(this.#drainDeadline, Date.now() + ms);
    this.#rearmDrain?.();
  }

  #drainDeadline = Infinity;
  #rearmDrain: (() => void) | null = null;

  async #shutdownOnce(drainMs: number, prompt: boolean): Promise<void> {
    this.#state = 'draining';
    if (this.#wbRate.timer) clearInterval(this.#wbRate.timer);
    this.#rates.stop();
    // close() only calls back once every connection has ended: start it, drain, then wait.
    const closed = Promise.all(this.#servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    // Only a socket file we created is ours to remove (a refused start must not delete a live daemon's).
    if (this.#ownsSocketFile) {
      try { unlinkSync(this.#cache.unix); } catch { /* already gone */ }
    }
    const drained = Promise.all([...this.#sessions].map((s) => s.drain()));
    let timer: NodeJS.Timeout | undefined;
    this.#drainDeadline = Math.min(this.#drainDeadline, Date.now() + drainMs);
    const timedOut = new Promise<'timeout'>((r) => {
      this.#rearmDrain = () => {
        clearTimeout(timer);
        timer = setTimeout(() => r('timeout'), Math.max(0, this.#drainDeadline - Date.now()));
      };
      this.#rearmDrain();
    });
    if ((await Promise.race([drained, timedOut])) === 'timeout') {
      this.#log.warn({ sessions: this.#sessions.size }, 'shutdown: requests still in flight after the drain timeout; dropping those connections');
      for (const s of this.#sessions) s.destroy();
    }
    clearTimeout(timer);
    this.#rearmDrain = null;
    await closed;
    try {
      if (!this.#exp.readOnly || this.#cacheRt) await this.flushAll();
    } catch (err) {
      this.#log.error({ err }, 'shutdown: flush failed');
    }
    if (this.#tunables.flushOnSuspend && this.#cacheRt && !prompt) await this.#writeBackAll(FLUSH_ON_SUSPEND_MS);
    // Writeback stops after its batch: dirty data stays in the cache and is replayed next start.
    await this.#cacheRt?.stopWorkers();
    await this.#stripes.close();
    await this.#cacheRt?.close();
    this.#state = 'stopped';
  }
}
