// The command line as a user meets it: the real bin/pcached in a scratch directory. (The daemon
// itself is exercised by the client tests; here: usage errors, exit codes and messages.)

import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BIN = join(import.meta.dirname, '..', '..', 'bin', 'pcached');

function pcached(args: string[], env: Record<string, string> = {}) {
  const cwd = mkdtempSync(join(tmpdir(), 'pcached-cli-'));
  const { PCACHED_CONTROL: _drop, ...base } = process.env;
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd, env: { ...base, ...env }, encoding: 'utf8', timeout: 30_000 });
  // What a failed command left behind is checked through `left` before the directory goes.
  const left = readdirSync(cwd, { recursive: true }).map(String);
  rmSync(cwd, { recursive: true, force: true });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, cwd, left };
}

test('status with no daemon: one clear line, exit 1', (t) => {
  const r = pcached(['status']);
  t.is(r.code, 1);
  t.is(r.stdout, '');
  t.is(r.stderr, `pcached: no daemon listening on ${join(r.cwd, 'var/control.sock')} (is \`pcached start\` running?)\n`);
});

test('--control and $PCACHED_CONTROL choose the socket', (t) => {
  const r = pcached(['status', '--json', '--control', '/nonexistent/x.sock']);
  t.is(r.code, 1);
  t.is(r.stderr, 'pcached: no daemon listening on /nonexistent/x.sock (is `pcached start` running?)\n');
  const e = pcached(['message', 'default', 'flush'], { PCACHED_CONTROL: '/nonexistent/y.sock' });
  t.is(e.code, 1);
  t.regex(e.stderr, /^pcached: no daemon listening on \/nonexistent\/y\.sock/);
});

test('usage errors: one pcached: line, exit 2', (t) => {
  for (const args of [['start', '--bogus'], ['frobnicate'], ['message'], ['message', 'default'], ['start', '--mode', 'turbo'], ['status', '--control']]) {
    const r = pcached(args);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, /^pcached: /, args.join(' '));
    t.is(r.stderr.trim().split('\n').length, 1, `${args.join(' ')}: ${r.stderr}`);
  }
  t.is(pcached(['--help']).code, 0);
  t.is(pcached(['start', '--help']).code, 0);
});

test('configuration errors: exit 1, the key and value named, nothing created', (t) => {
  const r = pcached(['start', '--stripes', '-3']);
  t.is(r.code, 1);
  t.is(r.stderr, 'pcached: invalid configuration: stripes: must be an integer between 1 and 64, or 0 for one per core but one: value was -3\n');
  t.false(r.left.includes('var'));
  const m = pcached(['start', '--gc-percent', '95']);
  t.is(m.code, 1);
  t.regex(m.stderr, /gcPercent: .*95/);
  t.false(m.left.includes('var'));
});

test('a named origin that does not exist is an error, never created', (t) => {
  const r = pcached(['start', '--origin', 'missing.img', '--log-level', 'silent']);
  t.is(r.code, 1);
  t.regex(r.stderr, /pcached: cache "default": origin .*missing\.img does not exist/);
  t.false(r.left.includes('missing.img'));
});
