// Renders the configuration reference (Markdown) from the convict schema, so the documentation
// cannot drift from what the loader accepts: docs/configuration.md holds this text between its
// markers, test/config-reference.test.ts compares them, scripts/gen-config-reference.mjs rewrites it.

import { CACHE_GROUPS, CACHE_LEAF_KEYS, DAEMON_LEAF_KEYS, keyInfo, isReloadable } from '../../config/schema.js';
import type { KeyInfo } from '../../config/schema.js';

export const REFERENCE_START = '<!-- config-reference:start -->';
export const REFERENCE_END = '<!-- config-reference:end -->';

function code(v: unknown): string {
  return `\`${typeof v === 'string' ? JSON.stringify(v) : String(v)}\``;
}

function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

function row(key: string, info: KeyInfo<unknown>, defaults: string, reloadable: boolean): string {
  const env = info.env ? `\`${info.env}\`` : '';
  const flag = info.flag ? `\`${info.flag}\`` : '';
  return `| \`${key}\` | ${cell(info.accepts)} | ${defaults} | ${env} | ${flag} | ${reloadable ? 'yes' : 'no'} | ${cell(info.doc)} |`;
}

/** `"autocommit": {"timeMs": 1000}` sets `autocommit.timeMs`, from the schema's groups. */
function groupExample(): string {
  const parts = Object.entries(CACHE_GROUPS).map(([group, keys]) => {
    const k = `${group}.${keys[0]}`;
    const info = keyInfo('cache', k);
    const v = info.example ?? info.default;
    return `\`"${group}": {"${keys[0]}": ${JSON.stringify(v)}}\` sets \`${k}\``;
  });
  return `in a config file ${parts.join(', ')}`;
}

const HEADER = [
  '| key | accepts | default | environment | flag | SIGHUP | meaning |',
  '| --- | --- | --- | --- | --- | --- | --- |',
];

export function renderConfigReference(): string {
  const lines: string[] = [];
  lines.push('### Daemon keys', '', 'Top level of the config file.', '', ...HEADER);
  for (const k of DAEMON_LEAF_KEYS) {
    const info = keyInfo('daemon', k as 'control');
    lines.push(row(k, info, code(info.default), isReloadable('daemon', k)));
  }
  const caches = keyInfo('daemon', 'caches');
  lines.push(`| \`caches\` | ${cell(caches.accepts)} | \`[]\` |  |  | no (adding or removing a cache needs a restart) | ${cell(caches.doc)} |`);
  lines.push(
    '',
    '### Cache keys',
    '',
    'One object per element of `caches`, or the single cache of the flags-and-environment form. Where',
    'the two forms differ the default column shows both: in a config file `origin` and `cache` are',
    'required and no listener is on by default. The environment variables and flags apply to the',
    'single-cache form, and to a config file that defines exactly one cache (they override it).',
    `A dotted key is a key of an object: ${groupExample()}.`,
    '',
    ...HEADER,
  );
  for (const k of CACHE_LEAF_KEYS) {
    const file = keyInfo('cache', k, 'file');
    const single = keyInfo('cache', k, 'single');
    const defaults = file.default === single.default
      ? code(file.default)
      : `file: ${file.default === '' && (k === 'origin' || k === 'cache') ? 'required' : code(file.default)}; single: ${code(single.default)}`;
    lines.push(row(k, single, defaults, isReloadable('cache', k)));
  }
  lines.push(
    '',
    '### Rules',
    '',
    '- Precedence: flags > `PCACHED_*` environment > config file > defaults. `--config FILE` or',
    '  `$PCACHED_CONFIG` names the file.',
    '- Validation is strict: an unknown key, a bad value or a wrong type stops `pcached start` with an',
    '  error naming the key and the value. A `"$comment"` string is allowed in any object.',
    '- Relative paths resolve against the directory `pcached start` runs in; `{dataDir}` at the start',
    '  of a path stands for `dataDir`.',
    '- Sizes are bytes or a number with `K`, `M`, `G`, `T` (`KiB`, `MB`... all powers of 1024).',
    '- Cache names, Unix socket paths (including `control`) and TCP addresses must be unique; every',
    '  cache needs at least one listener; a cache file belongs to one cache; an origin may be shared',
    '  only by read-only caches.',
    '- Booleans in a config file are JSON `true` or `false`; the environment also takes `1`/`0`,',
    '  `yes`/`no`, `on`/`off`. An empty `caches` array is refused (leave it out for the single-cache form).',
    '- `dataCrc` and `segmentSize` are format-time keys: they take effect when pcached formats a new',
    '  cache. Changing `segmentSize` does not reformat an existing cache; a cache formatted with the',
    '  other `dataCrc` setting is refused.',
    '- SIGHUP (or `pcached reload`) re-reads the file, validates it as a whole and applies it only if',
    '  every changed key is marked `yes` above; otherwise the reload is rejected',
    '  (`ERR_CONFIG_RELOAD_REJECTED` in the log, naming the keys) and the daemon keeps its running',
    '  configuration. A key set by a flag or the environment keeps that value across reloads. A',
    '  value set by `pcached message` holds until a reload changes that key in the file, or a',
    '  restart ([operations](operations.md#runtime-state-one-rule)).',
  );
  return lines.join('\n') + '\n';
}

/** Replaces the text between the markers of `doc` with the rendered reference. */
export function spliceReference(doc: string, reference: string = renderConfigReference()): string {
  const start = doc.indexOf(REFERENCE_START);
  const end = doc.indexOf(REFERENCE_END);
  if (start < 0 || end < start) throw new Error(`markers ${REFERENCE_START} ... ${REFERENCE_END} not found`);
  return `${doc.slice(0, start + REFERENCE_START.length)}\n${reference}${doc.slice(end)}`;
}

/** The text between the markers (for the test). */
export function extractReference(doc: string): string | undefined {
  const start = doc.indexOf(REFERENCE_START);
  const end = doc.indexOf(REFERENCE_END);
  if (start < 0 || end < start) return undefined;
  return doc.slice(start + REFERENCE_START.length + 1, end);
}
