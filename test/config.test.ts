// Configuration: sources and precedence, strict errors that name the key and the value, the
// cross-cache rules, diffConfig, and that hostile JSON cannot reach Object.prototype.

import test from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { diffConfig, loadConfig, type ConfigSource, type LoadedConfig } from '../src/config/load.js';
import { isPcachedError } from '../src/util/errors.js';
import type { DaemonConfig } from '../src/config/types.js';
import { scratchDir, removeScratchDirs } from './helpers/scratch.js';

const dir = scratchDir('pcached-config-');
const REPO = join(import.meta.dirname, '..', '..');

function load(src: Partial<ConfigSource> = {}): LoadedConfig {
  return loadConfig({ env: {}, flags: {}, cwd: dir, ...src });
}

let fileNo = 0;
function file(content: unknown): string {
  const p = join(dir, `c${fileNo++}.json`);
  writeFileSync(p, typeof content === 'string' ? content : JSON.stringify(content));
  return p;
}

function configError(t: import('ava').ExecutionContext, fn: () => unknown, ...parts: (string | RegExp)[]): string {
  const err = t.throws(fn);
  t.true(isPcachedError(err, 'ERR_CONFIG'), `expected ERR_CONFIG, got ${String(err)}`);
  for (const p of parts) {
    if (typeof p === 'string') t.true(err!.message.includes(p), `"${err!.message}" should contain "${p}"`);
    else t.regex(err!.message, p);
  }
  return err!.message;
}

const two = (a: object = {}, b: object = {}) => ({
  caches: [
    { name: 'a', origin: '/srv/a.img', cache: '/srv/a.cache', unix: '/run/a.sock', ...a },
    { name: 'b', origin: '/srv/b.img', cache: '/srv/b.cache', tcp: '127.0.0.1:10810', ...b },
  ],
});

test.after.always(removeScratchDirs);

test('embedded default: paths under ./var, documented defaults, stripes = cores - 1', (t) => {
  const { config, embeddedDefault, configFile } = load();
  t.true(embeddedDefault);
  t.is(configFile, undefined);
  t.is(config.control, join(dir, 'var/control.sock'));
  t.is(config.dataDir, join(dir, 'var'));
  t.is(config.logLevel, 'info');
  t.deepEqual(config.caches, [{
    name: 'default', origin: join(dir, 'var/origin.img'), cache: join(dir, 'var/cache.img'), cacheSize: 256 * 2 ** 20,
    mode: 'writeback', unix: join(dir, 'var/pcached.sock'), tcp: '127.0.0.1:10809',
    unixMode: 0o600, unixGroup: '', tls: 'off', tlsCertificates: '', tlsPsk: '', tlsVerifyPeer: false, allowRemotePlaintext: false,
    stripes: Math.max(1, Math.min(availableParallelism() - 1, 64)), readOnly: false, description: '', format: false, discardDirty: false,
    originTimeoutMs: 30000, originConnections: 1, originQueueDepth: 32, cacheDirectIo: 'auto', cacheQueueDepth: 32, slabSize: 32 * 2 ** 20, maxConnections: 256,
    dataCrc: false, segmentSize: 16 * 2 ** 20, gcPercent: 70, sequentialCutoff: 4 * 2 ** 20,
    autocommit: { timeMs: 1000, blocks: 65_536 }, writeback: { rate: 0, jobs: 16 }, cacheFullWaitMs: 2000, pauseWritebackMs: 1000,
    highWatermark: 50, lowWatermark: 45, maxAgeMs: 0, cleaner: false, promotion: 'always',
  }]);
});

test('config/default.json is the embedded default written out', (t) => {
  const fromFile = load({ configFile: join(REPO, 'config/default.json') });
  t.deepEqual(fromFile.config, load().config);
  t.false(fromFile.embeddedDefault, 'a named origin is never created');
});

test('config/example.json is valid: two caches, one with an NBD origin', (t) => {
  const { config } = load({ configFile: join(REPO, 'config/example.json') });
  t.deepEqual(config.caches.map((c) => c.name), ['vm1', 'data']);
  t.is(config.caches[1]!.origin, 'nbd+unix:///data?socket=/run/nbdkit.sock');
  t.is(config.caches[1]!.cacheSize, 16 * 2 ** 30);
  t.is(config.caches[0]!.mode, 'writeback');
  t.deepEqual(config.caches[0]!.autocommit, { timeMs: 500, blocks: 65_536 });
  t.deepEqual(config.caches[0]!.writeback, { rate: 200 * 2 ** 20, jobs: 16 });
  t.is(config.caches[0]!.segmentSize, 32 * 2 ** 20);
  t.is(config.caches[1]!.sequentialCutoff, 16 * 2 ** 20);
  t.deepEqual(config.caches[1]!.autocommit, { timeMs: 1000, blocks: 65_536 }, 'an absent group takes its defaults');
});

