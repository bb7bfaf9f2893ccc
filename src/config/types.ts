// The validated, resolved shape of the configuration. config/schema.ts (convict) produces it;
// everything else consumes only these types.

import { TUNABLE_TOP_KEYS } from './tunable-descriptors.js';

export const CACHE_MODES = ['writeback', 'writethrough', 'writearound', 'passthrough', 'writeonly'] as const;
export type CacheMode = (typeof CACHE_MODES)[number];

export interface CacheConfig {
  /** Export name; also the name used by `pcached status|message`. */
  name: string;
  /** Local file/block device path (absolute after resolution) or an NBD URI. */
  origin: string;
  /** Cache file or block device path (absolute after resolution). */
  cache: string;
  /** Bytes; used to create the cache file sparse when it is absent. */
  cacheSize: number;
  mode: CacheMode;
  /** Unix socket path to listen on ("" = none). */
  unix: string;
  /** "HOST:PORT" to listen on ("" = none). */
  tcp: string;
  /** Permission bits of the Unix socket file. */
  unixMode: number;
  /** Group (name or id) of the Unix socket file; "" = the daemon's. */
  unixGroup: string;
  /** NBD STARTTLS: refused, offered, or required before any other option. */
  tls: 'off' | 'on' | 'require';
  /** X.509 credentials folder (nbdkit's --tls-certificates layout), absolute; "" = none. */
  tlsCertificates: string;
  /** psktool-format key file, absolute; "" = none. */
  tlsPsk: string;
  /** Clients must present a certificate signed by the folder's ca-cert.pem. */
  tlsVerifyPeer: boolean;
  /** A non-loopback `tcp` may serve clients without TLS. */
  allowRemotePlaintext: boolean;
  /** Stripe worker threads (>= 1; resolved from 0 = number of cores). */
  stripes: number;
  readOnly: boolean;
  /** Export description sent in NBD_INFO_DESCRIPTION. */
  description: string;
  /** Reformat a cache device that holds something else. */
  format: boolean;
  /** With format: reformat even a cache that holds data not yet written back (it is lost). */
  discardDirty: boolean;
  /** An NBD origin request fails with EIO after this long without a connection. */
  originTimeoutMs: number;
  /** Connections each stripe keeps to an NBD origin. */
  originConnections: number;
  /** Requests each stripe keeps in flight to a file or block-device origin. */
  originQueueDepth: number;
  /** O_DIRECT on the cache device: auto (block devices only), on, off. */
  cacheDirectIo: 'auto' | 'on' | 'off';
  /** Read hits each stripe keeps in flight on the cache device. */
  cacheQueueDepth: number;
  /** Per-stripe shared payload slab, bytes. */
  slabSize: number;
  /** Maximum NBD client connections at once (further ones are refused). */
  maxConnections: number;
  /** Per-extent CRC32C of cached data (format-time: a cache formatted otherwise is refused). */
  dataCrc: boolean;
  /** Segment size in bytes used when formatting a new cache. */
  segmentSize: number;
  /** GC starts when this percentage of segments is in use (0-90). */
  gcPercent: number;
  /** Bytes of a sequential read run after which reads are not promoted (0 = off). */
  sequentialCutoff: number;
  autocommit: {
    /** A kset is committed at the latest this long after its first key. */
    timeMs: number;
    /** ... or once this many 4 KiB blocks wait uncommitted. */
    blocks: number;
  };
  writeback: {
    /** Origin bytes per second writeback may use (0 = unlimited). */
    rate: number;
    /** Origin requests writeback keeps in flight. */
    jobs: number;
  };
  /** How long a write waits for free cache space before it bypasses to the origin. */
  cacheFullWaitMs: number;
  /** dm-writecache's pause_writeback, in ms (0: never pause). */
  pauseWritebackMs: number;
  /** Percent of cache blocks dirty that starts full-speed writeback ... */
  highWatermark: number;
  /** ... until this percent. */
  lowWatermark: number;
  /** Dirty data older than this (ms) starts full-speed writeback; 0 = no limit. */
  maxAgeMs: number;
  /** Read-miss admission: `always` or `nhit:N`. */
  promotion: string;
  /** dm-writecache's cleaner: no write promotions, write everything back. */
  cleaner: boolean;
}

export interface DaemonConfig {
  /** Control socket path. */
  control: string;
  /** Permission bits of the control socket. */
  controlMode: number;
  /** Group (name or id) of the control socket; "" = the daemon's. */
  controlGroup: string;
  /** pino level. */
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  /** Folder for the embedded default's files. */
  dataDir: string;
  /** Prometheus endpoint: host and port, or null when off. */
  metrics: { listen: { host: string; port: number } | null; allowRemote: boolean };
  caches: CacheConfig[];
}

/** Keys of a cache that SIGHUP may change on a running coordinator: the description and every tunable. */
export const RELOADABLE_CACHE_KEYS: ReadonlyArray<keyof CacheConfig> = ['description', ...TUNABLE_TOP_KEYS] as (keyof CacheConfig)[];
/** Daemon-wide keys SIGHUP may change. */
export const RELOADABLE_DAEMON_KEYS: ReadonlyArray<keyof DaemonConfig> = ['logLevel'];
