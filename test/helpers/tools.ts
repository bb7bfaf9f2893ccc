// External tools used by the integration tests: detection, running with a timeout, nbdsh, skips.
//
// Every child started here is killed by its PID when its timeout expires; nothing is left running.

import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants as fsc } from 'node:fs';
import { delimiter, join } from 'node:path';
import type { ExecutionContext } from 'ava';

/** /usr/bin first: the default python3 here is a pyenv one without the `nbd` module. */
export const TOOL_PATH = ['/usr/bin', '/usr/sbin', '/sbin', '/bin', process.env.PATH ?? '']
  .filter(Boolean).join(delimiter);
/**
 * Python for nbdsh scripts: `attempt(f)` runs f and gives 'ok', or the errno name of the nbd.Error
 * it raised, so a script can report every outcome in one JSON line.
 */
export const PY_ATTEMPT = `import nbd
def attempt(f):
    try:
        f()
        return 'ok'
    except nbd.Error as e:
        return e.errno or str(e)`;

export const TOOL_ENV: NodeJS.ProcessEnv = { ...process.env, PATH: TOOL_PATH, LC_ALL: 'C' };

const haveCache = new Map<string, string | null>();

/** Absolute path of `tool` on TOOL_PATH, or null. */
export function which(tool: string): string | null {
  if (haveCache.has(tool)) return haveCache.get(tool)!;
  let found: string | null = null;
  for (const dir of TOOL_PATH.split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, tool);
    try {
      accessSync(p, fsc.X_OK);
      found = p;
      break;
    } catch { /* next */ }
  }
  haveCache.set(tool, found);
  return found;
}

export function have(tool: string): boolean {
  return which(tool) !== null;
}

/** True when `/usr/bin/python3 -c 'import nbd'` works (python3-libnbd; needed by nbdsh). */
export function havePythonNbd(): boolean {
  if (haveCache.has('#python-nbd')) return haveCache.get('#python-nbd') !== null;
  const r = spawnSync('python3', ['-c', 'import nbd'], { env: TOOL_ENV, stdio: 'ignore', timeout: 20_000 });
  const ok = r.status === 0;
  haveCache.set('#python-nbd', ok ? 'yes' : null);
  return ok;
}

/** The tools in `tools` that are missing (`python3-nbd` stands for the Python module). */
export function missingTools(...tools: string[]): string[] {
  return tools.filter((x) => (x === 'python3-nbd' ? !havePythonNbd() : !have(x)));
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  cmdline: string;
}

export interface RunOptions {
  timeoutMs?: number;
  input?: string | Buffer;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Cap on captured output per stream (default 4 MiB; the tail is kept). */
  maxOutput?: number;
}

function quote(a: string): string {
  return /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`;
}

/** Run a command, capture stdout/stderr; kill it (by PID, SIGKILL) when the timeout expires. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const max = opts.maxOutput ?? 4 << 20;
  const cmdline = [cmd, ...args].map(quote).join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      env: opts.env ?? TOOL_ENV,
      cwd: opts.cwd,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    let timedOut = false;
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { out = (out + d).slice(-max); });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { err = (err + d).slice(-max); });
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid !== undefined) {
        try { process.kill(child.pid, 'SIGKILL'); } catch { /* gone */ }
      }
    }, timeoutMs);
    child.on('error', (e) => { clearTimeout(timer); reject(new Error(`${cmdline}: ${e.message}`)); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: out, stderr: err, timedOut, cmdline });
    });
    if (opts.input !== undefined) {
      child.stdin!.on('error', () => { /* child may exit early */ });
      child.stdin!.end(opts.input);
    }
  });
}

/** Describe a finished command for an assertion message. */
export function describe(r: RunResult): string {
  const tail = (s: string) => (s.length > 4000 ? '…' + s.slice(-4000) : s);
  return `${r.cmdline}\n  exit=${r.code} signal=${r.signal}${r.timedOut ? ' (TIMED OUT)' : ''}\n` +
    `  stdout: ${tail(r.stdout).trimEnd()}\n  stderr: ${tail(r.stderr).trimEnd()}`;
}

/** Run a command and throw (with its output) unless it exits 0. */
export async function runOk(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0 || r.timedOut) throw new Error(`command failed: ${describe(r)}`);
  return r;
}

/**
 * Run a Python script under nbdsh (`h` is a handle; with `uri` it is already connected).
 * The script runs with PATH=/usr/bin:$PATH so that python3 has the libnbd module.
 */
export function nbdsh(script: string, opts: RunOptions & { uri?: string } = {}): Promise<RunResult> {
  const args: string[] = [];
  if (opts.uri) args.push('-u', opts.uri);
  args.push('-c', script);
  return run('nbdsh', args, { timeoutMs: 60_000, ...opts });
}

/** nbdsh, and parse the last stdout line as JSON (scripts print `json.dumps(result)` last). */
export async function nbdshJson<T = unknown>(script: string, opts: RunOptions & { uri?: string } = {}): Promise<T> {
  const r = await nbdsh(script, opts);
  if (r.code !== 0 || r.timedOut) throw new Error(`nbdsh failed: ${describe(r)}`);
  const lines = r.stdout.trim().split('\n');
  try {
    return JSON.parse(lines[lines.length - 1] ?? '') as T;
  } catch {
    throw new Error(`nbdsh printed no JSON: ${describe(r)}`);
  }
}

/** Print a reason into the TAP output and let the test pass without checking anything. */
export function skipWithReason(t: ExecutionContext, reason: string): void {
  t.log(`SKIP: ${reason}`);
  t.pass();
}

/** Print why one assertion is not checked here (e.g. nbdkit legitimately differs). */
export function noteSkipped(t: ExecutionContext, what: string, reason: string): void {
  t.log(`not checked: ${what} (${reason})`);
}

/**
 * Load-time decision: the reason why tests needing `tools` cannot run, or null when they can.
 * Use as `const why = needTools('qemu-io'); (why ? test.skip : test)(title + skipSuffix(why), ...)`.
 */
export function needTools(...tools: string[]): string | null {
  const missing = missingTools(...tools);
  return missing.length ? `missing tool(s): ${missing.join(', ')} (run scripts/install-test-deps.sh as root)` : null;
}

/** Title suffix carrying the skip reason into the TAP line (`ok N - title [skipped: …] # SKIP`). */
export function skipSuffix(reason: string | null): string {
  return reason ? ` [skipped: ${reason}]` : '';
}
