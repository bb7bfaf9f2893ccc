// One descriptor per tunable: a setting a running cache takes without a restart (a SIGHUP reload,
// most also `pcached message`). The schema (config/schema.ts) keeps each key's documentation,
// range and default; everything else about a tunable comes from its descriptor here: the shared
// word the threads read it from and how the config value becomes that word (src/cache/shared.ts
// lays the words out and stores them in one loop), the message that sets it, whose range is the
// schema's (src/coordinator/tunables.ts), which keys a reload applies (cache-runtime.ts,
// RELOADABLE_CACHE_KEYS) and how `pcached table` shows it. A word's `initial` value repeats the
// schema default (the threads cannot load the schema): test/tunables.test.ts checks the two
// agree, and every descriptor against its schema key.
//
// A new tunable: its schema entry, CacheConfig field and resolution (config/schema.ts,
// src/config/types.ts, src/config/load.ts), as for any key; then one descriptor here, and for a
// shared word a CacheShared getter of the field's name (the compiler asks for it), which its code
// reads.
//
// No heavy imports: the stripe, writeback and GC threads load this through src/cache/shared.ts,
// so it must not pull in the schema (convict).

import type { CacheConfig } from './types.js';
import { formatBytes } from '../util/size.js';

/**
 * How a tunable lives in the shared words: an Int32 word (`int32`, `bool` as 0/1) or, for a value
 * that may pass 2^31 (a byte rate), a BigInt64 one.
 */
export type WordKind = 'int32' | 'bool' | 'int64';

export interface SharedWordSpec {
  /** The CacheShared getter and Tunables field (other modules use these names: keep them). */
  field: string;
  kind: WordKind;
  /** The word before any config is applied (CacheShared.create): the schema default, converted (test/tunables.test.ts). */
  initial: number | boolean;
  /** The config value as the word holds it; without it, the value itself. */
  fromConfig?: (v: unknown) => number;
  /** The writeback worker waits on W_KICK_WB and must see this change at once (the cleaner). */
  kickWriteback?: true;
}

export interface TunableDescriptor {
  /**
   * The config key, dotted for a group (`writeback.jobs`): its schema entry holds the range and
   * default. `flushOnSuspend` is the coordinator's own state (message only); null: a shared word
   * with no key, which only tests change.
   */
  key: string | null;
  /** The message that sets it (dm-writecache's name), if any. */
  message?: string;
  /** Further names the message answers to. */
  aliases?: readonly string[];
  /**
   * `integer`: the message takes one integer in the schema's range and sets the key. Otherwise the
   * coordinator parses the message itself (`mode M`, `cleaner [on|off]`, ...).
   */
  messageArg?: 'integer';
  /** How `pcached table` prints the value. */
  show?: (v: unknown) => string;
  /**
   * How a change reaches the running cache without its own code: its shared word. Tunables without
   * one are applied by the coordinator (the mode and gcPercent are also written to the cache info
   * record, sequentialCutoff goes to the sequential detector, the rest are read where used).
   */
  shared?: SharedWordSpec;
  /** Not in the config file (flush_on_suspend): no reload touches it. */
  messageOnly?: true;
}

const ms = (v: unknown): string => `${String(v)} ms`;
const plain = (v: unknown): string => String(v);
const onOff = (v: unknown): string => (v ? 'on' : 'off');
const pct = (v: unknown): string => `${String(v)} %`;

/** Misses before a block is promoted: 1 for `always`, N for `nhit:N` (2-16); null when malformed. */
export function promotionHits(x: string): number | null {
  if (x === 'always') return 1;
  const m = /^nhit:(\d{1,2})$/.exec(x);
  const n = m ? Number(m[1]) : NaN;
  return n >= 2 && n <= 16 ? n : null;
}