test('precedence: flags > environment > file > defaults', (t) => {
  const cfg = file({ logLevel: 'warn', caches: [{ name: 'f', origin: '/o', cache: '/c', unix: '/s.sock', stripes: 3, description: 'file' }] });
  const base = load({ configFile: cfg }).config;
  t.is(base.logLevel, 'warn');
  t.is(base.caches[0]!.stripes, 3);
  const env = { PCACHED_LOG_LEVEL: 'debug', PCACHED_STRIPES: '5', PCACHED_DESCRIPTION: 'env' };
  const withEnv = load({ configFile: cfg, env });
  t.is(withEnv.config.logLevel, 'debug');
  t.is(withEnv.config.caches[0]!.stripes, 5);
  t.is(withEnv.config.caches[0]!.description, 'env');
  const withFlags = load({ configFile: cfg, env, flags: { logLevel: 'error', stripes: '7' } });
  t.is(withFlags.config.logLevel, 'error');
  t.is(withFlags.config.caches[0]!.stripes, 7);
  t.is(withFlags.config.caches[0]!.description, 'env');
  t.true(withFlags.overrides.includes('--stripes'));
  t.true(withFlags.overrides.includes('PCACHED_DESCRIPTION'));
  // $PCACHED_CONFIG names the file when --config does not.
  t.is(load({ env: { PCACHED_CONFIG: cfg } }).config.caches[0]!.name, 'f');
});

test('single-cache form from flags and environment; relative paths resolve against cwd', (t) => {
  const { config, embeddedDefault } = load({
    env: { PCACHED_CACHE_SIZE: '1G', PCACHED_READ_ONLY: 'yes', PCACHED_CONTROL: 'ctl.sock' },
    flags: { origin: 'disk.img', cache: '/fast/c.img', name: 'vol', tcp: '[::1]:10809', unix: '' },
  });
  t.false(embeddedDefault);
  const c = config.caches[0]!;
  t.is(c.origin, join(dir, 'disk.img'));
  t.is(c.cache, '/fast/c.img');
  t.is(c.cacheSize, 2 ** 30);
  t.true(c.readOnly);
  t.is(c.tcp, '[::1]:10809');
  t.is(c.unix, '');
  t.is(config.control, join(dir, 'ctl.sock'));
  t.is(load({ flags: { origin: 'nbd://host:10809/exp' } }).config.caches[0]!.origin, 'nbd://host:10809/exp');
});

test('errors name the key and the bad value', (t) => {
  configError(t, () => load({ configFile: file({ caches: [{ name: 'x', origin: '/o', cache: '/c', unix: '/u', stripes: -3 }] }) }),
    'caches[0].stripes: must be an integer between 1 and 64, or 0 for one per core but one: value was -3');
  configError(t, () => load({ flags: { stripes: 'many' } }), 'stripes:', 'value was "many"');
  configError(t, () => load({ env: { PCACHED_STRIPES: '8x' } }), 'stripes:', 'value was "8x"');
  configError(t, () => load({ flags: { name: '' } }), 'name: must not be empty', 'value was ""');
  configError(t, () => load({ flags: { name: 'a\0b' } }), 'name: must not contain a NUL');
  configError(t, () => load({ flags: { name: 'é'.repeat(129) } }), 'name: must be at most 256 bytes');
  t.notThrows(() => load({ flags: { name: 'é'.repeat(128) } }));
  configError(t, () => load({ flags: { tcp: 'localhost' } }), 'tcp: must be HOST:PORT', 'value was "localhost"');
  configError(t, () => load({ flags: { tcp: '::1:10809' } }), 'tcp:', 'value was "::1:10809"');
  configError(t, () => load({ flags: { tcp: 'h:70000' } }), 'tcp:');
  configError(t, () => load({ env: { PCACHED_LOG_LEVEL: 'loud' } }), 'logLevel: must be one of', 'value was "loud"');
  configError(t, () => load({ env: { PCACHED_READ_ONLY: 'perhaps' } }), 'readOnly: must be true or false', 'value was "perhaps"');
  configError(t, () => load({ flags: { origin: 'http://x/y' } }), 'origin: unsupported URI scheme');
  configError(t, () => load({ flags: { origin: 'nbd+unix:///x' } }), 'origin: an nbd+unix:// URI needs ?socket=PATH');
  configError(t, () => load({ configFile: file({ caches: [{ name: 'x', cache: '/c', unix: '/u' }] }) }), 'caches[0].origin: is missing: every cache in a config file names its origin');
  configError(t, () => load({ configFile: file({ caches: [{ name: 'x', origin: '', cache: '/c', unix: '/u' }] }) }), 'caches[0].origin: must not be empty', 'value was ""');
  configError(t, () => load({ configFile: file({ caches: [] }) }), 'caches: is empty: list at least one cache');
  configError(t, () => load({ configFile: file({ caches: [{ name: 'x', origin: '/o', cache: '/c', unix: '/u', readOnly: 'yes' }] }) }), 'caches[0].readOnly: must be true or false (a JSON boolean, without quotes): value was "yes"');
  configError(t, () => load({ configFile: file({ bogus: 1 }) }), 'allowed: control, controlMode, controlGroup, logLevel, dataDir, metrics, caches');
  // Every problem is reported at once, on one line.
  const msg = configError(t, () => load({ flags: { stripes: '99', cacheSize: 'huge' } }), 'stripes:', 'cacheSize:');
  t.false(msg.includes('\n'));
});

