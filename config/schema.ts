// The convict schema: one entry per key, with the documentation the configuration reference
// (docs/configuration.md) is generated from. Two strict schemas: the daemon-wide keys, and one
// cache (each element of `caches` is validated against its own convict instance, because convict
// treats arrays as opaque leaves).
//
// Values here are "raw": sizes stay as written ("256MiB") and paths stay relative, so error
// messages quote what the operator wrote. src/config/load.ts resolves them into DaemonConfig.

import convict from 'convict';
import { CACHE_MODES, RELOADABLE_CACHE_KEYS, RELOADABLE_DAEMON_KEYS } from '../src/config/types.js';
import type { CacheConfig, DaemonConfig } from '../src/config/types.js';
import { formatSize, parseSize } from '../src/util/size.js';
import { isUri as isNbdUri } from '../src/nbd/uri.js';
import { promotionHits } from '../src/config/tunable-descriptors.js';
import { cacheAccessKeys, daemonAccessKeys, type RawCacheAccess, type RawDaemonAccess } from './access-schema.js';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export const MAX_STRIPES = 64;
/** sun_path is 108 bytes including the terminating NUL. */
export const MAX_UNIX_PATH_BYTES = 107;
/** Written in default values and accepted at the start of any path: replaced by the resolved dataDir. */
export const DATA_DIR_TOKEN = '{dataDir}';

export interface RawCache extends RawCacheAccess {
  name: string;
  origin: string;
  cache: string;
  cacheSize: string | number;
  mode: string;
  unix: string;
  tcp: string;
  stripes: number;
  readOnly: boolean;
  description: string;
  format: boolean;
  discardDirty: boolean;
  originTimeoutMs: number;
  originConnections: number;
  originQueueDepth: number;
  cacheDirectIo: string;
  cacheQueueDepth: number;
  slabSize: string | number;
  maxConnections: number;
  dataCrc: boolean;
  segmentSize: string | number;
  gcPercent: number;
  sequentialCutoff: string | number;
  autocommit: { timeMs: number; blocks: number };
  writeback: { rate: string | number; jobs: number };
  pauseWritebackMs: number;
  highWatermark: number;
  lowWatermark: number;
  maxAgeMs: number;
  promotion: string;
  cleaner: boolean;
  cacheFullWaitMs: number;
}

export interface RawDaemon extends RawDaemonAccess {
  control: string;
  logLevel: string;
  dataDir: string;
  metrics: { listen: string; allowRemote: boolean };
  caches: unknown[];
}

/** Our additions to a convict schema entry (convict keeps unknown properties on the entry). */
export interface KeyInfo<T> extends convict.SchemaObj<T> {
  doc: string;
  /** Human description of the accepted values, for the reference. */
  accepts: string;
  /** `pcached start` flag that sets the key (single-cache form), if any. */
  flag?: string;
  min?: number;
  max?: number;
  align?: number;
  /** pcached-size-or-zero: what 0 means ("off", "unlimited"). */
  zeroMeans?: string;
  /** A value to show in the error message of a size. */
  example?: string;
}

/**
 * A schema whose objects are either keys (KeyInfo, which has a `default`) or groups of keys
 * (plain objects without one: convict nests them, and a config file writes them as objects,
 * `"autocommit": {"timeMs": 1000}`).
 */
export type SchemaOf<T> = { [K in keyof T]: T[K] extends object ? SchemaOf<T[K]> : KeyInfo<T[K]> };

// convict appends ": value was <json>" only when the value is truthy; we add it for 0, "", false
// and NaN so that every message names the bad value.
function invalid(message: string, value: unknown): never {
  if (value) throw new Error(message);
  const shown = typeof value === 'number' || value === undefined ? String(value) : JSON.stringify(value);
  throw new Error(`${message}: value was ${shown}`);
}

function rangeText(item: convict.SchemaObj): string {
  return `between ${item.min} and ${item.max}`;
}

