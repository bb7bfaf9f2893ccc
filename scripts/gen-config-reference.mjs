// Rewrites the generated part of docs/configuration.md (between its config-reference markers)
// from the convict schema. Run after `npm run build`; test/config-reference.test.ts fails until
// the committed file matches.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const docPath = path.join(root, 'docs', 'configuration.md');
let reference;
try {
  reference = await import(path.join(root, 'dist', 'src', 'config', 'reference.js'));
} catch (err) {
  console.error(`gen-config-reference: cannot load dist/ (run \`npm run build\` first): ${err.message}`);
  process.exit(1);
}
const before = readFileSync(docPath, 'utf8');
const after = reference.spliceReference(before);
if (after === before) {
  console.log('docs/configuration.md: already up to date');
} else {
  writeFileSync(docPath, after);
  console.log('docs/configuration.md: configuration reference rewritten');
}