test('bad sizes', (t) => {
  configError(t, () => load({ flags: { cacheSize: 'lots' } }), 'cacheSize: must be a size', 'value was "lots"');
  configError(t, () => load({ flags: { cacheSize: '1M' } }), 'cacheSize:', 'value was "1M"');
  configError(t, () => load({ flags: { cacheSize: '16777217' } }), 'multiple of 4KiB');
  configError(t, () => load({ configFile: file({ caches: [{ name: 'x', origin: '/o', cache: '/c', unix: '/u', slabSize: -1 }] }) }), 'caches[0].slabSize:', 'value was -1');
  configError(t, () => load({ configFile: file({ caches: [{ name: 'x', origin: '/o', cache: '/c', unix: '/u', cacheSize: 0 }] }) }), 'caches[0].cacheSize:', 'value was 0');
  t.is(load({ flags: { cacheSize: '1.5G' } }).config.caches[0]!.cacheSize, 1.5 * 2 ** 30);
  t.is(load({ configFile: file({ caches: [{ name: 'x', origin: '/o', cache: '/c', unix: '/u', cacheSize: 2 ** 25 }] }) }).config.caches[0]!.cacheSize, 2 ** 25);
});

test('unknown keys, wrong types and bad files are rejected', (t) => {
  configError(t, () => load({ configFile: file({ bogus: 1 }) }), 'bogus: not a known key');
  configError(t, () => load({ configFile: file(two({ stripe: 2 })) }), 'caches[0].stripe: not a known key');
  configError(t, () => load({ configFile: file(two({ origin: { path: '/x' } })) }), 'caches[0].origin: must be a string, number or boolean');
  configError(t, () => load({ configFile: file({ caches: {} }) }), 'caches: must be an array');
  configError(t, () => load({ configFile: file({ caches: [42] }) }), 'caches[0]: must be an object');
  configError(t, () => load({ configFile: file('{"caches": [') }), 'invalid JSON');
  configError(t, () => load({ configFile: file('[]') }), 'must hold a JSON object');
  configError(t, () => load({ configFile: join(dir, 'missing.json') }), 'no such file');
  // Comments are allowed anywhere, as strings.
  t.notThrows(() => load({ configFile: file({ $comment: 'x', ...two({ $comment: 'y' }) }) }));
  configError(t, () => load({ configFile: file({ $comment: 1 }) }), '$comment: must be a string');
});

test('all five cache modes load; anything else is rejected naming them', (t) => {
  for (const mode of ['writeback', 'writethrough', 'writearound', 'passthrough', 'writeonly'] as const) {
    t.is(load({ flags: { mode } }).config.caches[0]!.mode, mode);
  }
  t.is(load({ configFile: file({ caches: [{ name: 'x', origin: '/o', cache: '/c', unix: '/u', mode: 'writearound' }] }) }).config.caches[0]!.mode, 'writearound');
  configError(t, () => load({ flags: { mode: 'turbo' } }), 'mode: must be one of', 'value was "turbo"');
  t.is(load({ flags: { mode: 'passthrough' } }).config.caches[0]!.mode, 'passthrough');
  t.is(load({ flags: { mode: 'writeback' } }).config.caches[0]!.mode, 'writeback');
  t.is(load({ env: { PCACHED_MODE: 'passthrough' } }).config.caches[0]!.mode, 'passthrough');
  t.is(load().config.caches[0]!.mode, 'writeback', 'the default mode');
});

test('duplicate names, sockets, addresses and files; listeners', (t) => {
  configError(t, () => load({ configFile: file(two({}, { name: 'a' })) }), 'caches[1].name: "a" is already used by caches[0].name');
  configError(t, () => load({ configFile: file(two({}, { unix: '/run/a.sock' })) }), 'caches[1].unix: "/run/a.sock" is already used by caches[0].unix');
  configError(t, () => load({ configFile: file(two({ tcp: '127.0.0.1:10810' })) }), 'caches[1].tcp: "127.0.0.1:10810" is already used by caches[0].tcp');
  configError(t, () => load({ configFile: file({ control: '/run/a.sock', ...two() }) }), 'caches[0].unix: "/run/a.sock" is already used by control');
  configError(t, () => load({ configFile: file(two({}, { cache: '/srv/a.cache' })) }), 'caches[0].cache and caches[1].cache');
  configError(t, () => load({ configFile: file(two({}, { origin: '/srv/a.img' })) }), 'only read-only caches may share an origin');
  t.notThrows(() => load({ configFile: file(two({ readOnly: true }, { origin: '/srv/a.img', readOnly: true })) }));
  configError(t, () => load({ flags: { origin: '/x', cache: '/x' } }), 'cache and origin');
  configError(t, () => load({ configFile: file(two({ unix: '' })) }), 'caches[0]: a cache needs at least one listener');
  configError(t, () => load({ flags: { unix: '', tcp: '' } }), 'needs at least one listener');
  configError(t, () => load({ flags: { unix: `/tmp/${'s'.repeat(120)}.sock` } }), 'unix: socket path is', 'Unix sockets allow 107');
  // Port 0 (a free port each) may repeat.
  t.notThrows(() => load({ configFile: file(two({ tcp: '127.0.0.1:0' }, { tcp: '127.0.0.1:0' })) }));
});

