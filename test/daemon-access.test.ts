// Who may reach the daemon, through the real daemon: socket files with their final mode and
// group whatever the umask, and refusals at start for a plaintext TCP listener beyond loopback
// and for TLS settings that cannot work.

import test from 'ava';
import { lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, watch, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freshDir, PCACHED_BIN, startDaemon, type Daemon } from './helpers/daemon.js';
import { describe, run } from './helpers/tools.js';

const daemons: Daemon[] = [];
const dirs: string[] = [];
test.after.always(async () => {
  for (const d of daemons) await d.dispose();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A group other than root's and ours, from /etc/group, to give the sockets. */
function otherGroup(): { name: string; gid: number } | undefined {
  for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
    const [name, , gid] = line.split(':');
    if (name && gid && Number(gid) !== 0 && Number(gid) !== process.getgid!()) return { name, gid: Number(gid) };
  }
  return undefined;
}

/** Records the mode of each socket file the first time the folder's watcher sees it. */
function watchFirstModes(dir: string, names: string[]): { modes: Map<string, number>; close(): void } {
  const modes = new Map<string, number>();
  const w = watch(dir, (_ev, file) => {
    if (file === null || !names.includes(file) || modes.has(file)) return;
    try { modes.set(file, lstatSync(join(dir, file)).mode & 0o777); } catch { /* not there yet, or gone */ }
  });
  return { modes, close: () => w.close() };
}

const mode = (p: string): number => lstatSync(p).mode & 0o777;

test.serial('under umask 000 the NBD and control sockets are 0600 from the start, with no leftover bind folder', async (t) => {
  const dir = freshDir();
  dirs.push(dir);
  const watcher = watchFirstModes(dir, ['nbd.sock', 'control.sock']);
  const d = await startDaemon({ dir, umask: '000', stripes: 1 });
  daemons.push(d);
  watcher.close();
  t.is(mode(d.sock).toString(8), '600');
  t.is(mode(d.control).toString(8), '600');
  // inotify reports the socket's appearance; a bind-then-chmod would often be caught at 0777 here.
  t.true(watcher.modes.has('nbd.sock'), 'the watcher saw the socket appear');
  for (const [file, m] of watcher.modes) t.is(m.toString(8), '600', `${file} as first seen`);
  t.deepEqual(readdirSync(dir).filter((f) => f.startsWith('.pc-')), []);
  // The daemon really ran under umask 000 (a socket bound straight into place would be 0777).
  t.regex(readFileSync(`/proc/${d.pid}/status`, 'utf8'), /^Umask:\s+0000$/m);
});

test.serial('unixMode/unixGroup and controlMode/controlGroup give the socket files their mode and group', async (t) => {
  const g = otherGroup();
  if (!g) {
    t.pass('no second group on this host; mode only');
  }
  const d = await startDaemon({
    umask: '022', stripes: 1,
    env: {
      PCACHED_UNIX_MODE: '0660', PCACHED_CONTROL_MODE: '640',
      ...(g ? { PCACHED_UNIX_GROUP: g.name, PCACHED_CONTROL_GROUP: String(g.gid) } : {}),
    },
  });
  daemons.push(d);
  t.is(mode(d.sock).toString(8), '660');
  t.is(mode(d.control).toString(8), '640');
  if (g) {
    t.is(lstatSync(d.sock).gid, g.gid, `group ${g.name}`);
    t.is(lstatSync(d.control).gid, g.gid);
  }
  // The control socket still works for its owner.
  const st = await run(process.execPath, [PCACHED_BIN, 'status', '--control', d.control, '--json'], { timeoutMs: 30_000 });
  t.is(st.code, 0, describe(st));
});

/** `pcached start` that must be refused before it serves anything. */
async function refusedStart(t: import('ava').ExecutionContext, args: string[], env: Record<string, string> = {}): Promise<string> {
  const dir = freshDir();
  dirs.push(dir);
  writeFileSync(join(dir, 'origin.img'), Buffer.alloc(1 << 20));
  const r = await run(process.execPath, [PCACHED_BIN, 'start', '--origin', 'origin.img', '--cache', 'cache.img', '--cache-size', '16M',
    '--unix', join(dir, 'nbd.sock'), '--control', join(dir, 'control.sock'), '--stripes', '1', ...args], { cwd: dir, timeoutMs: 30_000, env: { ...process.env, ...env } });
  t.is(r.code, 1, describe(r));
  t.deepEqual(readdirSync(dir).filter((f) => f.endsWith('.sock')), [], 'nothing listened');
  return r.stderr;
}

test.serial('a TCP listener beyond loopback without tls require is refused at start, naming both ways out', async (t) => {
  for (const tcp of ['0.0.0.0:0', '[::]:0', '192.0.2.1:10809']) {
    const err = await refusedStart(t, ['--tcp', tcp]);
    t.regex(err, /^pcached: invalid configuration: tcp: \S+ is not a loopback address/m, tcp);
    t.regex(err, /set tls to "require" \(with tlsCertificates or tlsPsk\), or set allowRemotePlaintext to true/, tcp);
  }
  // tls on still lets plaintext clients in: refused the same way.
  const dir = freshDir();
  dirs.push(dir);
  writeFileSync(join(dir, 'keys.psk'), `alice:${'ab'.repeat(32)}\n`);
  const err = await refusedStart(t, ['--tcp', '0.0.0.0:0', '--tls', 'on', '--tls-psk', join(dir, 'keys.psk')]);
  t.regex(err, /with tls "on" anyone reaching it could read and write the volume without TLS/);
});

test.serial('TLS settings that cannot work are refused at start with what to do', async (t) => {
  const dir = freshDir();
  dirs.push(dir);
  t.regex(await refusedStart(t, ['--tls', 'require']), /tls: "require" needs credentials: set tlsCertificates .* or tlsPsk/);
  t.regex(await refusedStart(t, ['--tls', 'require', '--tls-certificates', join(dir, 'nope')]), /tlsCertificates: \S+nope: no such folder/);
  mkdirSync(join(dir, 'certs'));
  writeFileSync(join(dir, 'certs', 'server-cert.pem'), 'not a certificate\n');
  t.regex(await refusedStart(t, ['--tls', 'on', '--tls-certificates', join(dir, 'certs')]), /tlsCertificates: cannot read \S+server-key\.pem: no such file/);
  writeFileSync(join(dir, 'certs', 'server-key.pem'), '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n');
  t.regex(await refusedStart(t, ['--tls', 'on', '--tls-certificates', join(dir, 'certs')]), /tlsCertificates: \S+: server-cert\.pem, server-key\.pem do not load: /);
  t.regex(await refusedStart(t, ['--tls-psk', join(dir, 'keys.psk')]), /tlsPsk: is set but tls is "off"/);
  writeFileSync(join(dir, 'keys.psk'), 'alice:xyz\n');
  t.regex(await refusedStart(t, ['--tls', 'require', '--tls-psk', join(dir, 'keys.psk')]), /tlsPsk: \S+keys\.psk line 1: the key of "alice" is not an even number of hex digits/);
  t.regex(await refusedStart(t, [], { PCACHED_UNIX_MODE: '0400' }), /unixMode: must be octal permission bits .* keeping owner read and write/);
  t.regex(await refusedStart(t, [], { PCACHED_UNIX_GROUP: 'no-such-group-pcached' }), /unixGroup: no group named "no-such-group-pcached"/);
});