convict.addFormat({
  name: 'pcached-integer',
  validate(x: unknown, item: convict.SchemaObj) {
    if (typeof x !== 'number' || !Number.isInteger(x) || x < item.min || x > item.max) {
      invalid(`must be an integer ${item.rangeText ?? rangeText(item)}`, x);
    }
  },
  // Environment values arrive as strings; anything that is not a plain integer stays a string so
  // the error quotes it as written (convict's own int coercion turns "8x" into 8).
  coerce: (x: unknown) => (typeof x === 'string' && /^\s*-?\d+\s*$/.test(x) ? Number(x) : x),
});

convict.addFormat({
  name: 'pcached-size',
  validate(x: unknown, item: convict.SchemaObj) {
    const expected = `must be a size ${formatSize(item.min)} to ${formatSize(item.max)}, a multiple of ${formatSize(item.align)} (e.g. "${formatSize(item.default === undefined ? item.min : parseSize(item.default))}")`;
    if (typeof x !== 'string' && typeof x !== 'number') invalid(expected, x);
    let bytes: number;
    try {
      bytes = parseSize(x);
    } catch {
      return invalid(expected, x);
    }
    if (bytes < item.min || bytes > item.max || bytes % item.align !== 0) invalid(expected, x);
  },
});

// A size that may also be 0, which switches the feature off (item.zeroMeans says how); any other
// value must be within min..max and a multiple of align.
convict.addFormat({
  name: 'pcached-size-or-zero',
  validate(x: unknown, item: convict.SchemaObj) {
    const multiple = item.align > 1 ? `, a multiple of ${formatSize(item.align)}` : '';
    const example = item.example ?? formatSize(item.default === undefined ? item.min : parseSize(item.default));
    const expected = `must be 0 (${item.zeroMeans}) or a size ${formatSize(item.min)} to ${formatSize(item.max)}${multiple} (e.g. "${example}")`;
    if (typeof x !== 'string' && typeof x !== 'number') invalid(expected, x);
    let bytes: number;
    try {
      bytes = parseSize(x);
    } catch {
      return invalid(expected, x);
    }
    if (bytes === 0) return;
    if (bytes < item.min || bytes > item.max || bytes % item.align !== 0) invalid(expected, x);
  },
});

convict.addFormat({
  name: 'pcached-boolean',
  validate(x: unknown) {
    if (typeof x !== 'boolean') invalid('must be true or false', x);
  },
  coerce(x: unknown) {
    if (typeof x !== 'string') return x;
    const v = x.trim().toLowerCase();
    if (['true', '1', 'yes', 'on'].includes(v)) return true;
    if (['false', '0', 'no', 'off'].includes(v)) return false;
    return x;
  },
});

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function utf8Bytes(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

function checkString(x: unknown, opts: { empty: boolean; maxBytes: number; what: string }): asserts x is string {
  if (typeof x !== 'string') invalid(`must be a string (${opts.what})`, x);
  if (!opts.empty && x === '') invalid(`must not be empty (${opts.what})`, x);
  if (x.includes('\0')) invalid('must not contain a NUL character', x);
  if (utf8Bytes(x) > opts.maxBytes) invalid(`must be at most ${opts.maxBytes} bytes of UTF-8`, x);
  // A lone surrogate has no UTF-8 form: it would reach the wire as U+FFFD and never match.
  if (LONE_SURROGATE.test(x)) invalid('must be valid Unicode (no lone surrogates)', x);
}

function checkPath(x: unknown, empty: boolean, what: string): void {
  checkString(x, { empty, maxBytes: 4096, what });
}

export { isUri as isNbdUri } from '../src/nbd/uri.js';

/** Checks an origin URI's form; the origin code decides whether the export is reachable. */
export function checkNbdUri(s: string): void {
  let url: URL;
  try {
    url = new URL(s);
  } catch {
    return invalid('is not a valid URI (expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)', s);
  }
  switch (url.protocol) {
    case 'nbd:':
      if (url.hostname === '') invalid('an nbd:// URI needs a host (nbd://HOST[:PORT]/EXPORT)', s);
      break;
    case 'nbd+unix:':
      if (url.host !== '') invalid('an nbd+unix:// URI takes no host (nbd+unix:///EXPORT?socket=PATH)', s);
      if (!url.searchParams.get('socket')) invalid('an nbd+unix:// URI needs ?socket=PATH', s);
      break;
    case 'nbds:':
    case 'nbds+unix:':
      invalid('TLS origins (nbds://) are not supported yet; use nbd:// or nbd+unix://', s);
      break;
    default:
      invalid('unsupported URI scheme (expected nbd:// or nbd+unix://)', s);
  }
}

/** HOST:PORT with an IPv6 host in brackets; port 0 asks the kernel for a free port. */
export function parseTcpAddress(s: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]|([^:\[\]\s]+)):(\d{1,5})$/.exec(s);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  const host = m[1] ?? m[2] ?? '';
  if (m[1] !== undefined && !host.includes(':')) return undefined;
  return { host, port };
}

