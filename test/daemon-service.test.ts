// The daemon as a service manager runs it, through the real `pcached start`: sd_notify readiness
// and stopping (to the test's own NOTIFY_SOCKET listener, with the native addon and with the
// systemd-notify fallback), socket activation (descriptors at fds 3.., by name and by address,
// and a clear refusal when they fit no listener), `pcached run` (captive mode) and its exit
// status, --pidfile, --version, --log-format and the ready line's URIs, and `npm start` + SIGTERM.

import test from 'ava';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freshDir, makeSparseFile, REPO_ROOT } from './helpers/daemon.js';
import { cleanEnv, killPid, pcachedCli, pidRunning, spawnPcached, spawnTracked, statusJson, waitAccepting, waitFor, within, type Proc } from './helpers/lifecycle.js';
import { activatedPorts, startActivated, startNotifyListener } from './helpers/service.js';
import { describe, have, needTools, run, skipSuffix, TOOL_ENV } from './helpers/tools.js';
import { nativeAvailable } from '../src/native/index.js';

const why = needTools('nbdinfo');
const t_ = why ? test.skip : test;
const PACKAGE_VERSION = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;

interface Scratch {
  dir: string;
  origin: string;
  sock: string;
  control: string;
  /** `start` arguments for one cache "vol" served on `sock` only. */
  args: string[];
}

function scratch(t: { teardown(fn: () => unknown): void }): Scratch {
  const dir = freshDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 16 << 20);
  const sock = join(dir, 'nbd.sock');
  const control = join(dir, 'control.sock');
  return {
    dir, origin, sock, control,
    args: ['--origin', origin, '--cache', join(dir, 'cache.img'), '--cache-size', '64M', '--unix', sock, '--tcp', '', '--name', 'vol',
      '--stripes', '1', '--control', control, '--log-level', 'info', '--log-format', 'json'],
  };
}

/** Stops `proc` (and the coordinator it reported) by PID at teardown. */
function owned(t: { teardown(fn: () => unknown): void }, proc: Proc, control?: string): Proc {
  let coord = 0;
  t.teardown(async () => {
    if (control && proc.alive()) coord = (await statusJson(control).catch(() => ({ caches: [] }))).caches[0]?.pid ?? 0;
    await proc.stop('SIGTERM', 30_000);
    killPid(coord);
  });
  return proc;
}

