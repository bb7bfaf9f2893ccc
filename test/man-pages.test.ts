// The manual pages pcached(8) and pcached.json(5) and the bash completion are generated from the
// command line and the schema; regenerate them with `npm run build && node scripts/gen-man.mjs`.
// Here: the committed files are not stale, they name every command, option and key, they render
// without groff warnings, the completion completes in a real bash, and LICENSE matches
// package.json.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { generatedDocs } from '../src/cli/man.js';
import { buildProgram } from '../src/cli/program.js';
import { CACHE_LEAF_KEYS, DAEMON_LEAF_KEYS } from '../config/schema.js';
import { pcachedCli } from './helpers/lifecycle.js';
import { describe, needTools, run, skipSuffix } from './helpers/tools.js';

const REPO = join(import.meta.dirname, '..', '..');
const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string; license: string };
const committed = (rel: string): string => readFileSync(join(REPO, rel), 'utf8');
const dashes = (s: string): string => s.replace(/-/g, '\\-');

test('docs/man and contrib/pcached.bash match the command line and the schema', async (t) => {
  for (const { path, text } of await generatedDocs(pkg.version)) {
    t.is(committed(path), text, `${path} is stale: run \`npm run build && node scripts/gen-man.mjs\``);
  }
});

test('pcached(8) names every command, argument and option of the CLI; pcached.json(5) every key of the schema', (t) => {
  const page8 = committed('docs/man/pcached.8');
  const program = buildProgram();
  t.true(program.commands.length >= 9);
  for (const c of program.commands) {
    t.true(page8.includes(`.SS "pcached ${c.name()} `), `command ${c.name()}`);
    for (const a of c.registeredArguments) t.true(page8.includes(`.I ${a.name()}`), `${c.name()} argument ${a.name()}`);
    for (const o of c.options) t.true(page8.includes(`.B ${dashes(o.flags)}\n`), `${c.name()} ${o.flags}`);
  }
  // Nothing documented that the CLI does not have.
  const documented = [...page8.matchAll(/^\.B (\\-\\-[a-z-\\]+)/gm)].map((m) => m[1]!.replace(/\\-/g, '-'));
  const real = new Set(program.commands.flatMap((c) => c.options.map((o) => o.long!)));
  t.deepEqual(documented.filter((o) => !real.has(o)), []);
  const page5 = committed('docs/man/pcached.json.5');
  for (const k of [...DAEMON_LEAF_KEYS, 'caches', ...CACHE_LEAF_KEYS]) t.true(page5.includes(`.TP\n.B ${dashes(k)}\n`), `key ${k}`);
  const keys = [...page5.matchAll(/^\.TP\n\.B (\S+)$/gm)].map((m) => m[1]!);
  t.deepEqual(keys, [...DAEMON_LEAF_KEYS, 'caches', ...CACHE_LEAF_KEYS], 'the keys in schema order, and no others');
});

const whyGroff = needTools('groff');
(whyGroff ? test.skip : test)('both pages render without groff warnings' + skipSuffix(whyGroff), async (t) => {
  for (const page of ['docs/man/pcached.8', 'docs/man/pcached.json.5']) {
    const r = await run('groff', ['-man', '-Tutf8', '-ww', '-z', join(REPO, page)]);
    t.is(r.code, 0, describe(r));
    t.is(r.stderr, '', `${page}: ${r.stderr}`);
  }
});

/** What bash's completion offers for the words typed so far (the last one is being completed). */
async function complete(words: string[]): Promise<string[]> {
  const script = `source ${JSON.stringify(join(REPO, 'contrib', 'pcached.bash'))}
COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}
_pcached; printf '%s\\n' "\${COMPREPLY[@]}"`;
  const r = await run('bash', ['--norc', '--noprofile', '-c', script]);
  if (r.code !== 0) throw new Error(describe(r));
  return r.stdout.split('\n').filter(Boolean).sort();
}

const whyBash = needTools('bash');
(whyBash ? test.skip : test)('bash completion: commands, options, option values and message words' + skipSuffix(whyBash), async (t) => {
  t.deepEqual(await complete(['pcached', 'st']), ['start', 'status']);
  t.deepEqual(await complete(['pcached', 'ta']), ['table']);
  t.deepEqual(await complete(['pcached', 'start', '--mo']), ['--mode']);
  t.deepEqual(await complete(['pcached', 'start', '--mode', 'write']), ['writearound', 'writeback', 'writeonly', 'writethrough']);
  t.deepEqual(await complete(['pcached', 'status', '--r']), ['--raw']);
  t.deepEqual(await complete(['pcached', 'message', 'vol', 'cl']), ['cleaner', 'clear_stats']);
  t.deepEqual(await complete(['pcached', 'message', '--control', '/x.sock', 'vol', 'mode', 'pa']), ['passthrough']);
  t.deepEqual(await complete(['pcached', 'message', 'vol', 'high']), ['high_watermark']);
  const r = await pcachedCli(['completion', 'bash']);
  t.is(r.code, 0, describe(r));
  t.is(r.stdout, committed('contrib/pcached.bash'));
  const zsh = await pcachedCli(['completion', 'zsh']);
  t.is(zsh.code, 1);
  t.is(zsh.stderr, 'pcached: no completion for "zsh" yet: only bash (pcached completion bash)\n');
});

test('LICENSE is the license package.json names', (t) => {
  t.is(pkg.license, 'MIT');
  const text = committed('LICENSE');
  t.regex(text, /^MIT License\n/);
  t.regex(text, /Permission is hereby granted, free of charge/);
});
