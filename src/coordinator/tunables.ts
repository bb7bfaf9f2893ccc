// The running tunables of one cache and the one rule for them (docs/operations.md, "Runtime
// state"): a message sets a tunable until a reload changes that key in the config file, or until
// the daemon restarts; a reload applies only the keys whose value in the file changed, so a value
// set by message survives reloads that change other keys. The supervisor keeps the values set by
// message (`overrides()`) and hands them to a coordinator it restarts after a crash. gc_percent is
// also stored in the cache file (dm-pcache's rule) and so outlives a daemon restart too.

import type { CacheConfig } from '../config/types.js';
import { keyInfo, valueAt } from '../../config/schema.js';
import { SHARED_TUNABLES, TABLE_TUNABLES, type Tunables } from '../config/tunable-descriptors.js';

/** Where a running value came from, as the coordinator knows it (the supervisor refines `config`). */
export type TunableSource = 'config' | 'message' | 'detach' | 'default' | 'cache file';

/** Every tunable a running cache has, in the order `pcached table` prints them (src/config/tunable-descriptors.ts). */
export const TUNABLES = TABLE_TUNABLES;

const FLUSH_ON_SUSPEND = 'flushOnSuspend';

/** Drops the overrides whose key changed between two configurations (a reload while no coordinator runs). */
export function overridesAfterReload(overrides: Record<string, unknown>, before: CacheConfig, after: CacheConfig): Record<string, unknown> {
  return Object.fromEntries(Object.entries(overrides).filter(([k]) => k === FLUSH_ON_SUSPEND || valueAt(before, k) === valueAt(after, k)));
}

/**
 * dm-writecache's numeric controls as messages (their table-argument names, and aliases): [the
 * shared word the answer names, min, max, the config key it sets], the range the schema's own (a
 * message accepts what the config file does). The value holds as the rule above says.
 */
export const TUNABLE_MESSAGES: Record<string, [keyof Tunables, number, number, string]> = Object.fromEntries(
  SHARED_TUNABLES.filter((d) => d.messageArg === 'integer' && d.key !== null).flatMap((d) => {
    const info = keyInfo('cache', d.key!);
    return [d.message!, ...(d.aliases ?? [])].map((verb) => [verb, [d.shared.field, info.min!, info.max!, d.key!]]);
  }),
);

/** Messages that act on the cache: after `detach` they get a clear answer, not "unknown message". */
export const CACHE_ONLY_MESSAGES = new Set(['debug_cache_faults', ...TUNABLES.flatMap((t) => (t.message ? [t.message, ...(t.aliases ?? [])] : []))]);

export interface TableRow {
  key: string;
  message: string | null;
  value: unknown;
  shown: string;
  source: TunableSource;
}

/** A copy of `cache` with `key` (dotted) set to `value`. */
export function withValue(cache: CacheConfig, key: string, value: unknown): CacheConfig {
  const [top, sub] = key.split('.') as [keyof CacheConfig, string | undefined];
  if (sub === undefined) return { ...cache, [top]: value };
  return { ...cache, [top]: { ...(cache[top] as object), [sub]: value } };
}

/**
 * The configured values (what the supervisor sent last) and the running ones, with the keys a
 * message set. The running config is what the cache engine is told.
 */
export class RuntimeTunables {
  #configured: CacheConfig;
  #running: CacheConfig;
  readonly #byMessage = new Map<string, TunableSource>();
  flushOnSuspend = false;

  /** `overrides`: what messages had set before the coordinator was restarted (see overrides()). */
  constructor(cache: CacheConfig, overrides: Record<string, unknown> = {}) {
    this.#configured = cache;
    this.#running = cache;
    for (const [key, value] of Object.entries(overrides)) {
      if (key === FLUSH_ON_SUSPEND) this.flushOnSuspend = value === true;
      else if (TUNABLES.some((t) => t.key === key && !t.messageOnly)) this.set(key, value);
    }
  }

  /** The values messages set (detach's are not carried over: a restart attaches the cache again). */
  overrides(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const [key, by] of this.#byMessage) if (by === 'message') out[key] = valueAt(this.#running, key);
    if (this.flushOnSuspend) out[FLUSH_ON_SUSPEND] = true;
    return out;
  }

  get running(): CacheConfig {
    return this.#running;
  }

  /**
   * A message (or detach) set `key`. A value equal to the configured one is the configured one
   * again (`pcached clean` putting the cleaner back): its source is the config once more.
   */
  set(key: string, value: unknown, by: 'message' | 'detach' = 'message'): void {
    this.#running = withValue(this.#running, key, value);
    if (by === 'message' && valueAt(this.#configured, key) === value) this.#byMessage.delete(key);
    else this.#byMessage.set(key, by);
  }

  /**
   * A reload: keys whose configured value changed take the new value (and forget a message);
   * the others keep their running value. Returns the running config before and after.
   */
  reload(next: CacheConfig): { before: CacheConfig; after: CacheConfig } {
    const before = this.#running;
    let after = next;
    for (const t of TUNABLES) {
      if (t.messageOnly) continue;
      const changedInFile = valueAt(this.#configured, t.key) !== valueAt(next, t.key);
      const by = this.#byMessage.get(t.key);
      if (changedInFile && by !== 'detach') this.#byMessage.delete(t.key);
      else if (by !== undefined) after = withValue(after, t.key, valueAt(before, t.key));
    }
    // A watermark set by message must not end up above a high one the file lowered (or below...).
    if (after.lowWatermark > after.highWatermark) {
      for (const k of ['lowWatermark', 'highWatermark']) {
        if (this.#byMessage.get(k) === 'message') { this.#byMessage.delete(k); after = withValue(after, k, valueAt(next, k)); }
      }
    }
    this.#configured = next;
    this.#running = after;
    return { before, after };
  }

  rows(): TableRow[] {
    return TUNABLES.map((t) => {
      const value = t.messageOnly ? this.flushOnSuspend : valueAt(this.#running, t.key);
      const source: TunableSource = t.messageOnly ? (this.flushOnSuspend ? 'message' : 'default') : (this.#byMessage.get(t.key) ?? 'config');
      return { key: t.key, message: t.message ?? null, value, shown: t.show(value), source };
    });
  }
}