function cacheKeys(form: 'file' | 'single'): SchemaOf<RawCache> {
  const single = form === 'single';
  const keys: SchemaOf<RawCache> = {
    name: {
      doc: 'Export name clients ask for, and the name `pcached status|message` use.',
      accepts: 'non-empty UTF-8, at most 256 bytes, no NUL',
      default: 'default',
      flag: '--name',
      env: 'PCACHED_NAME',
      format(x: unknown) {
        checkString(x, { empty: false, maxBytes: 256, what: 'an NBD export name' });
      },
    },
    origin: {
      doc: 'The slow device: a file or block device path, or an NBD URI. pcached creates the origin only in the embedded default (1 GiB, sparse); an origin you name must exist.',
      accepts: 'path, `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`',
      default: single ? `${DATA_DIR_TOKEN}/origin.img` : '',
      flag: '--origin',
      env: 'PCACHED_ORIGIN',
      format(x: unknown) {
        checkPath(x, false, 'a path or an NBD URI');
        if (isNbdUri(x as string)) checkNbdUri(x as string);
      },
    },
    cache: {
      doc: 'The fast cache file or block device. A missing file is created sparse at `cacheSize`.',
      accepts: 'path',
      default: single ? `${DATA_DIR_TOKEN}/cache.img` : '',
      flag: '--cache',
      env: 'PCACHED_CACHE',
      format(x: unknown) {
        checkPath(x, false, 'a file or block device path');
        if (isNbdUri(x as string)) invalid('must be a local path (a cache cannot be remote)', x);
      },
    },
    cacheSize: {
      doc: 'Size of a cache file pcached creates. An existing cache file or device keeps its size.',
      accepts: 'size: bytes or a number with K/M/G/T (powers of 1024)',
      default: '256MiB',
      flag: '--cache-size',
      env: 'PCACHED_CACHE_SIZE',
      format: 'pcached-size',
      min: 16 * 2 ** 20,
      max: 2 ** 50,
      align: 4096,
    },
    mode: {
      doc: 'Cache mode, switchable online (SIGHUP reload or `message NAME mode M`). `writeback`: writes complete in the cache, are durable at FLUSH/FUA and are written back in the background in log order. `writethrough`: writes go to the origin, then are cached; the reply follows both. `writearound`: writes go to the origin and drop cached copies; reads are cached. `passthrough`: nothing new is cached; cached data is still served and dirty data written back. `writeonly`: writes are cached as in writeback, reads are not promoted. A range still holding dirty data takes writes into the cache as well in every mode, so writeback never puts older data over newer.',
      accepts: CACHE_MODES.map((m) => `\`${m}\``).join(', '),
      default: 'writeback',
      flag: '--mode',
      env: 'PCACHED_MODE',
      format(x: unknown) {
        if (typeof x !== 'string' || !(CACHE_MODES as readonly string[]).includes(x)) {
          invalid(`must be one of ${CACHE_MODES.join(', ')}`, x);
        }
      },
    },
    unix: {
      doc: 'Unix socket to serve NBD on; `""` disables it. A socket file left by a crash is replaced; a live one is an error.',
      accepts: `path (at most ${MAX_UNIX_PATH_BYTES} bytes once resolved) or \`""\``,
      default: single ? `${DATA_DIR_TOKEN}/pcached.sock` : '',
      flag: '--unix',
      env: 'PCACHED_UNIX',
      format(x: unknown) {
        checkPath(x, true, 'a socket path, or "" for none');
      },
    },
    tcp: {
      doc: 'TCP address to serve NBD on; `""` disables it. Port 0 picks a free port. An address other than loopback needs `tls` `require` (or `allowRemotePlaintext`).',
      accepts: '`HOST:PORT`, `[IPV6]:PORT` or `""`',
      default: single ? '127.0.0.1:10809' : '',
      flag: '--tcp',
      env: 'PCACHED_TCP',
      format(x: unknown) {
        if (typeof x !== 'string') invalid('must be a string HOST:PORT, or "" for none', x);
        if (x !== '' && parseTcpAddress(x) === undefined) {
          invalid('must be HOST:PORT with a port 0-65535, an IPv6 host in brackets ([::1]:10809), or "" for none', x);
        }
      },
    },
    ...cacheAccessKeys(),
    stripes: {
      doc: 'Stripe worker threads; 0 means one per core but one, which the coordinator needs (`os.availableParallelism() - 1`, at least 1, at most 64).',
      accepts: `integer 0-${MAX_STRIPES}`,
      default: 0,
      flag: '--stripes',
      env: 'PCACHED_STRIPES',
      format: 'pcached-integer',
      min: 0,
      max: MAX_STRIPES,
      rangeText: `between 1 and ${MAX_STRIPES}, or 0 for one per core but one`,
    },
    readOnly: {
      doc: 'Serve the export read-only (writes fail with EPERM).',
      accepts: 'boolean',
      default: false,
      flag: '--read-only',
      env: 'PCACHED_READ_ONLY',
      format: 'pcached-boolean',
    },
    description: {
      doc: 'Free text sent to clients as the export description (NBD_INFO_DESCRIPTION); empty means a generated one, `pcached MODE cache of ORIGIN`.',
      accepts: 'UTF-8, at most 4096 bytes, no NUL',
      default: '',
      env: 'PCACHED_DESCRIPTION',
      format(x: unknown) {
        checkString(x, { empty: true, maxBytes: 4096, what: 'free text' });
      },
    },
    format: {
      doc: 'Allow formatting a cache device that holds something else, or a cache formatted for other settings (another origin size, the other dataCrc). Without it such a device is refused. A cache that still holds dirty data (flushed, not yet written back to the origin) is refused even so, unless `discardDirty` is set too: write it back first (start with its old settings, `pcached clean NAME`).',
      accepts: 'boolean',
      default: false,
      flag: '--format',
      env: 'PCACHED_FORMAT',
      format: 'pcached-boolean',
    },
    discardDirty: {
      doc: 'With `format` only: format a cache even though it holds dirty data, which is then lost (a warning names how much). Meant for one start (`--format --discard-dirty`), not for a config file.',
      accepts: 'boolean',
      default: false,
      flag: '--discard-dirty',
      env: 'PCACHED_DISCARD_DIRTY',
      format: 'pcached-boolean',
    },
    originTimeoutMs: {
      doc: 'An NBD origin request fails with EIO after this many milliseconds without a connection.',
      accepts: 'integer 100-86400000',
      default: 30000,
      env: 'PCACHED_ORIGIN_TIMEOUT_MS',
      format: 'pcached-integer',
      min: 100,
      max: 86_400_000,
    },
    originConnections: {
      doc: 'Connections each stripe keeps to an NBD origin.',
      accepts: 'integer 1-16',
      default: 1,
      env: 'PCACHED_ORIGIN_CONNECTIONS',
      format: 'pcached-integer',
      min: 1,
      max: 16,
    },
    originQueueDepth: {
      doc: 'Requests each stripe keeps in flight to a file or block-device origin (reads, writes and syncs through libuv\'s thread pool, which is sized from it at start); more wait in order. Writeback keeps `writeback.jobs` of its own. An NBD origin ignores it.',
      accepts: 'integer 1-256',
      default: 32,
      env: 'PCACHED_ORIGIN_QUEUE_DEPTH',
      format: 'pcached-integer',
      min: 1,
      max: 256,
    },
    cacheDirectIo: {
      doc: 'Direct I/O (O_DIRECT) on the cache device. `on`: every cache read and write bypasses the page cache (through aligned buffers), so cached data is not held in RAM a second time and the cache runs at the device\'s own speed; the start fails if the device or its file system refuses it. `off`: buffered I/O; cache hits the page cache holds are served at memory speed, and the cache uses RAM as well as the device. `auto`: `on` for a block device, `off` for a regular file (see docs/performance.md for both measured on a file), falling back to buffered with a warning where direct I/O is refused. A sync (FLUSH) is still an fdatasync either way: a direct write can sit in the device\'s volatile cache.',
      accepts: '`auto`, `on`, `off`',
      default: 'auto',
      env: 'PCACHED_CACHE_DIRECT_IO',
      format(x: unknown) {
        if (typeof x !== 'string' || !['auto', 'on', 'off'].includes(x)) invalid('must be one of auto, on, off', x);
      },
    },
    cacheQueueDepth: {
      doc: 'Read hits each stripe keeps in flight on the cache device, so the hits, misses and writes queued behind one go on while the device works; more are read synchronously. With direct I/O every hit goes through it; with buffered I/O only hits the page cache does not hold (the rest are answered at once).',
      accepts: 'integer 1-256',
      default: 32,
      env: 'PCACHED_CACHE_QUEUE_DEPTH',
      format: 'pcached-integer',
      min: 1,
      max: 256,
    },
    slabSize: {
      doc: 'Shared payload slab per stripe (request and reply data between the coordinator and the stripe). READ and WRITE are cut into pieces of at most a quarter of it (and 4 MiB), streamed through it; a smaller slab means more, smaller pieces.',
      accepts: 'size, 4MiB-1GiB, a multiple of 4KiB',
      default: '32MiB',
      env: 'PCACHED_SLAB_SIZE',
      format: 'pcached-size',
      // Pieces are at most a quarter of the slab (router.ts maxPieceFor): 1 MiB pieces at the minimum.
      min: 4 * 2 ** 20,
      max: 2 ** 30,
      align: 4096,
    },
    maxConnections: {
      doc: 'NBD client connections served at once; further connections are refused.',
      accepts: 'integer 1-65536',
      default: 256,
      env: 'PCACHED_MAX_CONNECTIONS',
      format: 'pcached-integer',
      min: 1,
      max: 65536,
    },
    dataCrc: {
      doc: 'Keep a CRC32C of every cached extent and check it on read. Format-time: it is recorded when the cache is formatted, and a cache formatted with the other setting is refused.',
      accepts: 'boolean',
      default: false,
      flag: '--data-crc',
      env: 'PCACHED_DATA_CRC',
      format: 'pcached-boolean',
    },
    segmentSize: {
      doc: 'Segment size used when formatting a new cache (the unit of allocation and garbage collection). Format-time: an existing cache keeps the segment size it was formatted with.',
      accepts: 'size, 1MiB-1GiB, a multiple of 64KiB',
      default: '16MiB',
      flag: '--segment-size',
      env: 'PCACHED_SEGMENT_SIZE',
      format: 'pcached-size',
      min: 2 ** 20,
      max: 2 ** 30,
      align: 64 * 2 ** 10,
    },
    gcPercent: {
      doc: 'Garbage collection runs while at least this percentage of the segments is in use; 0 reclaims whatever has been written back. The cache file stores the value (`message NAME gc_percent N` changes it there); at start a configured value other than the default 70 replaces the stored one, and the default keeps it.',
      accepts: 'integer 0-90',
      default: 70,
      flag: '--gc-percent',
      env: 'PCACHED_GC_PERCENT',
      format: 'pcached-integer',
      min: 0,
      max: 90,
    },
    sequentialCutoff: {
      doc: 'A sequential read run longer than this many bytes is not promoted into the cache (it goes to the origin only); 0 turns the cutoff off.',
      accepts: 'size, 0 or 512B-1TiB, a multiple of 512B',
      default: '4MiB',
      flag: '--sequential-cutoff',
      env: 'PCACHED_SEQUENTIAL_CUTOFF',
      format: 'pcached-size-or-zero',
      zeroMeans: 'off',
      min: 512,
      max: 2 ** 40,
      align: 512,
    },
    autocommit: {
      timeMs: {
        doc: 'A key set (the metadata of cached writes) is committed to the cache at the latest this many milliseconds after its first key, even without a FLUSH or FUA.',
        accepts: 'integer 1-3600000',
        default: 1000,
        env: 'PCACHED_AUTOCOMMIT_TIME_MS',
        format: 'pcached-integer',
        min: 1,
        max: 3_600_000,
      },
      blocks: {
        doc: "dm-writecache's autocommit_blocks: a commit round starts once this many 4 KiB blocks of writes wait uncommitted, even before timeMs (a round costs one fdatasync of the cache).",
        accepts: 'integer 1-1048576',
        default: 65_536,
        env: 'PCACHED_AUTOCOMMIT_BLOCKS',
        format: 'pcached-integer',
        min: 1,
        max: 1_048_576,
      },
    },
    writeback: {
      rate: {
        doc: 'Origin bandwidth the background writeback may use, in bytes per second; 0 means unlimited.',
        accepts: 'size per second, 0 or 1MiB-1TiB',
        default: 0,
        env: 'PCACHED_WRITEBACK_RATE',
        format: 'pcached-size-or-zero',
        zeroMeans: 'unlimited',
        example: '100MiB',
        min: 2 ** 20,
        max: 2 ** 40,
        align: 1,
      },
      jobs: {
        doc: "dm-writecache's writeback_jobs: origin requests writeback keeps in flight (each a coalesced run of up to 1 MiB).",
        accepts: 'integer 1-1024',
        default: 16,
        env: 'PCACHED_WRITEBACK_JOBS',
        format: 'pcached-integer',
        min: 1,
        max: 1024,
      },
    },
    highWatermark: {
      doc: "dm-writecache's high_watermark: when this percent of the cache's blocks is dirty, writeback runs at full speed (no pause, no rate limit) until lowWatermark.",
      accepts: 'integer 1-100',
      default: 50,
      env: 'PCACHED_HIGH_WATERMARK',
      format: 'pcached-integer',
      min: 1,
      max: 100,
    },
    lowWatermark: {
      doc: "dm-writecache's low_watermark: full-speed writeback started by highWatermark stops at this percent of dirty blocks. At most highWatermark.",
      accepts: 'integer 0-100',
      default: 45,
      env: 'PCACHED_LOW_WATERMARK',
      format: 'pcached-integer',
      min: 0,
      max: 100,
    },
    maxAgeMs: {
      doc: "dm-writecache's max_age: dirty data older than this many milliseconds makes writeback run at full speed; 0 is no limit.",
      accepts: 'integer 0-86400000',
      default: 0,
      env: 'PCACHED_MAX_AGE_MS',
      format: 'pcached-integer',
      min: 0,
      max: 86_400_000,
    },
    promotion: {
      doc: 'Admission of read misses: `always` promotes every miss (the sequential cutoff aside); `nhit:N` promotes a block on its N-th miss within a window of recent misses (about the last 16k per stripe), so data read once does not push out data read often.',
      accepts: '`always` or `nhit:N` (N 2-16)',
      default: 'always',
      env: 'PCACHED_PROMOTION',
      format(x: unknown) {
        if (typeof x !== 'string' || promotionHits(x) === null) invalid('must be "always" or "nhit:N" with N from 2 to 16', x);
      },
    },
    cleaner: {
      doc: "dm-writecache's cleaner: writes are no longer cached (they go to the origin, dropping cached copies) and everything dirty is written back at full speed. `pcached clean NAME` turns it on and waits.",
      accepts: 'boolean',
      default: false,
      env: 'PCACHED_CLEANER',
      format: 'pcached-boolean',
    },
    pauseWritebackMs: {
      doc: "dm-writecache's pause_writeback: writeback waits while the volume saw foreground I/O within this many milliseconds and segment use is below gcPercent; 0 never pauses.",
      accepts: 'integer 0-600000',
      default: 1000,
      env: 'PCACHED_PAUSE_WRITEBACK_MS',
      format: 'pcached-integer',
      min: 0,
      max: 600_000,
    },
    cacheFullWaitMs: {
      doc: 'How long a write waits for free cache space (garbage collection, writeback) before it bypasses the cache and goes to the origin; 0 bypasses at once. A write over data not yet written back cannot bypass (it would be reordered) and keeps waiting.',
      accepts: 'integer 0-600000',
      default: 2000,
      env: 'PCACHED_CACHE_FULL_WAIT_MS',
      format: 'pcached-integer',
      min: 0,
      max: 600_000,
    },
  };
  return keys;
}

