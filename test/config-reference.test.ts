// docs/configuration.md carries the reference generated from the convict schema; regenerate it
// with `npm run build && node scripts/gen-config-reference.mjs`.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { extractReference, renderConfigReference, spliceReference } from '../src/config/reference.js';

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
    'stripes', 'readOnly', 'description', 'format', 'originTimeoutMs', 'originConnections', 'slabSize', 'maxConnections']) {
    t.true(text.includes(`| \`${k}\` |`), k);
  }
  t.is(spliceReference('a\n<!-- config-reference:start -->\nold\n<!-- config-reference:end -->\nb'),
    `a\n<!-- config-reference:start -->\n${text}<!-- config-reference:end -->\nb`);
});
