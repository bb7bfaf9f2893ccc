// Operations through the real daemon: `pcached status NAME` labelled with units and rates and
// `pcached table NAME` agree with --json; messages answer in text; a reload after messages follows
// the one rule for runtime state (docs/operations.md): a message holds until a reload changes that
// key in the file. Every process started here is stopped by its PID in t.teardown.

import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeSparseFile, nbdUri } from './helpers/daemon.js';
import { killPid, pcachedCli, sleep, startServing, statusJson, stopGracefully, waitFor, writeConfig, type RunningDaemon } from './helpers/lifecycle.js';
import { describe, needTools, nbdsh, skipSuffix } from './helpers/tools.js';
import type { CacheStatus } from '../src/daemon/ipc.js';
import { formatBytes } from '../src/util/size.js';

const MiB = 1 << 20;
const NAME = 'vol';
const why = needTools('nbdsh', 'python3-nbd');
const t_ = why ? test.serial.skip : test.serial;

interface Table { name: string; tunables: { key: string; message: string | null; value: unknown; shown: string; source: string }[] }

interface Env { dir: string; file: string; config: Record<string, unknown>; d: RunningDaemon; uri: string }

function cacheEntry(dir: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { name: NAME, origin: join(dir, 'origin.img'), cache: join(dir, 'cache.img'), cacheSize: '32MiB', segmentSize: '1MiB', unix: join(dir, 'nbd.sock'), stripes: 1, ...extra };
}

