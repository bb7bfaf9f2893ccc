// nbdinfo against the daemon: export metadata (--json) and export listing (--list).

import test from 'ava';
import { startDaemon, isNbdkit, nbdUri, SERVER, type Daemon } from './helpers/daemon.js';
import { existsSync } from 'node:fs';
import { needTools, skipSuffix, run, runOk, describe, noteSkipped } from './helpers/tools.js';

const why = needTools('nbdinfo');
const t_ = why ? test.serial.skip : test.serial;
const SIZE = 64 * 1024 * 1024;
let d: Daemon | undefined;

test.before(async () => {
  if (!why) d = await startDaemon({ name: 'vol-info', originSize: SIZE });
});
test.after.always(async () => {
  await d?.dispose();
});

interface NbdinfoExport {
  'export-name': string;
  description?: string;
  'export-size': number;
  is_read_only: boolean;
  can_flush: boolean; can_fua: boolean; can_trim: boolean; can_zero: boolean;
  can_multi_conn: boolean; can_cache: boolean; can_fast_zero: boolean; can_df?: boolean;
  contexts?: string[];
  block_size_minimum?: number; block_size_preferred?: number; block_size_maximum?: number;
}
interface NbdinfoJson { protocol: string; structured: boolean; exports: NbdinfoExport[] }

t_(`nbdinfo --json reports size, name, flags, block sizes and description${skipSuffix(why)}`, async (t) => {
  const r = await runOk('nbdinfo', ['--json', d!.uri], { timeoutMs: 30_000 });
  const j = JSON.parse(r.stdout) as NbdinfoJson;
  t.is(j.protocol, 'newstyle-fixed');
  t.true(j.structured, 'structured replies negotiated');
  t.is(j.exports.length, 1);
  const e = j.exports[0]!;
  t.is(e['export-name'], 'vol-info');
  t.is(e['export-size'], SIZE);
  t.false(e.is_read_only);
  for (const k of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn', 'can_cache'] as const) {
    t.true(e[k], k);
  }
  if (isNbdkit) noteSkipped(t, 'can_fast_zero', 'nbdkit file plugin does not advertise fast zero');
  else t.true(e.can_fast_zero, 'can_fast_zero');
  t.true(e.contexts?.includes('base:allocation'), `contexts: ${JSON.stringify(e.contexts)}`);
  if (isNbdkit) {
    noteSkipped(t, 'block_size_minimum/preferred/maximum', 'nbdkit file plugin does not send NBD_INFO_BLOCK_SIZE');
  } else {
    t.is(e.block_size_minimum, 1);
    t.is(e.block_size_preferred, 4096);
    t.is(e.block_size_maximum, 64 * 1024 * 1024, 'the largest READ/WRITE accepted');
  }
  t.is(typeof e.description, 'string', 'NBD_INFO_DESCRIPTION sent on request');
  t.true((e.description ?? '').length > 0);
});

t_(`default export "" is the same volume${skipSuffix(why)}`, async (t) => {
  const r = await runOk('nbdinfo', ['--json', nbdUri(d!.sock, '')], { timeoutMs: 30_000 });
  const j = JSON.parse(r.stdout) as NbdinfoJson;
  t.is(j.exports[0]!['export-size'], SIZE);
  const size = await runOk('nbdinfo', ['--size', nbdUri(d!.sock, '')], { timeoutMs: 30_000 });
  t.is(size.stdout.trim(), String(SIZE));
});

t_(`nbdinfo --list lists the export with its description${skipSuffix(why)}`, async (t) => {
  const r = await runOk('nbdinfo', ['--list', '--json', nbdUri(d!.sock, '')], { timeoutMs: 30_000 });
  const j = JSON.parse(r.stdout) as NbdinfoJson;
  const names = j.exports.map((e) => e['export-name']);
  t.true(names.includes('vol-info'), `exports listed: ${JSON.stringify(names)}`);
  const e = j.exports.find((x) => x['export-name'] === 'vol-info')!;
  t.is(e['export-size'], SIZE);
  t.true((e.description ?? '').length > 0, 'description in the listing');
  const plain = await runOk('nbdinfo', ['--list', nbdUri(d!.sock, '')], { timeoutMs: 30_000 });
  t.regex(plain.stdout, /export="vol-info"/);
});

t_(`an unknown export name is refused${skipSuffix(why)}`, async (t) => {
  const r = await runOk('nbdinfo', ['--json', nbdUri(d!.sock, 'no-such-export')], { timeoutMs: 30_000 })
    .then(() => null, (e: Error) => e);
  t.truthy(r, 'nbdinfo must fail for an unknown export');
});

// The kernel client's handshake (NBD_OPT_GO without info requests, no structured replies). Without
// the nbd kernel module nbd-client stops right after negotiating, which still checks the handshake.
const whyKernel = needTools('nbd-client') ??
  (existsSync('/sys/module/nbd') || existsSync('/dev/nbd0') ? 'the nbd kernel module is loaded: nbd-client would really attach a device' : null);
(whyKernel || why ? test.serial.skip : test.serial)(`nbd-client (kernel client) negotiates the export and its size, and lists it${skipSuffix(whyKernel ?? why)}`, async (t) => {
  const r = await run('nbd-client', ['-unix', d!.sock, '/dev/nbd0', '-N', 'vol-info'], { timeoutMs: 30_000 });
  t.regex(r.stdout + r.stderr, /Negotiation: \.\.size = 64MB/, describe(r));
  const l = await run('nbd-client', ['-l', '-unix', d!.sock], { timeoutMs: 30_000 });
  t.is(l.code, 0, describe(l));
  t.regex(l.stdout, /^vol-info\b/m, describe(l));
});

t_(`${SERVER} is still alive and exits 0 on SIGTERM${skipSuffix(why)}`, async (t) => {
  t.true(d!.alive(), `daemon died:\n${d!.stderr()}`);
  const code = await d!.stop('SIGTERM');
  t.is(code, 0, `exit code ${code}; stderr:\n${d!.stderr()}`);
});
