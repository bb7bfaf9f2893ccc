// The manual pages pcached(8) and pcached.json(5), rendered from the command line (commander) and
// the convict schema so they cannot drift from the code: docs/man/ holds the output of
// scripts/gen-man.mjs, and test/man-pages.test.ts fails when it is stale.

import type { Command, Option } from 'commander';
import { CACHE_LEAF_KEYS, DAEMON_LEAF_KEYS, isReloadable, keyInfo, type KeyInfo } from '../../config/schema.js';
import { environmentVariables } from '../config/load.js';

/** Escapes text for roff; `code` in the Markdown of the schema docs becomes bold. */
export function roff(text: string): string {
  return text
    .replace(/\\/g, '\\e')
    .replace(/-/g, '\\-')
    .replace(/`([^`]+)`/g, '\\fB$1\\fR')
    .replace(/\[([^\]]+)\]\([^)]+\)/g, '$1')
    .replace(/^([.'])/gm, '\\&$1');
}

function optionLine(o: Option): string {
  const choices = o.argChoices ? ` (${o.argChoices.join(', ')})` : '';
  const dflt = o.defaultValue !== undefined ? ` Default: ${String(o.defaultValue)}.` : '';
  return `.TP\n.B ${roff(o.flags)}\n${roff(`${o.description}${choices}.${dflt}`).replace(/\.\.(\s|$)/g, '.$1')}`;
}

function synopsis(c: Command): string {
  return `.B pcached ${roff(c.name())}\n${roff(c.usage())}`;
}

const FILES = [
  ['./var/control.sock', 'the control socket of the embedded default (mode 0600); `--control` or `control` moves it'],
  ['./var/origin.img, ./var/cache.img, ./var/pcached.sock', "the embedded default's origin, cache file and NBD socket"],
  ['config/default.json', 'the embedded default written out; `config/example.json` a two-cache host'],
];

/** pcached(8). */
export function renderPcached8(program: Command, version: string): string {
  const cmds = program.commands.filter((c) => !(c as unknown as { _hidden?: boolean })._hidden);
  const out: string[] = [
    `.TH PCACHED 8 "" "pcached ${version}" "System Administration"`,
    '.SH NAME',
    `pcached \\- ${roff(program.description())}`,
    '.SH SYNOPSIS',
    ...cmds.flatMap((c) => [synopsis(c), '.br']),
    '.SH DESCRIPTION',
    roff('pcached puts a fast cache device (an SSD, NVMe or pmem file or block device) in front of a slow origin (a local file or block device, or a remote NBD export) and serves the cached volume over NBD to any NBD client. `pcached start` runs the daemon in the foreground: one supervisor process, and one coordinator process per cache with its stripe, writeback and GC threads. The other commands talk to a running daemon over its control socket.'),
    '.PP',
    roff('Write-back (the default mode) is persistent and crash-consistent: a write is durable after FLUSH or FUA, survives kill -9 and power loss, and is written back to the origin in log order, one FLUSH epoch at a time.'),
    '.SH COMMANDS',
  ];
  for (const c of cmds) {
    out.push(`.SS "${roff(`pcached ${c.name()} ${c.usage()}`)}"`, roff(c.description()));
    for (const a of c.registeredArguments) out.push(`.TP\n.I ${roff(a.name())}\n${roff(a.description || (a.required ? 'required' : 'optional'))}`);
    for (const o of c.options) out.push(optionLine(o));
  }
  out.push(
    '.SH RUNTIME STATE',
    roff('A value set by `pcached message` holds until a reload changes that key in the config file, or until the daemon restarts (a coordinator restarted after a crash keeps it); a reload applies only the keys whose value in the file changed. `gc_percent` is also stored in the cache file and survives a restart. `pcached table NAME` shows every running value and where it came from.'),
    '.SH SIGNALS',
    '.TP\n.B SIGTERM, SIGINT',
    roff('Graceful stop: drain requests in flight, commit and sync the cache, exit 0. A second signal more than a second later kills the coordinators at once.'),
    '.TP\n.B SIGHUP',
    roff('Reload the config file; a reload that changes a key needing a restart, or is invalid, is rejected as a whole and the daemon keeps its configuration.'),
    '.SH ENVIRONMENT',
    roff(`${environmentVariables().join(', ')}: see pcached.json(5). PCACHED_CONTROL also names the control socket of the client commands.`),
    '.SH FILES',
    ...FILES.flatMap(([f, what]) => [`.TP\n.I ${roff(f!)}`, roff(what!)]),
    '.SH EXIT STATUS',
    roff('0 on success (and after a graceful stop), 1 when the command failed (one line `pcached: ...` on stderr says why and what to do), 2 for a usage error.'),
    '.SH SEE ALSO',
    '.BR pcached.json (5),',
    '.BR nbdinfo (1),',
    '.BR nbd\\-client (8),',
    '.BR dmsetup (8);',
    roff('docs/operations.md, docs/configuration.md and docs/cache-engine.md in the source tree.'),
  );
  return out.join('\n') + '\n';
}

function keyEntry(key: string, info: KeyInfo<unknown>, dflt: string, reloadable: boolean): string {
  const facts = [`Accepts: ${info.accepts}.`, `Default: ${dflt}.`];
  if (info.env) facts.push(`Environment: ${info.env}.`);
  if (info.flag) facts.push(`Flag: ${info.flag}.`);
  facts.push(reloadable ? 'Reloadable by SIGHUP.' : 'Needs a restart.');
  return `.TP\n.B ${roff(key)}\n${roff(info.doc)}\n.br\n${roff(facts.join(' '))}`;
}

const show = (v: unknown): string => (typeof v === 'string' ? JSON.stringify(v) : JSON.stringify(v));

/** pcached.json(5). */
export function renderPcachedJson5(version: string): string {
  const out: string[] = [
    `.TH PCACHED.JSON 5 "" "pcached ${version}" "File Formats"`,
    '.SH NAME',
    'pcached.json \\- configuration file of pcached(8)',
    '.SH SYNOPSIS',
    '.B pcached start \\-\\-config',
    '.I FILE',
    '.SH DESCRIPTION',
    roff('One JSON object: the daemon keys below at the top level, and `caches`, an array with one object per cache holding the cache keys. Validation is strict: an unknown key, a bad value or a wrong type stops `pcached start` with an error naming the key and the value; a `"$comment"` string is allowed in any object. Booleans are JSON true or false. Precedence: flags > PCACHED_* environment > this file > defaults; the environment and the flags apply to the single-cache form and to a file with exactly one cache. A dotted key is a key of an object: `"autocommit": {"timeMs": 1000}` sets `autocommit.timeMs`.'),
    '.SH DAEMON KEYS',
  ];
  for (const k of DAEMON_LEAF_KEYS) {
    const info = keyInfo('daemon', k as 'control');
    out.push(keyEntry(k, info, show(info.default), isReloadable('daemon', k)));
  }
  const caches = keyInfo('daemon', 'caches');
  out.push(`.TP\n.B caches\n${roff(caches.doc)}\n.br\n${roff(`Accepts: ${caches.accepts}, not empty. Needs a restart to add or remove a cache.`)}`);
  out.push('.SH CACHE KEYS');
  for (const k of CACHE_LEAF_KEYS) {
    const file = keyInfo('cache', k, 'file');
    const single = keyInfo('cache', k, 'single');
    const dflt = file.default === single.default ? show(file.default)
      : `in a file ${file.default === '' && (k === 'origin' || k === 'cache') ? 'required' : show(file.default)}, single-cache form ${show(single.default)}`;
    out.push(keyEntry(k, single, dflt, isReloadable('cache', k)));
  }
  out.push(
    '.SH RELOAD',
    roff('SIGHUP or `pcached reload` re-reads the file and applies it only when every changed key is reloadable; a value set by `pcached message` holds until a reload changes that key in the file.'),
    '.SH EXAMPLE',
    '.nf',
    roff('{\n  "control": "/run/pcached/control.sock",\n  "caches": [\n    { "name": "vol", "origin": "/dev/sdb", "cache": "/dev/nvme0n1p3",\n      "unix": "/run/pcached/vol.sock", "highWatermark": 60 }\n  ]\n}'),
    '.fi',
    '.SH SEE ALSO',
    '.BR pcached (8);',
    roff('docs/configuration.md in the source tree.'),
  );
  return out.join('\n') + '\n';
}

/** Every generated documentation file, relative to the repository root, with its text. */
export async function generatedDocs(version: string): Promise<{ path: string; text: string }[]> {
  const { buildProgram } = await import('./program.js');
  const { renderBashCompletion } = await import('./completion.js');
  const program = buildProgram();
  return [
    { path: 'docs/man/pcached.8', text: renderPcached8(program, version) },
    { path: 'docs/man/pcached.json.5', text: renderPcachedJson5(version) },
    { path: 'contrib/pcached.bash', text: renderBashCompletion(program) },
  ];
}