test('single-cache flags and environment with a multi-cache file are an error', (t) => {
  const cfg = file(two());
  configError(t, () => load({ configFile: cfg, flags: { origin: '/x' } }), '--origin set the keys of a single cache', 'defines 2 caches');
  configError(t, () => load({ configFile: cfg, env: { PCACHED_STRIPES: '2' } }), 'PCACHED_STRIPES');
  // Daemon-wide ones are fine.
  t.is(load({ configFile: cfg, flags: { logLevel: 'debug' } }).config.logLevel, 'debug');
});

test('prototype pollution attempts are rejected and harmless', (t) => {
  for (const text of [
    '{"__proto__": {"polluted": 1}}',
    '{"caches": [{"name": "x", "origin": "/o", "cache": "/c", "unix": "/u", "__proto__": {"polluted": 1}}]}',
    '{"constructor": {"prototype": {"polluted": 1}}}',
  ]) {
    configError(t, () => load({ configFile: file(text) }), 'is not allowed');
  }
  t.throws(() => load({ env: { PCACHED_NAME: '__proto__' }, flags: { stripes: '__proto__' } }));
  t.is(({} as Record<string, unknown>).polluted, undefined);
  t.is((Object.prototype as Record<string, unknown>).polluted, undefined);
});

function daemon(caches: Partial<DaemonConfig['caches'][number]>[], extra: Partial<DaemonConfig> = {}): DaemonConfig {
  const base = load().config.caches[0]!;
  return { control: '/c.sock', controlMode: 0o600, controlGroup: '', logLevel: 'info', dataDir: '/var', metrics: { listen: null, allowRemote: false }, caches: caches.map((c) => ({ ...base, ...c })), ...extra };
}

test('diffConfig: reloadable keys, keys needing a restart, caches added and removed', (t) => {
  const old = daemon([{ name: 'a' }, { name: 'b', unix: '/b.sock' }]);
  t.deepEqual(diffConfig(old, structuredClone(old)), { changed: [], reloadable: true, rejected: [], changedCaches: [] });
  t.deepEqual(diffConfig(old, daemon([{ name: 'a', description: 'x' }, { name: 'b', unix: '/b.sock', maxConnections: 3 }], { logLevel: 'debug' })), {
    changed: ['logLevel', 'caches[a].description', 'caches[b].maxConnections'], reloadable: true, rejected: [], changedCaches: ['a', 'b'],
  });
  const d = diffConfig(old, daemon([{ name: 'a', stripes: 99, description: 'x' }, { name: 'b', unix: '/b.sock' }], { control: '/d.sock' }));
  t.false(d.reloadable);
  t.deepEqual(d.rejected, ['control', 'caches[a].stripes']);
  t.deepEqual(d.changed, ['control', 'caches[a].stripes', 'caches[a].description']);
  const added = diffConfig(old, daemon([{ name: 'a' }, { name: 'b', unix: '/b.sock' }, { name: 'c' }]));
  t.deepEqual(added.rejected, ['caches[c] (added)']);
  const removed = diffConfig(old, daemon([{ name: 'a' }]));
  t.deepEqual(removed.rejected, ['caches[b] (removed)']);
  // Order of caches is not a change.
  t.true(diffConfig(old, daemon([{ name: 'b', unix: '/b.sock' }, { name: 'a' }])).reloadable);
});

test('a reload is a fresh load from the same sources', (t) => {
  const path = file(two());
  const first = load({ configFile: path, flags: { logLevel: 'warn' } });
  writeFileSync(path, JSON.stringify({ logLevel: 'debug', ...two({ description: 'new' }) }));
  const second = loadConfig(first.source);
  t.is(second.config.logLevel, 'warn', 'the flag still wins');
  t.deepEqual(diffConfig(first.config, second.config).changed, ['caches[a].description']);
  t.is(JSON.parse(readFileSync(path, 'utf8')).logLevel, 'debug');
});

const one = (extra: object = {}) => ({ caches: [{ name: 'x', origin: '/o', cache: '/c', unix: '/u', ...extra }] });
const cache0 = (l: LoadedConfig) => l.config.caches[0]!;

