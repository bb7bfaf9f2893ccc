// docs/configuration.md carries the reference generated from the convict schema; regenerate it
// with `npm run build && node scripts/gen-config-reference.mjs`.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { extractReference, renderConfigReference, spliceReference } from '../src/config/reference.js';
import { runCli } from '../src/cli/program.js';
import { CACHE_LEAF_KEYS, keyInfo } from '../config/schema.js';

const REPO = join(import.meta.dirname, '..', '..');

test('docs/configuration.md matches the schema', (t) => {
  const doc = readFileSync(join(REPO, 'docs', 'configuration.md'), 'utf8');
  const section = extractReference(doc);
  t.not(section, undefined, 'docs/configuration.md lacks the config-reference markers');
  t.is(section, renderConfigReference(), 'stale: run `npm run build && node scripts/gen-config-reference.mjs`');
});

test('every key of the schema is in the reference', (t) => {
  const text = renderConfigReference();
  for (const k of ['control', 'logLevel', 'dataDir', 'caches', 'name', 'origin', 'cache', 'cacheSize', 'mode', 'unix', 'tcp',
    'stripes', 'readOnly', 'description', 'format', 'originTimeoutMs', 'originConnections', 'slabSize', 'maxConnections',
    'dataCrc', 'segmentSize', 'gcPercent', 'sequentialCutoff', 'autocommit.timeMs', 'writeback.rate', 'cacheFullWaitMs']) {
    t.true(text.includes(`| \`${k}\` |`), k);
  }
  t.is(spliceReference('a\n<!-- config-reference:start -->\nold\n<!-- config-reference:end -->\nb'),
    `a\n<!-- config-reference:start -->\n${text}<!-- config-reference:end -->\nb`);
});

test('nested keys are listed by their dotted names, with their environment variables and SIGHUP', (t) => {
  const text = renderConfigReference();
  const line = (k: string) => text.split('\n').find((l) => l.startsWith(`| \`${k}\` |`)) ?? '';
  t.true(line('autocommit.timeMs').includes('`PCACHED_AUTOCOMMIT_TIME_MS`'));
  t.true(line('autocommit.timeMs').includes('| yes |'));
  t.true(line('writeback.rate').includes('`PCACHED_WRITEBACK_RATE`'));
  t.true(line('writeback.rate').includes('| yes |'));
  t.true(line('segmentSize').includes('| no |'));
  t.true(line('dataCrc').includes('| no |'));
  t.false(text.includes('| `autocommit` |'), 'a group is not a key of its own');
  t.true(text.includes('`"autocommit": {"timeMs": 1000}` sets `autocommit.timeMs`'));
  t.true(text.includes('`"writeback": {"rate": "100MiB"}` sets `writeback.rate`'));
});

test('every flag of the schema is a `pcached start` option, named after its key', async (t) => {
  let help = '';
  const code = await runCli(['start', '--help'], { stdout: (s) => { help += s; }, stderr: () => {}, env: {}, cwd: '/' });
  t.is(code, 0);
  for (const k of CACHE_LEAF_KEYS) {
    const flag = keyInfo('cache', k).flag;
    if (flag === undefined) continue;
    t.true(help.includes(flag), `${flag} missing from pcached start --help`);
    // commander hands `--cache-size` over as `cacheSize`: the loader relies on it being the key.
    t.is(flag.slice(2).replace(/-([a-z])/g, (_, c: string) => c.toUpperCase()), k);
  }
  for (const flag of ['--data-crc', '--segment-size', '--gc-percent', '--sequential-cutoff']) t.true(help.includes(flag), flag);
});
