// Rewrites the generated manual pages (docs/man/pcached.8, docs/man/pcached.json.5) and the bash
// completion (contrib/pcached.bash) from the command line and the schema. Run after
// `npm run build`; test/man-pages.test.ts fails until the committed files match.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
let man;
try {
  man = await import(path.join(root, 'dist', 'src', 'cli', 'man.js'));
} catch (err) {
  console.error(`gen-man: cannot load dist/ (run \`npm run build\` first): ${err.message}`);
  process.exit(1);
}
const { version } = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
for (const { path: rel, text } of await man.generatedDocs(version)) {
  const file = path.join(root, rel);
  let before = null;
  try { before = readFileSync(file, 'utf8'); } catch { /* new */ }
  if (before === text) {
    console.log(`${rel}: already up to date`);
  } else {
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, text);
    console.log(`${rel}: rewritten`);
  }
}