async function start(t: ExecutionContext, extra: Record<string, unknown> = {}, args: string[] = [], env: Record<string, string> = {}): Promise<Env> {
  const dir = mkdtempSync(join(tmpdir(), 'pcached-ops-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  makeSparseFile(join(dir, 'origin.img'), 64 * MiB);
  const file = join(dir, 'pcached.json');
  const config = { control: join(dir, 'control.sock'), logLevel: 'warn', caches: [cacheEntry(dir, extra)] };
  writeConfig(file, config);
  const d = await startServing(t, ['--config', file, ...args], { cwd: dir, sock: join(dir, 'nbd.sock'), control: join(dir, 'control.sock'), env });
  return { dir, file, config, d, uri: nbdUri(join(dir, 'nbd.sock'), NAME) };
}

async function cli(e: Env, ...args: string[]): Promise<string> {
  const r = await pcachedCli([...args, '--control', e.d.control]);
  if (r.code !== 0) throw new Error(`pcached ${args.join(' ')}: ${describe(r)}`);
  return r.stdout;
}

const status = async (e: Env): Promise<CacheStatus> => (await statusJson(e.d.control)).caches[0]!;
const table = async (e: Env): Promise<Table> => JSON.parse(await cli(e, 'table', NAME, '--json')) as Table;
const row = (tb: Table, key: string) => tb.tunables.find((r) => r.key === key)!;

/** `  label  value` lines of `pcached status NAME` as a map. */
function labelled(text: string): Map<string, string> {
  const rows = new Map<string, string>();
  for (const line of text.split('\n').slice(1)) {
    const m = /^ {2}(\S+(?: \S+)*?) {2,}(.*)$/.exec(line);
    if (m) rows.set(m[1]!, m[2]!);
  }
  return rows;
}

t_('status NAME: labelled, in binary units, with rates over the last minute; --raw and --json agree with it' + skipSuffix(why), async (t) => {
  t.timeout(120_000);
  const e = await start(t, { pauseWritebackMs: 600_000 });
  const w = await nbdsh(`
h.pwrite(b'\\x5a' * ${3 * MiB}, 0)
h.flush()
for i in range(4):
    h.pread(65536, 0)
h.pread(65536, ${32 * MiB})
print('ok')
`, { uri: e.uri });
  t.true(w.stdout.includes('ok'), describe(w));
  // The miss's fill is committed by autocommit (1 s): compare once the positions stand still.
  await waitFor('the log positions to settle', async () => {
    const a = (await status(e)).cacheState!.keyHead;
    await sleep(1200);
    return (await status(e)).cacheState!.keyHead === a;
  }, 30_000, 0);
  const text = await cli(e, 'status', NAME);
  const j = await status(e);
  const raw = (await cli(e, 'status', NAME, '--raw')).trim().split(' ');
  t.log(text);
  const rows = labelled(text);
  const cs = j.cacheState!;
  t.is(text.split('\n')[0], `cache ${NAME}`);
  t.is(rows.get('state'), j.condition);
  t.is(j.condition, 'dirty', 'writeback is paused: the data is dirty');
  t.is(rows.get('mode'), 'writeback');
  t.is(rows.get('dirty'), `${formatBytes(cs.dirtyBlocks * 4096)} (${((100 * cs.dirtyBlocks) / cs.blocks).toFixed(1)} %)`);
  t.regex(rows.get('dirty')!, /^3 MiB \(\d+\.\d %\)$/);
  t.is(rows.get('free'), `${formatBytes(cs.freeBlocks * 4096)} (${((100 * cs.freeBlocks) / cs.blocks).toFixed(1)} %)`);
  t.is(rows.get('key_head'), cs.keyHead);
  t.is(rows.get('dirty_tail'), cs.dirtyTail);
  t.is(rows.get('key_tail'), cs.keyTail);
  t.is(rows.get('errors'), 'none');
  // 64 KiB read 5 times = 80 blocks; the first 4 reads hit the written data, the last misses.
  t.is(cs.readBlocks, 80);
  t.is(cs.readHits, 64);
  // Rates: the daemon samples its counters; a young cache's window covers its age (all of this
  // test's I/O unless the machine is so slow that a minute has passed since the start).
  const m = j.rates!.minute!;
  t.true(m.spanSec > 0 && m.spanSec <= 60, `span ${m.spanSec}`);
  t.is(j.rates!.total.bytesWritten, 3 * MiB);
  t.regex(rows.get('hit ratio')!, new RegExp(`^80\\.0 % total, ${m.hitRatio === null ? '-' : `${(100 * m.hitRatio).toFixed(1)} %`} last (\\d+ s|minute)$`));
  if (m.spanSec < 55) {
    t.is(m.hitRatio, 0.8);
    t.true(Math.abs(m.perSec.bytesWritten! * m.spanSec - 3 * MiB) < 0.05 * 3 * MiB, `${m.perSec.bytesWritten} B/s over ${m.spanSec} s`);
  }
  t.regex(rows.get('written')!, new RegExp(`^3 MiB total, [\\d.]+ (B|KiB|MiB)/s last (\\d+ s|minute)$`));
  t.regex(rows.get('requests')!, /^\d+ total, [\d.]+\/s last/);
  // --raw is dm-writecache's numeric line, the same numbers as --json.
  const wc = cs.writecache!;
  t.is(raw.length, 24);
  t.deepEqual(raw.slice(0, 3).map(Number), [wc.error, wc.blocks, wc.freeBlocks]);
  t.is(raw[15], String(cs.dirtyBlocks));
  t.is(raw[16], cs.keyHead);
  // --raw needs a name.
  const bad = await pcachedCli(['status', '--raw', '--control', e.d.control]);
  t.is(bad.code, 2);
  t.is(bad.stderr, 'pcached: --raw needs a cache NAME (pcached status NAME --raw)\n');
  t.is(await stopGracefully(e.d), 0, e.d.proc.output());
});

t_('table NAME: every running tunable with its source (config file, flag, environment, message, default); text and --json agree' + skipSuffix(why), async (t) => {
  t.timeout(90_000);
  const e = await start(t, { highWatermark: 60 }, ['--gc-percent', '40'], { PCACHED_PROMOTION: 'nhit:3' });
  await cli(e, 'message', NAME, 'max_age', '5000');
  const tb = await table(e);
  t.is(tb.name, NAME);
  for (const key of ['mode', 'cleaner', 'gcPercent', 'highWatermark', 'lowWatermark', 'writeback.jobs', 'writeback.rate', 'pauseWritebackMs', 'maxAgeMs',
    'autocommit.blocks', 'autocommit.timeMs', 'promotion', 'sequentialCutoff', 'cacheFullWaitMs', 'flushOnSuspend']) {
    t.truthy(tb.tunables.find((r) => r.key === key), `table has ${key}`);
  }
  t.like(row(tb, 'highWatermark'), { value: 60, shown: '60 %', source: 'config file', message: 'high_watermark' });
  t.like(row(tb, 'gcPercent'), { value: 40, source: 'flag --gc-percent' });
  t.like(row(tb, 'promotion'), { value: 'nhit:3', source: 'environment PCACHED_PROMOTION' });
  t.like(row(tb, 'maxAgeMs'), { value: 5000, shown: '5000 ms', source: 'message' });
  t.like(row(tb, 'lowWatermark'), { value: 45, source: 'default' });
  t.like(row(tb, 'sequentialCutoff'), { value: 4 * MiB, shown: '4 MiB', source: 'default', message: null });
  t.like(row(tb, 'flushOnSuspend'), { value: false, source: 'default' });
  const text = await cli(e, 'table', NAME);
  const lines = text.trimEnd().split('\n');
  t.is(lines[0], `cache ${NAME}`);
  t.regex(lines[1]!, /^KEY +MESSAGE +VALUE +SOURCE$/);
  t.is(lines.length, 2 + tb.tunables.length);
  for (const [i, r] of tb.tunables.entries()) {
    t.deepEqual(lines[2 + i]!.split(/ {2,}/), [r.key, r.message ?? '-', r.shown, r.source], lines[2 + i]);
  }
  const none = await pcachedCli(['table', 'nope', '--control', e.d.control]);
  t.is(none.code, 1);
  t.is(none.stderr, 'pcached: no cache named "nope" (caches: "vol")\n');
  t.is(await stopGracefully(e.d), 0, e.d.proc.output());
});

t_('messages answer in text, --json gives the data' + skipSuffix(why), async (t) => {
  t.timeout(90_000);
  const e = await start(t);
  const say = (...words: string[]) => cli(e, 'message', NAME, ...words);
  t.is(await say('flush'), 'vol: flushed: every write acknowledged before this message is durable\n');
  t.is(await say('clear_stats'), 'vol: statistics cleared (the rates start again from now)\n');
  t.is(await say('mode', 'writethrough'), 'vol: mode writethrough (was writeback; 0 B dirty)\n');
  t.is(await say('mode', 'writethrough'), 'vol: mode writethrough (unchanged; 0 B dirty)\n');
  t.regex(await say('cleaner', 'on'), /^vol: cleaner on: writes go to the origin and everything is written back \(0 B dirty\); `pcached message vol cleaner off` caches writes again\n$/);
  t.is(await say('cleaner', 'off'), 'vol: cleaner off: writes are cached again (0 B dirty)\n');
  t.is(await say('gc_percent', '33'), 'vol: gc_percent 33 (stored in the cache file)\n');
  t.is(await say('high_watermark', '70'), 'vol: high_watermark 70 (until a reload changes it in the config file, or a restart)\n');
  t.is(await say('promotion', 'nhit:2'), 'vol: promotion nhit:2 (until a reload changes it in the config file, or a restart)\n');
  t.is(await say('flush_on_suspend'), 'vol: flush_on_suspend: the next stop writes everything back first\n');
  t.deepEqual(JSON.parse(await cli(e, 'message', NAME, 'low_watermark', '20', '--json')), { lowWatermark: 20 });
  t.deepEqual(JSON.parse(await cli(e, 'message', NAME, 'mode', 'writeback', '--json')), { mode: 'writeback', from: 'writethrough', dirtyBlocks: 0 });
  t.is(await stopGracefully(e.d), 0, e.d.proc.output());
});

t_('reload after messages: a message holds until a reload changes that key in the file; other keys changing leave it alone' + skipSuffix(why), async (t) => {
  t.timeout(120_000);
  const e = await start(t, { lowWatermark: 40 });
  await cli(e, 'message', NAME, 'mode', 'writethrough');
  await cli(e, 'message', NAME, 'gc_percent', '30');
  await cli(e, 'message', NAME, 'low_watermark', '10');
  await cli(e, 'message', NAME, 'writeback_jobs', '3');
  // A reload that changes only logLevel: every value set by message stays.
  writeConfig(e.file, { ...e.config, logLevel: 'info' });
  t.is(await cli(e, 'reload'), 'reloaded: logLevel\n');
  let tb = await table(e);
  t.is((await status(e)).mode, 'writethrough', 'the mode set by message survived a reload of another key');
  t.like(row(tb, 'mode'), { value: 'writethrough', source: 'message' });
  t.like(row(tb, 'gcPercent'), { value: 30, source: 'message' });
  t.like(row(tb, 'lowWatermark'), { value: 10, source: 'message' });
  t.like(row(tb, 'writeback.jobs'), { value: 3, source: 'message' });
  t.is((await status(e)).cacheState!.gcPercent, 30);
  // The file changes mode and lowWatermark: those take the file's values; the others keep theirs.
  const next = { ...e.config, logLevel: 'info', caches: [cacheEntry(e.dir, { lowWatermark: 20, mode: 'writearound' })] };
  writeConfig(e.file, next);
  t.is(await cli(e, 'reload'), 'reloaded: caches[vol].mode, caches[vol].lowWatermark\n');
  tb = await table(e);
  t.is((await status(e)).mode, 'writearound');
  t.like(row(tb, 'mode'), { value: 'writearound', source: 'config file' });
  t.like(row(tb, 'lowWatermark'), { value: 20, source: 'config file' });
  t.like(row(tb, 'gcPercent'), { value: 30, source: 'message' });
  t.like(row(tb, 'writeback.jobs'), { value: 3, source: 'message' });
  // A message again after that: it overrides the file's value until the next change in the file.
  await cli(e, 'message', NAME, 'mode', 'writeback');
  writeConfig(e.file, { ...next, logLevel: 'debug' });
  await cli(e, 'reload');
  t.like(row(await table(e), 'mode'), { value: 'writeback', source: 'message' });
  // A coordinator killed and restarted by the supervisor is no restart of the daemon: the values
  // set by message come back.
  killPid(e.d.coord);
  const back = await waitFor('the restarted coordinator', async () => {
    const c = await status(e);
    return c.state === 'running' && c.restarts >= 1 && c.pid !== e.d.coord ? c : undefined;
  }, 60_000, 200);
  e.d.coord = back.pid;
  tb = await table(e);
  t.like(row(tb, 'mode'), { value: 'writeback', source: 'message' });
  t.is(back.mode, 'writeback');
  t.like(row(tb, 'writeback.jobs'), { value: 3, source: 'message' });
  t.like(row(tb, 'lowWatermark'), { value: 20, source: 'config file' });
  t.regex(e.d.proc.output(), /values set by message before the restart are kept/);
  // A restart of the daemon starts from the file; gc_percent alone is kept, in the cache file.
  t.is(await stopGracefully(e.d), 0, e.d.proc.output());
  const d2 = await startServing(t, ['--config', e.file], { cwd: e.dir, sock: join(e.dir, 'nbd.sock'), control: e.d.control });
  e.d = d2;
  tb = await table(e);
  t.like(row(tb, 'mode'), { value: 'writearound', source: 'config file' });
  t.like(row(tb, 'writeback.jobs'), { value: 16, source: 'default' });
  t.like(row(tb, 'gcPercent'), { value: 30, source: 'cache file' });
  t.is(await stopGracefully(d2), 0, d2.proc.output());
});

const whyStart = needTools();
(whyStart ? test.skip : test)('refused configurations: each problem named with what to do' + skipSuffix(whyStart), async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pcached-ops-cfg-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  makeSparseFile(join(dir, 'origin.img'), 64 * MiB);
  const file = join(dir, 'bad.json');
  const startWith = async (text: string) => {
    writeFileSync(file, text);
    const r = await pcachedCli(['start', '--config', file], { cwd: dir });
    t.is(r.code, 1, describe(r));
    return r.stderr;
  };
  const good = JSON.stringify(cacheEntry(dir));
  t.regex(await startWith(`{\n  "logLevel": "info"\n  "caches": []\n}\n`),
    /^pcached: config file .*bad\.json: invalid JSON at line 3, column 3: Expected ',' or '}' after property value; fix the file/);
  t.regex(await startWith(`{"caches": [{"name": "vol", "cache": "${join(dir, 'c.img')}", "unix": "${join(dir, 's')}"}]}`),
    /caches\[0\]\.origin: is missing: every cache in a config file names its origin \(a file, a block device or an NBD URI: "origin": "\/dev\/sdb"\)/);
  const unknown = await startWith('{"cache": []}');
  t.regex(unknown, /cache: not a known key \(allowed: control, controlMode, controlGroup, logLevel, dataDir, metrics, caches\)/);
  const yes = await startWith(`{"caches": [${good.replace(/}$/, ', "readOnly": "yes", "dataCrc": "off"}')}]}`);
  t.regex(yes, /caches\[0\]\.readOnly: must be true or false \(a JSON boolean, without quotes\): value was "yes"/);
  t.regex(yes, /caches\[0\]\.dataCrc: must be true or false \(a JSON boolean, without quotes\): value was "off"/);
  const empty = await startWith('{"caches": []}');
  t.regex(empty, /caches: is empty: list at least one cache .*or leave "caches" out/);
  t.false((await import('node:fs')).existsSync(join(dir, 'var')), 'nothing created: no fallback to the embedded default');
});

(whyStart ? test.skip : test)('a TCP port in use: the refusal says to choose another with --tcp' + skipSuffix(whyStart), async (t) => {
  const { createServer } = await import('node:net');
  const holder = createServer();
  await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => holder.close(() => r())));
  const port = (holder.address() as { port: number }).port;
  const dir = mkdtempSync(join(tmpdir(), 'pcached-ops-port-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  makeSparseFile(join(dir, 'origin.img'), 64 * MiB);
  const r = await pcachedCli(['start', '--origin', join(dir, 'origin.img'), '--cache', join(dir, 'cache.img'), '--cache-size', '32M', '--unix', join(dir, 'nbd.sock'),
    '--tcp', `127.0.0.1:${port}`, '--control', join(dir, 'control.sock'), '--stripes', '1', '--log-level', 'silent'], { cwd: dir, timeoutMs: 60_000 });
  t.is(r.code, 1, describe(r));
  t.regex(r.stderr, new RegExp(`cannot listen on tcp:127\\.0\\.0\\.1:${port}: listen EADDRINUSE.*choose another with --tcp HOST:PORT or the cache's "tcp" key, or --tcp '' for none`));
});

const whyDelay = needTools('nbdsh', 'python3-nbd', 'nbdkit');
(whyDelay ? test.serial.skip : test.serial)('pcached clean interrupted (SIGINT): the cleaner is put back as it was before the command exits' + skipSuffix(whyDelay), async (t) => {
  t.timeout(120_000);
  const { startNbdkit } = await import('./helpers/nbdkit.js');
  const { spawnTracked } = await import('./helpers/lifecycle.js');
  const { PCACHED_BIN } = await import('./helpers/daemon.js');
  const dir = mkdtempSync(join(tmpdir(), 'pcached-ops-int-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // A slow origin (2 s per write) and one writeback job: cleaning takes a while.
  const origin = await startNbdkit(join(dir, 'origin.sock'), ['--filter=delay', 'memory', 'size=64M', 'wdelay=2']);
  t.teardown(() => origin.stop());
  const sock = join(dir, 'nbd.sock');
  const control = join(dir, 'control.sock');
  const d = await startServing(t, ['--origin', origin.uri, '--cache', join(dir, 'cache.img'), '--cache-size', '32M', '--segment-size', '1M', '--unix', sock, '--tcp', '',
    '--name', NAME, '--control', control, '--stripes', '1', '--log-level', 'warn'], { cwd: dir, sock, control, env: { PCACHED_PAUSE_WRITEBACK_MS: '600000' } });
  const e = { d } as Env;
  await cli(e, 'message', NAME, 'writeback_jobs', '1');
  const w = await nbdsh(`h.pwrite(b'\\x33' * ${8 * MiB}, 0)\nh.flush()\nprint('ok')`, { uri: nbdUri(sock, NAME) });
  t.true(w.stdout.includes('ok'), describe(w));
  const clean = spawnTracked(process.execPath, [PCACHED_BIN, 'clean', NAME, '--control', control, '--interval', '200']);
  t.teardown(() => clean.stop('SIGKILL').then(() => undefined));
  await waitFor('clean to start', async () => clean.output().includes('to write back') && (await status(e)).cacheState!.cleaner, 30_000, 100);
  process.kill(clean.pid, 'SIGINT');
  t.is(await clean.exited, 130, clean.output());
  t.regex(clean.output(), /clean vol: interrupted with \d+ dirty blocks left; the cleaner is off again, as it was\n/);
  const cs = (await status(e)).cacheState!;
  t.false(cs.cleaner);
  t.true(cs.dirtyBlocks > 0, 'interrupted before the end');
  t.like(row(await table(e), 'cleaner'), { value: false, source: 'default' });
  await d.proc.stop('SIGTERM', 60_000);
});