/** Every tunable, in the order `pcached table` prints them (a descriptor without a key last). */
export const TUNABLE_DESCRIPTORS = [
  { key: 'mode', message: 'mode', show: plain },
  { key: 'cleaner', message: 'cleaner', show: onOff,
    // Writes are not cached (they go to the origin), everything is written back.
    shared: { field: 'cleaner', kind: 'bool', initial: false, kickWriteback: true } },
  { key: 'gcPercent', message: 'gc_percent', show: pct },
  { key: 'highWatermark', message: 'high_watermark', messageArg: 'integer', show: pct,
    // Percent of cache blocks dirty at which writeback runs at full speed (no pause, no rate) ...
    shared: { field: 'highWatermark', kind: 'int32', initial: 50 } },
  { key: 'lowWatermark', message: 'low_watermark', messageArg: 'integer', show: pct,
    // ... until it is down to this.
    shared: { field: 'lowWatermark', kind: 'int32', initial: 45 } },
  { key: 'writeback.jobs', message: 'writeback_jobs', messageArg: 'integer', show: plain,
    // Origin requests writeback keeps in flight.
    shared: { field: 'writebackJobs', kind: 'int32', initial: 16 } },
  { key: 'writeback.rate', show: (v) => (v === 0 ? 'unlimited' : `${formatBytes(Number(v))}/s`),
    // Writeback origin bytes per second, 0 = unlimited (up to 1 TiB/s: a BigInt64 word).
    shared: { field: 'writebackRate', kind: 'int64', initial: 0 } },
  { key: 'pauseWritebackMs', message: 'pause_writeback', aliases: ['pause_writeback_ms'], messageArg: 'integer', show: ms,
    // Writeback waits while the stripes saw writes within this many milliseconds and segment use
    // is below gc_percent: background origin I/O then does not take CPU and device time from the
    // foreground until space is needed. 0 = never pause.
    shared: { field: 'writebackPauseMs', kind: 'int32', initial: 1000 } },
  { key: 'maxAgeMs', message: 'max_age', messageArg: 'integer', show: (v) => (v === 0 ? 'off' : ms(v)),
    // No dirty data older than this many ms: writeback runs at full speed past it (0: no limit).
    shared: { field: 'maxAgeMs', kind: 'int32', initial: 0 } },
  { key: 'autocommit.blocks', message: 'autocommit_blocks', messageArg: 'integer', show: plain,
    // A commit round starts once this many 4 KiB blocks wait uncommitted.
    shared: { field: 'autocommitBlocks', kind: 'int32', initial: 65_536 } },
  { key: 'autocommit.timeMs', message: 'autocommit_time', messageArg: 'integer', show: ms,
    shared: { field: 'autocommitMs', kind: 'int32', initial: 1000 } },
  { key: 'promotion', message: 'promotion', show: plain,
    // Admission: a read miss promotes its block on the block's N-th miss (1: every miss).
    shared: { field: 'promoteHits', kind: 'int32', initial: 1, fromConfig: (v) => promotionHits(String(v)) ?? 1 } },
  { key: 'sequentialCutoff', show: (v) => (v === 0 ? 'off' : formatBytes(Number(v))) },
  { key: 'cacheFullWaitMs', show: ms,
    // How long a write waits for GC to free space before it may bypass to the origin.
    shared: { field: 'cacheFullWaitMs', kind: 'int32', initial: 2000 } },
  { key: 'maxConnections', show: plain },
  { key: 'originTimeoutMs', show: ms },
  { key: 'flushOnSuspend', message: 'flush_on_suspend', show: onOff, messageOnly: true },
  // A write over dirty data cannot bypass (writeback would reorder it); it fails with EIO after this long.
  { key: null, shared: { field: 'cacheFullMaxWaitMs', kind: 'int32', initial: 60_000 } },
] as const satisfies readonly TunableDescriptor[];

type Described = (typeof TUNABLE_DESCRIPTORS)[number];
type WithShared = Extract<Described, { shared: SharedWordSpec }>;
type ValueOfKind<K extends WordKind> = K extends 'bool' ? boolean : number;

/** Settings every thread reads live from the shared words (a field per descriptor with a word), so a reload needs no messages. */
export type Tunables = { [D in WithShared as D['shared']['field']]: ValueOfKind<D['shared']['kind']> };

/** The descriptors with a shared word, in table order (the order their words are laid out in). */
export const SHARED_TUNABLES: readonly (TunableDescriptor & { shared: SharedWordSpec & { field: keyof Tunables } })[] =
  TUNABLE_DESCRIPTORS.filter((d: TunableDescriptor) => d.shared !== undefined) as never;

/** The descriptors `pcached table` shows (those with a key). */
export const TABLE_TUNABLES: readonly (TunableDescriptor & { key: string; show: (v: unknown) => string })[] =
  TUNABLE_DESCRIPTORS.filter((d: TunableDescriptor) => d.key !== null) as never;

export const DEFAULT_TUNABLES: Tunables = Object.fromEntries(SHARED_TUNABLES.map((d) => [d.shared.field, d.shared.initial])) as Tunables;

function valueOf(cache: CacheConfig, dotted: string): unknown {
  let v: unknown = cache;
  for (const part of dotted.split('.')) v = (v as Record<string, unknown>)[part];
  return v;
}

/** The shared words' values for a (running) cache config: what CacheShared.setTunables is given. */
export function tunablesOf(cache: CacheConfig): Partial<Tunables> {
  const out: Record<string, unknown> = {};
  for (const d of SHARED_TUNABLES) {
    if (d.key === null) continue;
    const v = valueOf(cache, d.key);
    out[d.shared.field] = d.shared.fromConfig ? d.shared.fromConfig(v) : v;
  }
  return out as Partial<Tunables>;
}

/** The config keys with a shared word whose value differs between two configs, in table order. */
export function changedSharedKeys(a: CacheConfig, b: CacheConfig): string[] {
  return SHARED_TUNABLES.flatMap((d) => (d.key !== null && valueOf(a, d.key) !== valueOf(b, d.key) ? [d.key] : []));
}

/** Top-level config keys of the tunables (`autocommit` for `autocommit.timeMs`): SIGHUP may change them. */
export const TUNABLE_TOP_KEYS: readonly string[] = [
  ...new Set(TABLE_TUNABLES.filter((d) => d.messageOnly !== true).map((d) => d.key.split('.')[0]!)),
];
