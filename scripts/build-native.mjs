// Builds src/native (fallocate, SEEK_DATA/SEEK_HOLE, block-device ioctls, flock, posix_fadvise) with node-gyp.
// The addon is an optimisation: without it pcached still works (TRIM is ignored, zeroing writes
// zeros, BLOCK_STATUS reports everything as data). So this script never fails an install; a
// failed build prints one line and exits 0.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = path.join(root, 'src', 'native');
const addonPath = path.join(nativeDir, 'build', 'Release', 'pcached_native.node');
const BUILD_TIMEOUT_MS = 5 * 60 * 1000;

function fallback(reason) {
  console.log(`pcached: native addon not built (${reason}); the portable fallback will be used`);
  process.exit(0);
}

/** [command, leading args] for node-gyp: npm's own copy first, so no network fetch is needed. */
function findNodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp, // set by npm for every lifecycle script
    path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  for (const candidate of candidates) {
    if (candidate && existsSync(candidate)) return [process.execPath, [candidate]];
  }
  return ['node-gyp', []];
}

/**
 * node-gyp downloads headers unless told where they are. When the running node ships its own
 * headers (distro packages put them in <prefix>/include/node), use them: builds then work offline.
 */
function nodedirArgs() {
  if (process.env.npm_config_nodedir) return [];
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  return existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? [`--nodedir=${prefix}`] : [];
}

if (process.platform !== 'linux') fallback(`${process.platform} is not Linux`);
if (process.env.PCACHED_SKIP_NATIVE_BUILD === '1') fallback('PCACHED_SKIP_NATIVE_BUILD=1');

const [command, leading] = findNodeGyp();
const result = spawnSync(command, [...leading, 'rebuild', '--loglevel=warn', ...nodedirArgs()], {
  cwd: nativeDir,
  stdio: ['ignore', 'inherit', 'inherit'],
  timeout: BUILD_TIMEOUT_MS,
});
if (result.error) fallback(`cannot run node-gyp: ${result.error.message}`);
if (result.signal) fallback(`node-gyp killed by ${result.signal}`);
if (result.status !== 0) fallback(`node-gyp exited with status ${result.status}`);

// A build that links but cannot load (wrong ABI, missing symbol) is as useless as no build.
try {
  createRequire(import.meta.url)(addonPath);
} catch (err) {
  fallback(`built addon does not load: ${err instanceof Error ? err.message : String(err)}`);
}
console.log(`pcached: native addon built: ${path.relative(root, addonPath)}`);