/** A schema entry is a key when it has a default (convict's rule); otherwise a group of keys. */
function isKeyInfo(x: unknown): x is KeyInfo<unknown> {
  return typeof x === 'object' && x !== null && 'default' in x;
}

/** The keys of a schema with their dotted names (`autocommit.timeMs`), in schema order. */
export function schemaLeaves(schema: object, prefix = ''): [string, KeyInfo<unknown>][] {
  const out: [string, KeyInfo<unknown>][] = [];
  for (const [k, v] of Object.entries(schema)) {
    if (isKeyInfo(v)) out.push([`${prefix}${k}`, v]);
    else out.push(...schemaLeaves(v as object, `${prefix}${k}.`));
  }
  return out;
}

/** A schema without its environment bindings, groups included. */
function withoutEnv(schema: object): object {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(schema)) {
    if (isKeyInfo(v)) {
      const { env: _env, ...rest } = v;
      out[k] = rest;
    } else {
      out[k] = withoutEnv(v as object);
    }
  }
  return out;
}

/** The value at a dotted path of a (raw or resolved) cache, or undefined. */
export function valueAt(obj: unknown, dotted: string): unknown {
  let v: unknown = obj;
  for (const part of dotted.split('.')) {
    if (typeof v !== 'object' || v === null || !Object.hasOwn(v, part)) return undefined;
    v = (v as Record<string, unknown>)[part];
  }
  return v;
}

