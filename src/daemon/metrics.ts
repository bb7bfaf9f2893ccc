// Prometheus metrics (`metrics.listen`): one HTTP endpoint per host, in the supervisor. At each
// scrape every coordinator is asked for its status (the same SharedArrayBuffer counters
// `pcached status` reads, no thread stopped) and the metrics below are filled from it; the
// supervisor's own process metrics come from prom-client's defaults.

import { createServer, type Server } from 'node:http';
import type { Logger } from 'pino';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { CacheStatus } from './ipc.js';

type Snapshot = CacheStatus[];
type Pick = (c: CacheStatus) => number | undefined;

const COMMANDS = ['read', 'write', 'flush', 'trim', 'cache', 'write_zeroes', 'block_status'] as const;

/** [name, help, value]: counters (monotonic since start or clear_stats). */
const COUNTERS: [string, string, Pick][] = [
  ['read_blocks_total', 'Blocks (4 KiB) read through the cache', (c) => c.cacheState?.readBlocks],
  ['read_hits_total', 'Blocks read from the cache', (c) => c.cacheState?.readHits],
  ['write_blocks_total', 'Blocks written through the cache', (c) => c.cacheState?.writeBlocks],
  ['write_hits_uncommitted_total', 'Written blocks that replaced a copy not yet committed', (c) => c.cacheState?.writecache?.writeHitsUncommitted],
  ['write_hits_committed_total', 'Written blocks that replaced a committed copy', (c) => c.cacheState?.writecache?.writeHitsCommitted],
  ['write_bypass_total', 'Writes sent around a full cache to the origin', (c) => c.cacheState?.writeBypass],
  ['write_allocations_total', 'Blocks allocated in the cache for writes', (c) => c.cacheState?.writecache?.writeAllocations],
  ['writes_blocked_total', 'Writes that waited for free cache space', (c) => c.cacheState?.writeBlocked],
  ['discard_blocks_total', 'Blocks trimmed', (c) => c.cacheState?.discards],
  ['fills_total', 'Read misses promoted into the cache', (c) => c.cacheState?.fills],
  ['crc_errors_total', 'Cache reads that failed their data CRC', (c) => c.cacheState?.crcErrors],
  ['cache_errors_total', 'Cache device I/O errors', (c) => c.cacheState?.cacheErrors],
  ['writeback_bytes_total', 'Bytes written back to the origin', (c) => c.cacheState?.workers.wb_bytes],
  ['writeback_errors_total', 'Writeback batches that failed (retried)', (c) => c.cacheState?.workers.wb_errors],
  ['gc_segments_freed_total', 'Segments reclaimed by GC', (c) => c.cacheState?.workers.gc_segments_freed],
  ['read_bytes_total', 'Bytes read by clients', (c) => c.stats.bytes_read],
  ['written_bytes_total', 'Bytes written by clients', (c) => c.stats.bytes_written],
  ['request_errors_total', 'Requests answered with an error', (c) => c.stats.errors],
  ['restarts_total', 'Coordinator restarts', (c) => c.restarts],
];

/** [name, help, value]: gauges (a current level). */
const GAUGES: [string, string, Pick][] = [
  ['up', '1 while the cache is running', (c) => (c.state === 'running' ? 1 : 0)],
  ['cache_blocks', 'Cache blocks (4 KiB)', (c) => c.cacheState?.blocks],
  ['free_blocks', 'Free cache blocks', (c) => c.cacheState?.freeBlocks],
  ['dirty_blocks', 'Blocks not yet written back', (c) => c.cacheState?.dirtyBlocks],
  ['blocks_under_writeback', 'Blocks of the writeback batch in flight', (c) => c.cacheState?.writecache?.blocksUnderWriteback],
  ['segments', 'Cache segments', (c) => c.cacheState?.segments],
  ['segments_used', 'Cache segments in use', (c) => c.cacheState?.segmentsUsed],
  ['gc_percent', 'GC threshold (percent of segments used)', (c) => c.cacheState?.gcPercent],
  ['epochs_pending', 'FLUSH epochs in the log writeback has not finished', (c) => c.cacheState?.epochsPending],
  ['writeback_bytes_per_second', 'Writeback rate over the last seconds', (c) => c.cacheState?.writecache?.writebackBytesPerSec],
  ['error', '1 when the cache error indicator is set', (c) => (c.cacheState ? (c.cacheState.errors.length > 0 ? 1 : 0) : undefined)],
  ['connections', 'Open client connections', (c) => c.connections],
];

export class MetricsServer {
  readonly #registry = new Registry();
  readonly #server: Server;
  readonly #log: Logger;
  #snapshot: Snapshot = [];

  constructor(private readonly opts: { host: string; port: number; status: () => Promise<Snapshot>; log: Logger }) {
    this.#log = opts.log;
    collectDefaultMetrics({ register: this.#registry });
    const snap = (): Snapshot => this.#snapshot;
    for (const [name, help, pick] of COUNTERS) {
      new Counter({
        name: `pcached_${name}`, help, labelNames: ['cache'], registers: [this.#registry],
        collect() {
          this.reset();
          for (const c of snap()) {
            const v = pick(c);
            if (v !== undefined && v >= 0) this.inc({ cache: c.name }, v);
          }
        },
      });
    }
    for (const [name, help, pick] of GAUGES) {
      new Gauge({
        name: `pcached_${name}`, help, labelNames: ['cache'], registers: [this.#registry],
        collect() {
          this.reset();
          for (const c of snap()) {
            const v = pick(c);
            if (v !== undefined) this.set({ cache: c.name }, v);
          }
        },
      });
    }
    new Counter({
      name: 'pcached_requests_total', help: 'NBD requests by command', labelNames: ['cache', 'command'], registers: [this.#registry],
      collect() {
        this.reset();
        for (const c of snap()) for (const cmd of COMMANDS) this.inc({ cache: c.name, command: cmd }, c.stats[`reqs_${cmd}`] ?? 0);
      },
    });
    new Gauge({
      name: 'pcached_mode', help: 'The cache mode (1 for the current one)', labelNames: ['cache', 'mode'], registers: [this.#registry],
      collect() {
        this.reset();
        for (const c of snap()) this.set({ cache: c.name, mode: c.mode }, 1);
      },
    });
    this.#server = createServer((req, res) => {
      if (req.method !== 'GET' || (req.url !== '/metrics' && !req.url?.startsWith('/metrics?'))) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try GET /metrics\n');
        return;
      }
      void this.#scrape().then((body) => {
        res.writeHead(200, { 'content-type': this.#registry.contentType }).end(body);
      }, (err: unknown) => {
        this.#log.warn({ err }, 'metrics scrape failed');
        res.writeHead(500, { 'content-type': 'text/plain' }).end('scrape failed\n');
      });
    });
    // A scraper that never reads must not hold sockets forever.
    this.#server.requestTimeout = 10_000;
    this.#server.headersTimeout = 10_000;
  }

  async #scrape(): Promise<string> {
    this.#snapshot = await this.opts.status();
    return this.#registry.metrics();
  }

  /** Resolves with the bound address (port 0 picks one). */
  listen(): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.opts.port, this.opts.host, () => {
        this.#server.off('error', reject);
        const a = this.#server.address();
        resolve({ host: this.opts.host, port: typeof a === 'object' && a ? a.port : this.opts.port });
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }
}