test('dataCrc: boolean from file, environment and --data-crc', (t) => {
  t.false(cache0(load()).dataCrc);
  t.true(cache0(load({ configFile: file(one({ dataCrc: true })) })).dataCrc);
  t.true(cache0(load({ env: { PCACHED_DATA_CRC: 'on' } })).dataCrc);
  t.false(cache0(load({ env: { PCACHED_DATA_CRC: '0' } })).dataCrc);
  t.true(cache0(load({ flags: { dataCrc: true } })).dataCrc);
  configError(t, () => load({ env: { PCACHED_DATA_CRC: 'maybe' } }), 'dataCrc: must be true or false', 'value was "maybe"');
  configError(t, () => load({ configFile: file(one({ dataCrc: 1 })) }), 'caches[0].dataCrc: must be true or false', 'value was 1');
});

test('segmentSize: 1MiB-1GiB, a multiple of 64KiB, in bytes', (t) => {
  t.is(cache0(load()).segmentSize, 16 * 2 ** 20);
  t.is(cache0(load({ flags: { segmentSize: '1M' } })).segmentSize, 2 ** 20);
  t.is(cache0(load({ flags: { segmentSize: '1GiB' } })).segmentSize, 2 ** 30);
  t.is(cache0(load({ env: { PCACHED_SEGMENT_SIZE: '1088K' } })).segmentSize, 1088 * 1024);
  t.is(cache0(load({ configFile: file(one({ segmentSize: 2 ** 22 })) })).segmentSize, 2 ** 22);
  const expected = 'segmentSize: must be a size 1MiB to 1GiB, a multiple of 64KiB (e.g. "16MiB")';
  configError(t, () => load({ flags: { segmentSize: '512K' } }), expected, 'value was "512K"');
  configError(t, () => load({ flags: { segmentSize: '2G' } }), expected, 'value was "2G"');
  configError(t, () => load({ flags: { segmentSize: '1040K' } }), expected, 'value was "1040K"');
  configError(t, () => load({ flags: { segmentSize: 'big' } }), expected, 'value was "big"');
  configError(t, () => load({ configFile: file(one({ segmentSize: 0 })) }), 'caches[0].segmentSize: must be a size', 'value was 0');
  configError(t, () => load({ configFile: file(one({ segmentSize: true })) }), 'caches[0].segmentSize: must be a size', 'value was true');
});

test('gcPercent: integer 0-90', (t) => {
  t.is(cache0(load()).gcPercent, 70);
  t.is(cache0(load({ flags: { gcPercent: '0' } })).gcPercent, 0);
  t.is(cache0(load({ env: { PCACHED_GC_PERCENT: '90' } })).gcPercent, 90);
  t.is(cache0(load({ configFile: file(one({ gcPercent: 55 })) })).gcPercent, 55);
  configError(t, () => load({ flags: { gcPercent: '91' } }), 'gcPercent: must be an integer between 0 and 90', 'value was 91');
  configError(t, () => load({ flags: { gcPercent: '-1' } }), 'gcPercent: must be an integer between 0 and 90', 'value was -1');
  configError(t, () => load({ env: { PCACHED_GC_PERCENT: '50%' } }), 'gcPercent: must be an integer', 'value was "50%"');
  configError(t, () => load({ configFile: file(one({ gcPercent: 12.5 })) }), 'caches[0].gcPercent: must be an integer', 'value was 12.5');
});

test('sequentialCutoff: 0 (off) or up to 1TiB, a multiple of 512, in bytes', (t) => {
  t.is(cache0(load()).sequentialCutoff, 4 * 2 ** 20);
  t.is(cache0(load({ flags: { sequentialCutoff: '0' } })).sequentialCutoff, 0);
  t.is(cache0(load({ configFile: file(one({ sequentialCutoff: 0 })) })).sequentialCutoff, 0);
  t.is(cache0(load({ flags: { sequentialCutoff: '512' } })).sequentialCutoff, 512);
  t.is(cache0(load({ env: { PCACHED_SEQUENTIAL_CUTOFF: '1T' } })).sequentialCutoff, 2 ** 40);
  t.is(cache0(load({ configFile: file(one({ sequentialCutoff: '64KiB' })) })).sequentialCutoff, 64 * 1024);
  const expected = 'sequentialCutoff: must be 0 (off) or a size 512B to 1TiB, a multiple of 512B (e.g. "4MiB")';
  configError(t, () => load({ flags: { sequentialCutoff: '1000' } }), expected, 'value was "1000"');
  configError(t, () => load({ flags: { sequentialCutoff: '2T' } }), expected, 'value was "2T"');
  configError(t, () => load({ env: { PCACHED_SEQUENTIAL_CUTOFF: 'off' } }), expected, 'value was "off"');
  configError(t, () => load({ configFile: file(one({ sequentialCutoff: -512 })) }), 'caches[0].sequentialCutoff: must be 0 (off)', 'value was -512');
});

