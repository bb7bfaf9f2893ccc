// The tunable descriptors (src/config/tunable-descriptors.ts) against what they stand for: each
// names a schema key whose range its message takes, its initial shared word is the schema default,
// a value set by message reaches its shared word and `pcached table`, and the words it is laid out
// in are its own.

import test from 'ava';
import { loadConfig } from '../src/config/load.js';
import { keyInfo, isReloadable } from '../config/schema.js';
import {
  DEFAULT_TUNABLES, SHARED_TUNABLES, TABLE_TUNABLES, TUNABLE_DESCRIPTORS, changedSharedKeys, tunablesOf, type TunableDescriptor,
} from '../src/config/tunable-descriptors.js';
import {
  CacheShared, REC_CACHE_INFO, REC_DIRTY_TAIL, REC_KEY_TAIL, TUNABLE_WORDS, TUNABLE_WORDS_END, TUNABLE_WORDS_FIRST, W_FOREGROUND, W_FREED, W_KICK_GC, W_KICK_WB, W_STOP,
  type Tunables,
} from '../src/cache/shared.js';
import { W_FAILED, W_FAILED_WHY, W_LOG_LOCK, W_SYNC_DONE, W_SYNC_LAST_FAILED, W_SYNC_LOCK, W_SYNC_STARTED } from '../src/cache/durability.js';
import { CACHE_ONLY_MESSAGES, RuntimeTunables, TUNABLE_MESSAGES, withValue } from '../src/coordinator/tunables.js';
import type { CacheConfig } from '../src/config/types.js';
import { scratchDir, removeScratchDirs } from './helpers/scratch.js';

const dir = scratchDir('pcached-tunables-');
test.after.always(() => removeScratchDirs());

/** The resolved defaults of one cache (sizes in bytes), as the daemon runs them. */
function defaultCache(): CacheConfig {
  return loadConfig({ env: {}, flags: {}, cwd: dir }).config.caches[0]!;
}

function freshShared(): CacheShared {
  const pos = { segment: 0, offset: 0, lsn: 1 };
  return CacheShared.create({ segmentCount: 8, head: pos, prevCrc: 0, keyTail: pos, dirtyTail: pos, gcPercent: 70, logReserve: 1 });
}

const configKeyed = TUNABLE_DESCRIPTORS.filter((d: TunableDescriptor) => d.key !== null && d.messageOnly !== true) as (TunableDescriptor & { key: string })[];

test('every descriptor names a reloadable schema key; an integer message takes exactly the schema range', (t) => {
  t.true(configKeyed.length >= 15);
  for (const d of configKeyed) {
    const info = keyInfo('cache', d.key);
    t.true(isReloadable('cache', d.key), `${d.key} is reloadable`);
    if (d.messageArg !== 'integer') continue;
    t.is(info.format, 'pcached-integer', `${d.key}: an integer message needs an integer key`);
    for (const verb of [d.message!, ...(d.aliases ?? [])]) {
      t.deepEqual(TUNABLE_MESSAGES[verb], [d.shared!.field as keyof Tunables, info.min!, info.max!, d.key], verb);
    }
  }
  for (const d of TABLE_TUNABLES) t.is(typeof d.show, 'function', `${d.key}: pcached table can show it`);
  t.throws(() => keyInfo('cache', 'flushOnSuspend'), { message: /no cache key/ }, 'a message-only tunable is not in the config file');
  // Every message of a tunable acts on the cache: after `detach` it gets the detached answer.
  for (const d of TUNABLE_DESCRIPTORS as readonly TunableDescriptor[]) {
    for (const verb of d.message ? [d.message, ...(d.aliases ?? [])] : []) t.true(CACHE_ONLY_MESSAGES.has(verb), verb);
  }
});

test('the initial shared words are the schema defaults, converted; a default config changes none', (t) => {
  const fromConfig = tunablesOf(defaultCache());
  const { cacheFullMaxWaitMs, ...configured } = DEFAULT_TUNABLES;
  t.deepEqual(fromConfig, configured);
  t.is(cacheFullMaxWaitMs, 60_000, 'the one word without a key keeps its own initial value');
  const sh = freshShared();
  for (const { shared } of SHARED_TUNABLES) t.is(sh[shared.field], DEFAULT_TUNABLES[shared.field], shared.field);
});