async function nbdinfoSize(uri: string): Promise<string> {
  const r = await run('nbdinfo', ['--size', uri], { timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`nbdinfo ${uri}: ${describe(r)}`);
  return r.stdout.trim();
}

function jsonLines(output: string): Record<string, unknown>[] {
  return output.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
}

t_('READY=1 once the cache serves, STOPPING=1 on drain, STATUS= lines, to a NOTIFY_SOCKET path (native addon)' + skipSuffix(why), async (t) => {
  if (!nativeAvailable()) return t.pass('the native addon is not built here; the fallback test covers sd_notify');
  const s = scratch(t);
  const listener = await startNotifyListener(join(s.dir, 'notify.sock'));
  t.teardown(() => listener.proc.stop('SIGKILL'));
  const proc = owned(t, spawnPcached(s.args, { cwd: s.dir, env: { NOTIFY_SOCKET: join(s.dir, 'notify.sock') } }), s.control);

  const ready = await listener.waitFor('READY=1');
  // Readiness means serving: a client connects the moment READY=1 arrives.
  t.is(await nbdinfoSize(`nbd+unix:///vol?socket=${s.sock}`), String(16 << 20));
  t.true(ready.split('\n').includes(`MAINPID=${proc.pid}`), ready);
  t.regex(ready, /^STATUS=serving 1 cache: nbd\+unix:\/\/\/vol\?socket=\S+nbd\.sock$/m);
  t.regex(listener.datagrams()[0]!, /^STATUS=starting 1 cache$/m, 'a STATUS line before readiness');

  // A reload is bracketed by RELOADING=1 and READY=1.
  const seen = listener.datagrams().length;
  t.is((await pcachedCli(['reload', '--control', s.control])).code, 0);
  await waitFor('READY=1 after the reload', () => listener.datagrams().slice(seen).some((d) => d.split('\n').includes('READY=1')), 10_000, 50);
  const reload = listener.datagrams().slice(seen);
  t.regex(reload[0]!, /^RELOADING=1\nMONOTONIC_USEC=\d+$/);

  // A coordinator being restarted shows in STATUS, and goes from it once it serves again.
  const coord = (await statusJson(s.control)).caches[0]!.pid;
  process.kill(coord, 'SIGKILL');
  await listener.waitFor('STATUS=serving 1 cache: nbd+unix:///vol?socket=' + s.sock + '; cache vol restarting (killed by SIGKILL)', 30_000);
  const restarted = listener.datagrams().length;
  await waitFor('STATUS without the restart', () => listener.datagrams().slice(restarted).find((d) => d === `STATUS=serving 1 cache: nbd+unix:///vol?socket=${s.sock}`), 30_000, 50);

  t.is(await proc.stop('SIGTERM', 30_000), 0);
  const stopping = await listener.waitFor('STOPPING=1', 10_000);
  t.regex(stopping, /^STATUS=draining \(SIGTERM\)$/m);
  t.true(listener.datagrams().indexOf(stopping) > listener.datagrams().indexOf(ready));
});

const noNotify = have('systemd-notify') ? null : 'systemd-notify is not installed';
(noNotify || why ? test.skip : test)('without the native addon, systemd-notify sends READY=1 and STOPPING=1 to an abstract NOTIFY_SOCKET' + skipSuffix(noNotify ?? why), async (t) => {
  const s = scratch(t);
  const address = `@pcached-test-${process.pid}-${Date.now()}`;
  const listener = await startNotifyListener(address);
  t.teardown(() => listener.proc.stop('SIGKILL'));
  const proc = owned(t, spawnPcached(s.args, { cwd: s.dir, env: { NOTIFY_SOCKET: address, PCACHED_NO_NATIVE: '1' } }), s.control);
  const ready = await listener.waitFor('READY=1');
  t.regex(ready, /^STATUS=serving 1 cache/m);
  await waitAccepting(s.sock, proc);
  t.is(await proc.stop('SIGTERM', 30_000), 0);
  await listener.waitFor('STOPPING=1', 10_000);
  t.notRegex(proc.output(), /systemd will not hear/);
});

t_('socket activation by name: passed Unix and TCP descriptors replace the configured listeners' + skipSuffix(why), async (t) => {
  const s = scratch(t);
  const activated = join(s.dir, 'activated.sock');
  const proc = owned(t, startActivated([{ kind: 'unix', path: activated }, { kind: 'tcp' }], ['vol', 'vol'], s.args, { cwd: s.dir }), s.control);
  await waitFor('the ready line', () => /pcached ready/.test(proc.output()), 60_000, 50);
  const [port] = activatedPorts(proc);
  t.truthy(port);
  t.is(await nbdinfoSize(`nbd+unix:///vol?socket=${activated}`), String(16 << 20));
  t.is(await nbdinfoSize(`nbd://127.0.0.1:${port}/vol`), String(16 << 20));
  t.false(existsSync(s.sock), 'the configured socket is not created when one is passed');
  const ready = jsonLines(proc.output()).find((l) => String(l.msg).startsWith('pcached ready'))!;
  t.deepEqual(ready.uris, [`nbd+unix:///vol?socket=${activated}`, `nbd://127.0.0.1:${port}/vol`]);
  // Like sd_listen_fds: the passed descriptors are close-on-exec, so no child inherits them all
  // (Node marks its low descriptors so at start-up: uv_disable_stdio_inheritance).
  const O_CLOEXEC = 0o2000000;
  for (const fd of [3, 4]) {
    const flags = parseInt(/^flags:\s+(\d+)/m.exec(readFileSync(`/proc/${proc.pid}/fdinfo/${fd}`, 'utf8'))![1]!, 8);
    t.true((flags & O_CLOEXEC) !== 0, `fd ${fd} is close-on-exec`);
  }
  const before = (await statusJson(s.control)).caches[0]!;
  t.deepEqual(before.listeners, [`unix:${activated}`, `tcp:127.0.0.1:${port}`]);
  // A restarted coordinator gets the same descriptors again from the supervisor.
  process.kill(before.pid, 'SIGKILL');
  await waitFor('a restarted coordinator', async () => {
    const c = (await statusJson(s.control)).caches[0]!;
    return c.state === 'running' && c.pid !== before.pid ? c : undefined;
  }, 30_000, 100);
  t.is(await nbdinfoSize(`nbd+unix:///vol?socket=${activated}`), String(16 << 20));
  t.is(await nbdinfoSize(`nbd://127.0.0.1:${port}/vol`), String(16 << 20));
  t.is(await proc.stop('SIGTERM', 30_000), 0);
  t.true(existsSync(activated), 'a passed socket file belongs to whoever passed it and stays');
});

t_('socket activation by address: an unnamed descriptor on the configured path serves that cache' + skipSuffix(why), async (t) => {
  const s = scratch(t);
  const proc = owned(t, startActivated([{ kind: 'unix', path: s.sock }], undefined, s.args, { cwd: s.dir }), s.control);
  await waitFor('the ready line', () => /pcached ready/.test(proc.output()), 60_000, 50);
  t.is(await nbdinfoSize(`nbd+unix:///vol?socket=${s.sock}`), String(16 << 20));
  t.regex(proc.output(), /"msg":"socket-activated listener"/);
  t.is(await proc.stop('SIGTERM', 30_000), 0);
});

t_('socket activation that fits no listener is refused with a clear message, before any cache starts' + skipSuffix(why), async (t) => {
  const s = scratch(t);
  const listener = await startNotifyListener(join(s.dir, 'notify.sock'));
  t.teardown(() => listener.proc.stop('SIGKILL'));
  const stray = owned(t, startActivated([{ kind: 'tcp' }], ['other'], s.args, { cwd: s.dir, env: { NOTIFY_SOCKET: join(s.dir, 'notify.sock') } }));
  t.is(await stray.exited, 1);
  const [port] = activatedPorts(stray);
  // systemd shows why in `systemctl status`.
  t.regex(await listener.waitFor(`STATUS=failed: socket activation: descriptor 3 (tcp 127.0.0.1:${port}, name "other") matches no configured listener: name it after a cache (FileDescriptorName=, caches: "vol") or configure that address as a cache's tcp`, 10_000), /^STATUS=failed/);
  t.regex(stray.output(), new RegExp(`pcached: socket activation: descriptor 3 \\(tcp 127\\.0\\.0\\.1:${port}, name "other"\\) matches no configured listener: name it after a cache \\(FileDescriptorName=, caches: "vol"\\)`));
  t.false(existsSync(join(s.dir, 'cache.img')), 'nothing was started');

  const twice = owned(t, startActivated([{ kind: 'unix', path: join(s.dir, 'a.sock') }, { kind: 'unix', path: join(s.dir, 'b.sock') }], ['vol', 'vol'], s.args, { cwd: s.dir }));
  t.is(await twice.exited, 1);
  t.regex(twice.output(), /descriptor 4 \(unix \S+b\.sock, name "vol"\) and descriptor 3 both want the unix listener of cache "vol"/);

  const names = owned(t, startActivated([{ kind: 'unix', path: join(s.dir, 'c.sock') }], ['vol', 'extra'], s.args, { cwd: s.dir }));
  t.is(await names.exited, 1);
  t.regex(names.output(), /pcached: socket activation: LISTEN_FDNAMES has 2 names for LISTEN_FDS=1 descriptors/);
});

t_('pcached run: COMMAND sees $uri, $exportname, $unixsocket, $port; the daemon stops; COMMAND\'s status is the exit code' + skipSuffix(why), async (t) => {
  const s = scratch(t);
  const args = s.args.map((a, i) => (s.args[i - 1] === '--tcp' ? '127.0.0.1:0' : a));
  const ok = owned(t, spawnTracked(process.execPath, [join(REPO_ROOT, 'bin', 'pcached'), 'run', ...args, '--',
    'sh', '-c', 'echo "uri=$uri exportname=$exportname unixsocket=$unixsocket port=$port"; nbdinfo --size "$uri" && nbdinfo --size "nbd://127.0.0.1:$port/vol"'],
  { cwd: s.dir, env: cleanEnv() }));
  t.is(await ok.exited, 0, ok.output());
  t.regex(ok.output(), new RegExp(`^uri=nbd\\+unix:///vol\\?socket=${s.sock} exportname=vol unixsocket=${s.sock} port=\\d+$`, 'm'));
  t.is(ok.output().match(new RegExp(`^${16 << 20}$`, 'gm'))?.length, 2, ok.output());
  t.regex(ok.output(), /"msg":"pcached stopped"/);
  t.false(existsSync(s.sock), 'the daemon stopped and removed its socket');
  t.false(existsSync(s.control));

  const fail = owned(t, spawnTracked(process.execPath, [join(REPO_ROOT, 'bin', 'pcached'), 'run', ...s.args, '--', 'sh', '-c', 'exit 7'], { cwd: s.dir, env: cleanEnv() }));
  t.is(await fail.exited, 7);
  t.regex(fail.output(), /"msg":"pcached stopped"/);

  const killed = owned(t, spawnTracked(process.execPath, [join(REPO_ROOT, 'bin', 'pcached'), 'run', ...s.args, '--', 'sh', '-c', 'kill -TERM $$'], { cwd: s.dir, env: cleanEnv() }));
  t.is(await killed.exited, 128 + 15, 'a COMMAND killed by SIGTERM gives 143');

  // A stop signal to `pcached run` goes to COMMAND; the daemon stops after it.
  const waiting = owned(t, spawnTracked(process.execPath, [join(REPO_ROOT, 'bin', 'pcached'), 'run', ...s.args, '--', 'sleep', '60'], { cwd: s.dir, env: cleanEnv() }));
  await waitFor('the ready line', () => /pcached ready/.test(waiting.output()), 60_000, 50);
  process.kill(waiting.pid, 'SIGTERM');
  t.is(await waiting.exited, 128 + 15, waiting.output());
  t.regex(waiting.output(), /"reason":"the captive command exited"/);
  t.false(existsSync(s.sock));

  const none = await pcachedCli(['run', ...s.args, '--', '/nonexistent/command'], { cwd: s.dir, timeoutMs: 60_000 });
  t.is(none.code, 127, none.stderr);
  t.regex(none.stderr, /pcached run: cannot run \/nonexistent\/command: spawn \/nonexistent\/command ENOENT/);
  t.false(existsSync(s.sock));
});

t_('--pidfile: written once ready, refused while that daemon runs, removed on exit; a stale one is replaced' + skipSuffix(why), async (t) => {
  const s = scratch(t);
  const pidfile = join(s.dir, 'pcached.pid');
  // A PID that ran and is gone: the file it left is stale.
  const gone = spawnTracked('true', []);
  await gone.exited;
  writeFileSync(pidfile, `${gone.pid}\n`);
  const proc = owned(t, spawnPcached([...s.args, '--pidfile', pidfile], { cwd: s.dir }), s.control);
  await waitFor('the pidfile', () => readFileSync(pidfile, 'utf8') === `${proc.pid}\n`, 60_000, 50);
  // The pidfile appears only once the daemon serves.
  t.is(await nbdinfoSize(`nbd+unix:///vol?socket=${s.sock}`), String(16 << 20));

  const s2 = scratch(t);
  const second = await pcachedCli(['start', ...s2.args, '--pidfile', pidfile], { cwd: s2.dir, timeoutMs: 60_000 });
  t.is(second.code, 1);
  t.is(second.stderr.trim().split('\n').pop(), `pcached: pidfile ${pidfile} is held by PID ${proc.pid}, a running pcached: stop it first (kill -TERM ${proc.pid}), or use another --pidfile`);
  t.false(existsSync(s2.sock), 'the refused daemon started nothing');
  t.is(readFileSync(pidfile, 'utf8'), `${proc.pid}\n`, 'and left the pidfile alone');

  t.is(await proc.stop('SIGTERM', 30_000), 0);
  t.false(existsSync(pidfile), 'removed on exit');

  const nodir = await pcachedCli(['start', ...s2.args, '--pidfile', join(s2.dir, 'missing', 'p.pid')], { cwd: s2.dir, timeoutMs: 60_000 });
  t.is(nodir.code, 1);
  t.is(nodir.stderr.trim().split('\n').pop(), `pcached: cannot write pidfile ${join(s2.dir, 'missing', 'p.pid')}: its directory does not exist`);
  t.false(existsSync(s2.sock), 'refused before any cache started');
});

test('--version and -V print package.json\'s version', async (t) => {
  for (const flag of ['--version', '-V']) {
    const r = await pcachedCli([flag]);
    t.is(r.code, 0);
    t.is(r.stdout, `${PACKAGE_VERSION}\n`);
  }
});

t_('--log-format json and human; the ready line names every URI; without a terminal the default is json' + skipSuffix(why), async (t) => {
  const s = scratch(t);
  const withTcp = (format: string[]): string[] => [...s.args.filter((a, i) => a !== '--log-format' && s.args[i - 1] !== '--log-format').map((a, i, all) => (all[i - 1] === '--tcp' ? '127.0.0.1:0' : a)), ...format];

  const json = owned(t, spawnPcached(withTcp(['--log-format', 'json']), { cwd: s.dir }), s.control);
  await waitFor('the ready line', () => /pcached ready/.test(json.output()), 60_000, 50);
  const lines = json.output().trim().split('\n');
  t.true(lines.every((l) => l.startsWith('{')), json.output());
  const ready = jsonLines(json.output()).find((l) => String(l.msg).startsWith('pcached ready'))!;
  const uris = ready.uris as string[];
  t.is(uris.length, 2);
  t.is(uris[0], `nbd+unix:///vol?socket=${s.sock}`);
  t.regex(uris[1]!, /^nbd:\/\/127\.0\.0\.1:\d+\/vol$/);
  t.is(ready.msg, `pcached ready: ${uris.join(' ')}`);
  for (const uri of uris) t.is(await nbdinfoSize(uri), String(16 << 20), uri);
  t.is(await json.stop('SIGTERM', 30_000), 0);

  const human = owned(t, spawnPcached(withTcp(['--log-format', 'human']), { cwd: s.dir }), s.control);
  await waitFor('the ready line', () => /pcached ready/.test(human.output()), 60_000, 50);
  const hl = human.output().trim().split('\n');
  t.false(hl.some((l) => l.startsWith('{')), human.output());
  const line = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (TRACE|DEBUG|INFO |WARN |ERROR|FATAL) [a-z-]+(\[[^\]]+\])?: \S/;
  t.true(hl.every((l) => line.test(l)), human.output());
  const hr = hl.find((l) => l.includes('pcached ready'))!;
  t.regex(hr, new RegExp(`INFO  pcached: pcached ready: nbd\\+unix:///vol\\?socket=${s.sock} nbd://127\\.0\\.0\\.1:\\d+/vol control=${s.control} `));
  t.regex(human.output(), /INFO  coordinator\[vol\]: listening listener=unix:\S+nbd\.sock/);
  t.is(await human.stop('SIGTERM', 30_000), 0);

  // Pipes, no flag, no $PCACHED_LOG_FORMAT: JSON, and the coordinators follow. A NOTIFY_SOCKET
  // nobody listens on costs one warning, not the service.
  const dflt = owned(t, spawnPcached(withTcp([]), { cwd: s.dir, env: { NOTIFY_SOCKET: join(s.dir, 'nobody.sock') } }), s.control);
  await waitFor('the ready line', () => /pcached ready/.test(dflt.output()), 60_000, 50);
  t.true(dflt.output().trim().split('\n').every((l) => l.startsWith('{')));
  t.regex(dflt.output(), /"name":"coordinator"/);
  t.is(await nbdinfoSize(`nbd+unix:///vol?socket=${s.sock}`), String(16 << 20));
  t.is(dflt.output().match(/systemd will not hear from pcached/g)?.length, 1, dflt.output());
  t.is(await dflt.stop('SIGTERM', 30_000), 0);

  const bad = await run(process.execPath, [join(REPO_ROOT, 'bin', 'pcached'), 'start', ...withTcp([])], { cwd: s.dir, env: cleanEnv({ PCACHED_LOG_FORMAT: 'pretty' }), timeoutMs: 30_000 });
  t.is(bad.code, 1);
  t.is(bad.stderr, 'pcached: PCACHED_LOG_FORMAT="pretty": must be human or json (or unset: human on a terminal, json otherwise)\n');
  const badFlag = await pcachedCli(['start', '--log-format', 'pretty']);
  t.is(badFlag.code, 2);
  t.regex(badFlag.stderr, /^pcached: option '--log-format <format>' argument 'pretty' is invalid\. Allowed choices are human, json\./);
});