test('cacheFullWaitMs: integer 0-600000', (t) => {
  t.is(cache0(load()).cacheFullWaitMs, 2000);
  t.is(cache0(load({ env: { PCACHED_CACHE_FULL_WAIT_MS: '0' } })).cacheFullWaitMs, 0);
  t.is(cache0(load({ configFile: file(one({ cacheFullWaitMs: 600000 })) })).cacheFullWaitMs, 600000);
  configError(t, () => load({ env: { PCACHED_CACHE_FULL_WAIT_MS: '600001' } }), 'cacheFullWaitMs: must be an integer between 0 and 600000', 'value was 600001');
  configError(t, () => load({ configFile: file(one({ cacheFullWaitMs: '2s' })) }), 'caches[0].cacheFullWaitMs: must be an integer', 'value was "2s"');
});

test('originQueueDepth: integer 1-256, default 32', (t) => {
  t.is(cache0(load()).originQueueDepth, 32);
  t.is(cache0(load({ env: { PCACHED_ORIGIN_QUEUE_DEPTH: '1' } })).originQueueDepth, 1);
  t.is(cache0(load({ configFile: file(one({ originQueueDepth: 256 })) })).originQueueDepth, 256);
  configError(t, () => load({ env: { PCACHED_ORIGIN_QUEUE_DEPTH: '0' } }), 'originQueueDepth: must be an integer between 1 and 256', 'value was 0');
  configError(t, () => load({ configFile: file(one({ originQueueDepth: 257 })) }), 'caches[0].originQueueDepth: must be an integer between 1 and 256', 'value was 257');
  configError(t, () => load({ configFile: file(one({ originQueueDepth: 'deep' })) }), 'caches[0].originQueueDepth: must be an integer', 'value was "deep"');
});

test('autocommit.timeMs: a nested key, from the file and the environment', (t) => {
  t.deepEqual(cache0(load()).autocommit, { timeMs: 1000, blocks: 65_536 });
  t.deepEqual(cache0(load({ configFile: file(one({ autocommit: { timeMs: 250 } })) })).autocommit, { timeMs: 250, blocks: 65_536 });
  t.deepEqual(cache0(load({ configFile: file(one({ autocommit: {} })) })).autocommit, { timeMs: 1000, blocks: 65_536 }, 'an empty group keeps the defaults');
  t.deepEqual(cache0(load({ configFile: file(one({ autocommit: { $comment: 'why', timeMs: 3600000 } })) })).autocommit, { timeMs: 3600000, blocks: 65_536 });
  t.deepEqual(cache0(load({ env: { PCACHED_AUTOCOMMIT_TIME_MS: '5' } })).autocommit, { timeMs: 5, blocks: 65_536 });
  // With one cache in the file the environment refines it, nested keys too; the sibling keys stay.
  const l = load({ configFile: file(one({ autocommit: { timeMs: 250 }, writeback: { rate: '1M' } })), env: { PCACHED_AUTOCOMMIT_TIME_MS: '7' } });
  t.deepEqual(cache0(l).autocommit, { timeMs: 7, blocks: 65_536 });
  t.deepEqual(cache0(l).writeback, { rate: 2 ** 20, jobs: 16 });
  t.true(l.overrides.includes('PCACHED_AUTOCOMMIT_TIME_MS'));
  configError(t, () => load({ env: { PCACHED_AUTOCOMMIT_TIME_MS: '0' } }), 'autocommit.timeMs: must be an integer between 1 and 3600000', 'value was 0');
  configError(t, () => load({ env: { PCACHED_AUTOCOMMIT_TIME_MS: '1s' } }), 'autocommit.timeMs: must be an integer', 'value was "1s"');
  configError(t, () => load({ configFile: file(one({ autocommit: { timeMs: 3600001 } })) }), 'caches[0].autocommit.timeMs: must be an integer between 1 and 3600000', 'value was 3600001');
});

test('writeback.rate: a nested size, 0 = unlimited, in bytes per second', (t) => {
  t.deepEqual(cache0(load()).writeback, { rate: 0, jobs: 16 });
  t.deepEqual(cache0(load({ configFile: file(one({ writeback: { rate: '100MiB' } })) })).writeback, { rate: 100 * 2 ** 20, jobs: 16 });
  t.deepEqual(cache0(load({ configFile: file(one({ writeback: { rate: 3_000_000, jobs: 64 } })) })).writeback, { rate: 3_000_000, jobs: 64 });
  configError(t, () => load({ configFile: file(one({ writeback: { jobs: 0 } })) }), 'caches[0].writeback.jobs', 'value was 0');
  t.deepEqual(cache0(load({ env: { PCACHED_WRITEBACK_RATE: '1.5G' } })).writeback, { rate: 1.5 * 2 ** 30, jobs: 16 });
  t.deepEqual(cache0(load({ env: { PCACHED_WRITEBACK_RATE: '0' } })).writeback, { rate: 0, jobs: 16 });
  const expected = 'writeback.rate: must be 0 (unlimited) or a size 1MiB to 1TiB (e.g. "100MiB")';
  configError(t, () => load({ env: { PCACHED_WRITEBACK_RATE: '100K' } }), expected, 'value was "100K"');
  configError(t, () => load({ env: { PCACHED_WRITEBACK_RATE: 'fast' } }), expected, 'value was "fast"');
  configError(t, () => load({ configFile: file(one({ writeback: { rate: -1 } })) }), `caches[0].${expected}`, 'value was -1');
  configError(t, () => load({ configFile: file(one({ writeback: { rate: false } })) }), 'caches[0].writeback.rate: must be 0 (unlimited)', 'value was false');
});

