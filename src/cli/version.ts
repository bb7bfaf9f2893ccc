// The version `pcached --version` prints: package.json's, read at run time so the two never drift.

import { readFileSync } from 'node:fs';

/** dist/src/cli/version.js → package.json at the repository root. */
const PACKAGE_JSON = new URL('../../../package.json', import.meta.url);

export const PACKAGE_VERSION: string = (JSON.parse(readFileSync(PACKAGE_JSON, 'utf8')) as { version: string }).version;