const noNpm = have('npm') ? null : 'npm is not on PATH';
(noNpm || why ? test.skip : test)('SIGTERM to the PID of `npm start` stops the daemon cleanly (no orphan)' + skipSuffix(noNpm ?? why), async (t) => {
  const s = scratch(t);
  const pidfile = join(s.dir, 'pcached.pid');
  // --ignore-scripts skips only prestart (the build): this test runs from an already built dist/.
  const npm = owned(t, spawnTracked('npm', ['start', '--ignore-scripts', '--silent', '--', ...s.args, '--pidfile', pidfile], { cwd: REPO_ROOT, env: { ...cleanEnv(), PATH: TOOL_ENV.PATH } }), s.control);
  const daemonPid = await waitFor('the pidfile', () => existsSync(pidfile) && Number(readFileSync(pidfile, 'utf8')), 90_000, 100);
  t.teardown(() => killPid(daemonPid));
  t.not(daemonPid, npm.pid);
  const coord = (await statusJson(s.control)).caches[0]!.pid;
  t.teardown(() => killPid(coord));
  t.is(await nbdinfoSize(`nbd+unix:///vol?socket=${s.sock}`), String(16 << 20));

  // An orphaned daemon would keep npm's pipes open (and `exited` waiting for them): wait for
  // the daemon first, bounded, so that the failure is this message rather than a timeout.
  process.kill(npm.pid, 'SIGTERM');
  await waitFor('the daemon to exit after SIGTERM to npm', () => !pidRunning(daemonPid), 30_000, 50);
  t.is(await within(npm.exited, 30_000, -1), 0, npm.output());
  await waitFor('the coordinator to exit', () => !pidRunning(coord), 30_000, 50);
  t.regex(npm.output(), /"reason":"SIGTERM".*"msg":"pcached stopping: draining coordinators"/);
  t.regex(npm.output(), /"msg":"pcached stopped"/);
  t.false(existsSync(s.sock));
  t.false(existsSync(pidfile));
});