test('groups: unknown nested keys, wrong shapes and a dotted key in the file are rejected', (t) => {
  configError(t, () => load({ configFile: file(one({ autocommit: { foo: 1 } })) }),
    'caches[0].autocommit.foo: not a known key (allowed: timeMs, blocks): value was 1');
  configError(t, () => load({ configFile: file(one({ writeback: { rate: '1M', burst: '2M' } })) }), 'caches[0].writeback.burst: not a known key (allowed: rate, jobs)');
  configError(t, () => load({ configFile: file(one({ autocommit: 1000 })) }), 'caches[0].autocommit: must be an object with the keys timeMs', 'value was 1000');
  configError(t, () => load({ configFile: file(one({ writeback: '100M' })) }), 'caches[0].writeback: must be an object with the keys rate', 'value was "100M"');
  configError(t, () => load({ configFile: file(one({ autocommit: null })) }), 'caches[0].autocommit: must be an object', 'value was null');
  configError(t, () => load({ configFile: file(one({ autocommit: [1] })) }), 'caches[0].autocommit: must be an object');
  configError(t, () => load({ configFile: file(one({ autocommit: { timeMs: { ms: 1 } } })) }), 'caches[0].autocommit.timeMs: must be a string, number or boolean');
  configError(t, () => load({ configFile: file(one({ 'autocommit.timeMs': 5 })) }), 'caches[0].autocommit.timeMs: not a known key');
  configError(t, () => load({ configFile: file('{"caches": [{"name": "x", "origin": "/o", "cache": "/c", "unix": "/u", "autocommit": {"__proto__": {"polluted": 1}}}]}') }), 'is not allowed');
  t.is(({} as Record<string, unknown>).polluted, undefined);
  // Several caches: each its own group values; the single-cache environment is refused.
  const l = load({ configFile: file(two({ autocommit: { timeMs: 10 } }, { writeback: { rate: '2M' } })) });
  t.deepEqual(l.config.caches.map((c) => [c.autocommit.timeMs, c.writeback.rate]), [[10, 0], [1000, 2 * 2 ** 20]]);
  configError(t, () => load({ configFile: file(two()), env: { PCACHED_WRITEBACK_RATE: '2M' } }), 'PCACHED_WRITEBACK_RATE set the keys of a single cache');
});

test('diffConfig: the new reloadable keys, nested ones by their dotted names, and the format-time keys', (t) => {
  const old = daemon([{ name: 'a' }, { name: 'b', unix: '/b.sock' }]);
  const next = daemon([
    { name: 'a', gcPercent: 80, sequentialCutoff: 0, autocommit: { timeMs: 10, blocks: 65_536 } },
    { name: 'b', unix: '/b.sock', writeback: { rate: 2 ** 20, jobs: 16 }, cacheFullWaitMs: 0 },
  ]);
  t.deepEqual(diffConfig(old, next), {
    changed: ['caches[a].gcPercent', 'caches[a].sequentialCutoff', 'caches[a].autocommit.timeMs', 'caches[b].writeback.rate', 'caches[b].cacheFullWaitMs'],
    reloadable: true, rejected: [], changedCaches: ['a', 'b'],
  });
  // Equal groups in fresh objects are not a change.
  t.deepEqual(diffConfig(old, daemon([{ name: 'a', autocommit: { timeMs: 1000, blocks: 65_536 } }, { name: 'b', unix: '/b.sock', writeback: { rate: 0, jobs: 16 } }])).changed, []);
  // mode and pauseWritebackMs switch online.
  t.deepEqual(diffConfig(old, daemon([{ name: 'a', mode: 'writearound' }, { name: 'b', unix: '/b.sock', pauseWritebackMs: 0 }])),
    { changed: ['caches[a].mode', 'caches[b].pauseWritebackMs'], reloadable: true, rejected: [], changedCaches: ['a', 'b'] });
  for (const change of [{ segmentSize: 2 ** 20 }, { dataCrc: true }]) {
    const d = diffConfig(old, daemon([{ name: 'a', ...change, autocommit: { timeMs: 5, blocks: 65_536 } }, { name: 'b', unix: '/b.sock' }]));
    const key = `caches[a].${Object.keys(change)[0]}`;
    t.false(d.reloadable, key);
    t.deepEqual(d.rejected, [key]);
    t.deepEqual(d.changed, [key, 'caches[a].autocommit.timeMs']);
  }
});