/** Schema for one cache. `single`: the defaults of the single-cache form (flags, environment, embedded default). */
export function cacheSchema(form: 'file' | 'single', bindEnv: boolean): convict.Schema<RawCache> {
  const schema = cacheKeys(form);
  // Without the bindings convict ignores the environment for this instance (several caches in one file).
  return (bindEnv ? schema : withoutEnv(schema)) as unknown as convict.Schema<RawCache>;
}

// It lives with the tunable descriptors, which the cache threads load without convict.
export { promotionHits } from '../src/config/tunable-descriptors.js';

/** True for 127.0.0.0/8, ::1 and localhost: where metrics may listen without `metrics.allowRemote`. */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

export function daemonSchema(): convict.Schema<RawDaemon> {
  const keys: { [K in Exclude<keyof RawDaemon, 'metrics'>]: KeyInfo<RawDaemon[K]> } & { metrics: { listen: KeyInfo<string>; allowRemote: KeyInfo<boolean> } } = {
    control: {
      doc: 'Control socket for `pcached status|message` (mode `controlMode`, 0600 by default).',
      accepts: `path (at most ${MAX_UNIX_PATH_BYTES} bytes once resolved)`,
      default: `${DATA_DIR_TOKEN}/control.sock`,
      flag: '--control',
      env: 'PCACHED_CONTROL',
      format(x: unknown) {
        checkPath(x, false, 'a socket path');
      },
    },
    ...daemonAccessKeys(),
    logLevel: {
      doc: 'pino log level (lines on stderr: human on a terminal, JSON otherwise; `--log-format`, docs/service.md).',
      accepts: LOG_LEVELS.map((l) => `\`${l}\``).join(', '),
      default: 'info',
      flag: '--log-level',
      env: 'PCACHED_LOG_LEVEL',
      format(x: unknown) {
        if (typeof x !== 'string' || !(LOG_LEVELS as readonly string[]).includes(x)) {
          invalid(`must be one of ${LOG_LEVELS.join(', ')}`, x);
        }
      },
    },
    dataDir: {
      doc: `Folder of the embedded default's files; \`${DATA_DIR_TOKEN}\` at the start of any path stands for it.`,
      accepts: 'path',
      default: './var',
      env: 'PCACHED_DATA_DIR',
      format(x: unknown) {
        checkPath(x, false, 'a folder path');
      },
    },
    metrics: {
      listen: {
        doc: 'HOST:PORT for Prometheus metrics (`GET /metrics`, text format: every cache\'s counters read at scrape time, plus the daemon\'s process metrics); `""` is off. Only a loopback host unless `metrics.allowRemote`.',
        accepts: 'HOST:PORT or `""`',
        default: '',
        env: 'PCACHED_METRICS_LISTEN',
        format(x: unknown) {
          if (typeof x !== 'string') invalid('must be a string', x);
          if (x === '') return;
          const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(x);
          if (!m || Number(m[3]) > 65535) invalid('must be HOST:PORT (e.g. 127.0.0.1:9464) or ""', x);
        },
      },
      allowRemote: {
        doc: 'Let `metrics.listen` use an address other than loopback (the metrics are not authenticated).',
        accepts: 'boolean',
        default: false,
        env: 'PCACHED_METRICS_ALLOW_REMOTE',
        format: 'pcached-boolean',
      },
    },
    caches: {
      doc: 'The caches this host serves, each an object with the cache keys below. Empty or absent: one cache from the flags and environment (the single-cache form).',
      accepts: 'array of objects',
      default: [],
      format(x: unknown) {
        if (!Array.isArray(x)) invalid('must be an array of cache objects', x);
      },
    },
  };
  return keys;
}