const noAnalyze = have('systemd-analyze') ? null : 'systemd-analyze is not installed';
(noAnalyze ? test.skip : test)('config/pcached.service and pcached.socket: systemd-analyze verify is silent, ExecStart uses real options' + skipSuffix(noAnalyze), async (t) => {
  const dir = join(REPO_ROOT, 'config');
  const r = await run('systemd-analyze', ['verify', '--man=no', join(dir, 'pcached.service'), join(dir, 'pcached.socket')], { timeoutMs: 30_000 });
  t.is(r.code, 0, describe(r));
  t.is(r.stderr.trim(), '', 'no warning about any line');
  const unit = readFileSync(join(dir, 'pcached.service'), 'utf8');
  t.regex(unit, /^Type=notify$/m);
  const exec = /^ExecStart=\S+ \S+\/bin\/pcached start (.*)$/m.exec(unit);
  t.truthy(exec, 'ExecStart runs pcached start');
  const help = (await pcachedCli(['start', '--help'])).stdout;
  for (const flag of exec![1]!.split(' ').filter((w) => w.startsWith('--'))) t.true(help.includes(flag), `${flag} is a start option`);
  const socket = readFileSync(join(dir, 'pcached.socket'), 'utf8');
  const name = /^FileDescriptorName=(\S+)$/m.exec(socket)?.[1];
  const example = JSON.parse(readFileSync(join(dir, 'example.json'), 'utf8')) as { caches: { name: string; unix?: string; tcp?: string }[] };
  const cache = example.caches.find((c) => c.name === name);
  t.truthy(cache, 'the socket unit names a cache of config/example.json');
  t.true(socket.includes(`ListenStream=${cache!.unix}`) && socket.includes(`ListenStream=${cache!.tcp}`), 'at the addresses that cache is configured with');
});