test('a reload picks up a nested key changed in the file', (t) => {
  const path = file(two({ autocommit: { timeMs: 100 } }));
  const first = load({ configFile: path });
  writeFileSync(path, JSON.stringify(two({ autocommit: { timeMs: 200 } }, { writeback: { rate: '10M' } })));
  const d = diffConfig(first.config, loadConfig(first.source).config);
  t.deepEqual(d, { changed: ['caches[a].autocommit.timeMs', 'caches[b].writeback.rate'], reloadable: true, rejected: [], changedCaches: ['a', 'b'] });
  writeFileSync(path, JSON.stringify(two({ autocommit: { timeMs: 100 }, segmentSize: '32M' })));
  t.deepEqual(diffConfig(first.config, loadConfig(first.source).config).rejected, ['caches[a].segmentSize']);
});

test('metrics.listen: off by default, HOST:PORT, loopback unless metrics.allowRemote; a restart-only key', (t) => {
  t.deepEqual(load().config.metrics, { listen: null, allowRemote: false });
  t.deepEqual(load({ env: { PCACHED_METRICS_LISTEN: '127.0.0.1:9464' } }).config.metrics, { listen: { host: '127.0.0.1', port: 9464 }, allowRemote: false });
  t.deepEqual(load({ configFile: file({ metrics: { listen: '[::1]:9000' } }) }).config.metrics.listen, { host: '::1', port: 9000 });
  configError(t, () => load({ configFile: file({ metrics: { listen: '0.0.0.0:9464' } }) }), 'metrics.listen: 0.0.0.0 is not a loopback address', 'metrics.allowRemote');
  t.deepEqual(load({ configFile: file({ metrics: { listen: '0.0.0.0:9464', allowRemote: true } }) }).config.metrics.listen, { host: '0.0.0.0', port: 9464 });
  configError(t, () => load({ configFile: file({ metrics: { listen: 'localhost' } }) }), 'metrics.listen: must be HOST:PORT');
  configError(t, () => load({ configFile: file({ metrics: { listen: '127.0.0.1:99999' } }) }), 'metrics.listen: must be HOST:PORT');
  configError(t, () => load({ configFile: file({ metrics: { port: 1 } }) }), 'metrics.port: not a known key');
  const a = load().config;
  const d = diffConfig(a, { ...a, metrics: { listen: { host: '127.0.0.1', port: 1 }, allowRemote: false } });
  t.deepEqual(d.rejected, ['metrics']);
});

test("dm-writecache's controls: watermarks (low at most high), maxAgeMs, cleaner, autocommit.blocks, writeback.jobs; all reloadable", (t) => {
  const c = cache0(load());
  t.deepEqual([c.highWatermark, c.lowWatermark, c.maxAgeMs, c.cleaner, c.autocommit.blocks, c.writeback.jobs], [50, 45, 0, false, 65_536, 16]);
  const f = cache0(load({ configFile: file(one({ highWatermark: 80, lowWatermark: 20, maxAgeMs: 30_000, cleaner: true, autocommit: { blocks: 1024 } })) }));
  t.deepEqual([f.highWatermark, f.lowWatermark, f.maxAgeMs, f.cleaner, f.autocommit.blocks], [80, 20, 30_000, true, 1024]);
  t.is(cache0(load({ env: { PCACHED_CLEANER: 'true', PCACHED_HIGH_WATERMARK: '70' } })).highWatermark, 70);
  configError(t, () => load({ configFile: file(one({ highWatermark: 40, lowWatermark: 45 })) }), 'lowWatermark: must not be above highWatermark (40): value was 45');
  configError(t, () => load({ configFile: file(one({ highWatermark: 0 })) }), 'caches[0].highWatermark: must be an integer between 1 and 100', 'value was 0');
  configError(t, () => load({ configFile: file(one({ maxAgeMs: -1 })) }), 'caches[0].maxAgeMs', 'value was -1');
  configError(t, () => load({ configFile: file(one({ autocommit: { blocks: 0 } })) }), 'caches[0].autocommit.blocks', 'value was 0');
  configError(t, () => load({ configFile: file(one({ cleaner: 'maybe' })) }), 'caches[0].cleaner: must be true or false');
  t.is(cache0(load({ env: { PCACHED_PROMOTION: 'nhit:3' } })).promotion, 'nhit:3');
  for (const bad of ['nhit:1', 'nhit:17', 'nhit', 'sometimes', 'nhit:2x']) {
    configError(t, () => load({ configFile: file(one({ promotion: bad })) }), 'caches[0].promotion: must be "always" or "nhit:N" with N from 2 to 16', `value was "${bad}"`);
  }
  const a = load().config;
  const b = { ...a, caches: [{ ...a.caches[0]!, highWatermark: 60, cleaner: true, autocommit: { timeMs: 1000, blocks: 10 } }] };
  const d = diffConfig(a, b);
  t.true(d.reloadable);
  t.deepEqual(d.changed.sort(), ['caches[default].autocommit.blocks', 'caches[default].cleaner', 'caches[default].highWatermark']);
});