/** Top-level cache keys in schema order (`autocommit` for the group `autocommit.timeMs`). */
export const CACHE_KEYS = Object.keys(cacheKeys('file')) as (keyof RawCache & keyof CacheConfig)[];
/** Every cache key with its dotted name (`autocommit.timeMs`), in schema order: for the reference and for diffs. */
export const CACHE_LEAF_KEYS: readonly string[] = schemaLeaves(cacheKeys('file')).map(([k]) => k);
/** Groups of cache keys and the keys each holds: `{ autocommit: ['timeMs'], ... }`. */
export const CACHE_GROUPS: Readonly<Record<string, readonly string[]>> = Object.fromEntries(
  Object.entries(cacheKeys('file'))
    .filter(([, v]) => !isKeyInfo(v))
    .map(([k, v]) => [k, Object.keys(v as object)]),
);
export const DAEMON_KEYS = ['control', 'controlMode', 'controlGroup', 'logLevel', 'dataDir'] as const satisfies readonly (keyof DaemonConfig)[];
/** Daemon keys with their dotted names (`metrics.listen`), in schema order, `caches` left out. */
export const DAEMON_LEAF_KEYS: readonly string[] = schemaLeaves(daemonSchema()).map(([k]) => k).filter((k) => k !== 'caches');
export const DAEMON_GROUPS: Readonly<Record<string, readonly string[]>> = { metrics: ['listen', 'allowRemote'] };

export function keyInfo(scope: 'daemon', key: keyof RawDaemon | 'metrics.listen' | 'metrics.allowRemote'): KeyInfo<unknown>;
/** `key` may be dotted (`autocommit.timeMs`). */
export function keyInfo(scope: 'cache', key: string, form?: 'file' | 'single'): KeyInfo<unknown>;
export function keyInfo(scope: 'daemon' | 'cache', key: string, form: 'file' | 'single' = 'file'): KeyInfo<unknown> {
  const info = scope === 'daemon' ? valueAt(daemonSchema(), key) : valueAt(cacheKeys(form), key);
  if (!isKeyInfo(info)) throw new RangeError(`no ${scope} key ${key}`);
  return info;
}

/** Whether SIGHUP may change `key`; a key of a group (`autocommit.timeMs`) is reloadable when its group is. */
export function isReloadable(scope: 'daemon' | 'cache', key: string): boolean {
  const top = key.split('.')[0] ?? key;
  return scope === 'daemon'
    ? (RELOADABLE_DAEMON_KEYS as readonly string[]).includes(top)
    : (RELOADABLE_CACHE_KEYS as readonly string[]).includes(top);
}