const noScript = have('script') ? null : 'script (util-linux) is not installed';
(noScript || why ? test.skip : test)('on a terminal the default log format is human (script(1) gives pcached run a pty)' + skipSuffix(noScript ?? why), async (t) => {
  const s = scratch(t);
  const args = s.args.filter((a, i) => a !== '--log-format' && s.args[i - 1] !== '--log-format');
  const cmd = [process.execPath, join(REPO_ROOT, 'bin', 'pcached'), 'run', ...args, '--', 'true'].map((a) => `'${a}'`).join(' ');
  const r = await run('script', ['-qec', cmd, '/dev/null'], { cwd: s.dir, env: cleanEnv(), timeoutMs: 90_000 });
  t.is(r.code, 0, describe(r));
  const lines = r.stdout.replace(/\r/g, '').trim().split('\n');
  t.true(lines.length > 3);
  t.false(lines.some((l) => l.startsWith('{')), r.stdout);
  t.regex(r.stdout, new RegExp(`INFO  pcached: pcached ready: nbd\\+unix:///vol\\?socket=${s.sock}`));
  t.regex(r.stdout, /INFO  coordinator\[vol\]: listening/);
});

const noActivate = have('systemd-socket-activate') ? null : 'systemd-socket-activate is not installed';
(noActivate || why ? test.skip : test)('systemd-socket-activate: the first connection starts pcached, and that very client is served' + skipSuffix(noActivate ?? why), async (t) => {
  const s = scratch(t);
  // It execs pcached in its own process, so its PID is the daemon's.
  const proc = owned(t, spawnTracked('systemd-socket-activate', ['-l', s.sock, '--fdname=vol', '--', process.execPath, join(REPO_ROOT, 'bin', 'pcached'), 'start', ...s.args],
    { cwd: s.dir, env: cleanEnv() }), s.control);
  await waitFor('the socket', () => existsSync(s.sock), 30_000, 50);
  t.false(/pcached starting/.test(proc.output()), 'nothing runs before a client comes');
  t.is(await nbdinfoSize(`nbd+unix:///vol?socket=${s.sock}`), String(16 << 20));
  t.regex(proc.output(), /"fd":3,"fdName":"vol","kind":"unix","address":"[^"]+nbd\.sock","msg":"socket-activated listener"/);
  t.is(await proc.stop('SIGTERM', 30_000), 0);
});