test('every message round-trips: message → running config → shared word → table row', (t) => {
  const cache = defaultCache();
  for (const [verb, [field, min, max, key]] of Object.entries(TUNABLE_MESSAGES)) {
    // The end of the range that differs from the default, so the word visibly changes.
    const n = DEFAULT_TUNABLES[field] === max ? min : max;
    const rt = new RuntimeTunables(cache);
    rt.set(key, n);
    const sh = freshShared();
    sh.setTunables(tunablesOf(rt.running));
    t.is(sh[field], n, `${verb} ${n}: shared word ${field}`);
    const row = rt.rows().find((r) => r.key === key)!;
    const d = TABLE_TUNABLES.find((x) => x.key === key)!;
    t.like(row, { message: d.message, value: n, shown: d.show(n), source: 'message' }, verb);
    t.deepEqual(changedSharedKeys(cache, rt.running), [key], `${verb}: a reload diff names its key only`);
  }
});

test('the words that convert: cleaner 0/1, promotion nhit:N, a writeback rate past 2^31', (t) => {
  const sh = freshShared();
  let c = defaultCache();
  c = withValue(withValue(withValue(c, 'cleaner', true), 'promotion', 'nhit:3'), 'writeback.rate', 2 ** 40);
  sh.setTunables(tunablesOf(c));
  t.true(sh.cleaner);
  t.is(sh.promoteHits, 3);
  t.is(sh.writebackRate, 2 ** 40);
  const kicks = sh.word(W_KICK_WB);
  sh.setTunables({ cleaner: false });
  t.false(sh.cleaner);
  t.is(sh.word(W_KICK_WB), kicks + 1, 'the cleaner wakes the writeback worker');
  sh.setTunables({ maxAgeMs: 5 });
  t.is(sh.word(W_KICK_WB), kicks + 1, 'other tunables do not');
});

test('the tunables\' words are their own: inside their region, apart, and away from every other word', (t) => {
  const used = new Map<number, string>();
  for (const { shared } of SHARED_TUNABLES) {
    const w = TUNABLE_WORDS[shared.field];
    const words = shared.kind === 'int64' ? [w, w + 1] : [w];
    if (shared.kind === 'int64') t.is(w % 2, 0, `${shared.field}: a BigInt64 word is aligned`);
    for (const x of words) {
      t.true(x >= TUNABLE_WORDS_FIRST && x < TUNABLE_WORDS_END, `${shared.field}: word ${x} in the region`);
      t.false(used.has(x), `${shared.field}: word ${x} is also ${used.get(x)}`);
      used.set(x, shared.field);
    }
  }
  const others = [W_LOG_LOCK, W_SYNC_LOCK, W_SYNC_STARTED, W_SYNC_DONE, W_SYNC_LAST_FAILED, W_FAILED, W_FAILED_WHY, W_KICK_WB, W_FREED, W_KICK_GC, W_STOP, W_FOREGROUND,
    REC_CACHE_INFO, REC_CACHE_INFO + 1, REC_KEY_TAIL, REC_KEY_TAIL + 1, REC_DIRTY_TAIL, REC_DIRTY_TAIL + 1];
  for (const w of others) t.false(used.has(w), `word ${w} is not a tunable's`);

  // The words private to shared.ts: every tunable at a value of its own leaves the rest of the header as it was.
  const sh = freshShared();
  const before = { head: sh.head(), keyTail: sh.keyTail(), dirtyTail: sh.dirtyTail(), gc: sh.gcPercent, mode: sh.mode, used: sh.usedSegments, reserve: sh.logReserve,
    errors: sh.errors, detached: sh.detached, epochs: sh.epochsPending, faults: sh.testFaults, durable: sh.durableLsn, dirty: sh.dirtyBytes, segments: sh.segmentCount };
  const values = Object.fromEntries(SHARED_TUNABLES.map(({ shared }, i) => [shared.field, shared.kind === 'bool' ? true : 1000 + i])) as unknown as Tunables;
  sh.setTunables(values);
  for (const { shared } of SHARED_TUNABLES) t.is(sh[shared.field], values[shared.field], shared.field);
  const after = { head: sh.head(), keyTail: sh.keyTail(), dirtyTail: sh.dirtyTail(), gc: sh.gcPercent, mode: sh.mode, used: sh.usedSegments, reserve: sh.logReserve,
    errors: sh.errors, detached: sh.detached, epochs: sh.epochsPending, faults: sh.testFaults, durable: sh.durableLsn, dirty: sh.dirtyBytes, segments: sh.segmentCount };
  t.deepEqual(after, before);
  t.is(new CacheShared(sh.sab).maxAgeMs, values.maxAgeMs, 'another thread\'s view reads the same words');
});
