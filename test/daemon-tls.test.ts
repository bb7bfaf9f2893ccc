// NBD STARTTLS through the real daemon, with the clients people use: nbdinfo on nbds:// and
// nbds+unix:// URIs, qemu-img and qemu-io with tls-creds-x509 and tls-creds-psk objects, nbdsh.
// Credentials are made fresh with certtool and psktool (gnutls-bin).

import test from 'ava';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import { freshDir, startDaemon, type Daemon, type DaemonOptions } from './helpers/daemon.js';
import { describe, needTools, nbdshJson, run, skipSuffix } from './helpers/tools.js';
import { makePsk, makeX509, type X509Set } from './helpers/tls-creds.js';
import { RawConn, readGreeting, readOptReply, option, u32, u16, OPT_ABORT, OPT_EXPORT_NAME, OPT_LIST, REP_ACK } from './helpers/nbd-raw.js';
import { controlRequest } from '../src/daemon/control.js';
import type { CacheStatus } from '../src/daemon/ipc.js';

const why = needTools('certtool', 'psktool', 'nbdinfo', 'nbdsh', 'qemu-img', 'qemu-io');
const t_ = why ? test.serial.skip : test.serial;
const OPT_INFO = 6;
const OPT_STARTTLS = 5;
const ERR_TLS_REQD = 0x80000005;
const MiB = 1024 * 1024;

let root = '';
let x509: X509Set;
let psk: { dir: string; file: string; key: string };
const daemons: Daemon[] = [];

test.before(async () => {
  if (why) return;
  root = freshDir();
  x509 = await makeX509(root);
  psk = await makePsk(root, 'alice');
});
test.after.always(async () => {
  for (const d of daemons) await d.dispose();
  if (root) rmSync(root, { recursive: true, force: true });
});

async function start(tls: string[], opts: DaemonOptions = {}): Promise<Daemon> {
  const d = await startDaemon({ tcp: '127.0.0.1:0', stripes: 1, logLevel: 'info', ...opts, extraArgs: tls });
  daemons.push(d);
  return d;
}

async function stop(d: Daemon): Promise<void> {
  await d.dispose();
  daemons.splice(daemons.indexOf(d), 1);
}

/** The TCP port the kernel picked for `--tcp 127.0.0.1:0` (known once the coordinator is ready, shortly after the Unix socket). */
async function tcpPort(d: Daemon): Promise<number> {
  for (let i = 0; ; i++) {
    const st = (await controlRequest(d.control, { op: 'status' })) as { caches: CacheStatus[] };
    const l = st.caches[0]?.listeners.find((x) => x.startsWith('tcp:'));
    if (l) return Number(l.slice(l.lastIndexOf(':') + 1));
    if (i === 100) throw new Error('no TCP listener after 10 s');
    await new Promise((r) => setTimeout(r, 100));
  }
}

const tlsUnix = (d: Daemon, query: string): string => `nbds+unix:///${d.name}?socket=${d.sock}&${query}`;
const tlsTcp = (port: number, name: string, query: string, user = ''): string => `nbds://${user}127.0.0.1:${port}/${name}?${query}`;

/** The daemon's log reaches us through a pipe, a little after the client has its answer. */
async function logged(d: Daemon, re: RegExp): Promise<boolean> {
  for (let i = 0; i < 100 && !re.test(d.stderr()); i++) await new Promise((r) => setTimeout(r, 50));
  return re.test(d.stderr());
}

async function nbdinfo(uri: string) {
  return run('nbdinfo', [uri], { timeoutMs: 30_000 });
}

/** qemu's client over TCP with a TLS credentials object. */
function qemuNbd(port: number, name: string, creds: string): string[] {
  return ['--object', creds, '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=${name},tls-creds=tls0`];
}

/** nbdsh connected to `uri`, which may name credential files (libnbd refuses those unless allowed). */
function nbdshOn<T>(uri: string, script: string): Promise<T> {
  return nbdshJson<T>(`import json\nh.set_uri_allow_local_file(True)\nh.connect_uri(${JSON.stringify(uri)})\n${script}`);
}

/** Bytes of `len` at `off` equal to `byte`, read with nbdsh over `uri`. */
function countByte(uri: string, off: number, len: number, byte: number): Promise<number> {
  return nbdshOn<number>(uri, `b = h.pread(${len}, ${off})\nprint(json.dumps(b.count(${byte})))`);
}

t_(`X.509, tls require: the ready line names nbds URIs; nbdinfo over nbds+unix:// and nbds://${skipSuffix(why)}`, async (t) => {
  const d = await start(['--tls', 'require', '--tls-certificates', x509.server]);
  const port = await tcpPort(d);
  // The ready line names URIs a client can use as they are: with TLS required, nbds.
  t.true(await logged(d, new RegExp(`pcached ready: nbds\\+unix:///${d.name}\\?socket=\\S+ nbds://127\\.0\\.0\\.1:${port}/${d.name}`)), d.stderr());
  for (const uri of [tlsUnix(d, `tls-certificates=${x509.anonymous}`), tlsTcp(port, d.name, `tls-certificates=${x509.anonymous}`)]) {
    const r = await nbdinfo(uri);
    t.is(r.code, 0, describe(r));
    t.regex(r.stdout, /protocol: newstyle-fixed with TLS/, describe(r));
    t.regex(r.stdout, /export-size: 67108864/, describe(r));
  }
  await stop(d);
});

t_(`X.509, tls require: a plaintext client gets ERR_TLS_REQD, EXPORT_NAME a hang-up${skipSuffix(why)}`, async (t) => {
  const d = await start(['--tls', 'require', '--tls-certificates', x509.server]);
  const plain = await nbdinfo(d.uri);
  t.not(plain.code, 0, describe(plain));
  t.notRegex(plain.stdout, /export-size/, describe(plain));

  const c = await RawConn.open(d.sock);
  await readGreeting(c);
  await c.write(u32(1 | 2));
  const name = Buffer.from(d.name);
  for (const [opt, data] of [[OPT_LIST, Buffer.alloc(0)], [OPT_INFO, Buffer.concat([u32(name.length), name, u16(0)])]] as const) {
    await c.write(option(opt, data));
    const r = await readOptReply(c);
    t.is(r.opt, opt);
    t.is(r.type, ERR_TLS_REQD, `option ${opt}: ${r.data.toString()}`);
  }
  // STARTTLS with data is malformed, not a reason to start TLS.
  await c.write(option(OPT_STARTTLS, Buffer.from('x')));
  t.is((await readOptReply(c)).type, 0x80000003);
  await c.write(option(OPT_ABORT));
  t.is((await readOptReply(c)).type, REP_ACK);
  c.destroy();

  const e = await RawConn.open(d.sock);
  await readGreeting(e);
  await e.write(u32(1 | 2));
  await e.write(option(OPT_EXPORT_NAME, name));
  t.true(await e.waitClosed(), 'EXPORT_NAME before STARTTLS is answered by hanging up');
  e.destroy();
  await stop(d);
});

t_(`STARTTLS misuse ends only that connection: bytes pipelined after it, plaintext instead of a ClientHello${skipSuffix(why)}`, async (t) => {
  const d = await start(['--tls', 'on', '--tls-certificates', x509.server], { tcp: '' });
  // The client must wait for the ACK before it speaks TLS; one that does not is cut off unanswered.
  const eager = await RawConn.open(d.sock);
  await readGreeting(eager);
  await eager.write(Buffer.concat([u32(1 | 2), option(OPT_STARTTLS), Buffer.from('\x16\x03\x01 early hello')]));
  t.true(await eager.waitClosed(), 'closed');
  eager.destroy();
  // Options in plaintext where the ClientHello belongs: the TLS handshake fails, the connection ends.
  const confused = await RawConn.open(d.sock);
  await readGreeting(confused);
  await confused.write(u32(1 | 2));
  await confused.write(option(OPT_STARTTLS));
  t.is((await readOptReply(confused)).type, REP_ACK);
  await confused.write(option(OPT_LIST));
  t.true(await confused.waitClosed(), 'closed');
  confused.destroy();
  t.true(await logged(d, /TLS handshake failed/));
  const r = await nbdinfo(tlsUnix(d, `tls-certificates=${x509.anonymous}`));
  t.is(r.code, 0, `still serving: ${describe(r)}`);
  await stop(d);
});

t_(`X.509: qemu-io writes over tls-creds-x509; qemu-img, qemu-io and nbdsh over TLS read it back${skipSuffix(why)}`, async (t) => {
  const d = await start(['--tls', 'require', '--tls-certificates', x509.server]);
  const port = await tcpPort(d);
  const creds = `tls-creds-x509,id=tls0,dir=${x509.client},endpoint=client`;
  const info = await run('qemu-img', ['info', ...qemuNbd(port, d.name, creds)], { timeoutMs: 60_000 });
  t.is(info.code, 0, describe(info));
  t.regex(info.stdout, /virtual size: 64 MiB/, describe(info));
  const w = await run('qemu-io', [...qemuNbd(port, d.name, creds), '-c', 'write -P 0xab 1M 2M', '-c', 'flush'], { timeoutMs: 60_000 });
  t.is(w.code, 0, describe(w));
  t.regex(w.stdout, /^wrote 2097152\/2097152 bytes/m, describe(w));
  const r = await run('qemu-io', [...qemuNbd(port, d.name, creds), '-r', '-c', 'read -P 0xab 1M 2M', '-c', 'read -P 0 0 1M'], { timeoutMs: 60_000 });
  t.is(r.code, 0, describe(r));
  t.notRegex(r.stdout + r.stderr, /verification failed|error/i, describe(r));
  t.is((r.stdout.match(/^read /gm) ?? []).length, 2, describe(r));
  // Another client library on the other listener sees the same bytes.
  t.is(await countByte(tlsUnix(d, `tls-certificates=${x509.client}`), 1 * MiB, 2 * MiB, 0xab), 2 * MiB);
  // qemu without credentials cannot open the export.
  const bare = await run('qemu-img', ['info', '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=${d.name}`], { timeoutMs: 60_000 });
  t.not(bare.code, 0, describe(bare));
  await stop(d);
});

t_(`X.509 with tlsVerifyPeer: the CA's client certificate is accepted; none, or another CA's, is refused${skipSuffix(why)}`, async (t) => {
  const d = await start(['--tls', 'require', '--tls-certificates', x509.server, '--tls-verify-peer'], { tcp: '' });
  const ok = await nbdinfo(tlsUnix(d, `tls-certificates=${x509.client}`));
  t.is(ok.code, 0, describe(ok));
  t.regex(ok.stdout, /with TLS/);
  for (const dir of [x509.anonymous, x509.stranger]) {
    const r = await nbdinfo(tlsUnix(d, `tls-certificates=${dir}`));
    t.not(r.code, 0, `${dir}: ${describe(r)}`);
    t.notRegex(r.stdout, /export-size/);
  }
  t.true(await logged(d, /client certificate refused \(none signed by/), 'the log says why they were turned away');

  // GnuTLS withholds a certificate the server's CA list does not name; node:tls sends it anyway,
  // so the check after the handshake is what must refuse it.
  const c = await RawConn.open(d.sock);
  await readGreeting(c);
  await c.write(u32(1 | 2));
  await c.write(option(OPT_STARTTLS));
  t.is((await readOptReply(c)).type, REP_ACK);
  const tls = tlsConnect({
    socket: c.sock, ca: readFileSync(join(x509.stranger, 'ca-cert.pem')), servername: 'localhost',
    cert: readFileSync(join(x509.stranger, 'client-cert.pem')), key: readFileSync(join(x509.stranger, 'client-key.pem')),
  });
  const got: Buffer[] = [];
  const ended = new Promise<void>((res) => { tls.on('data', (b: Buffer) => got.push(b)); tls.on('error', () => res()); tls.on('close', () => res()); });
  tls.once('secureConnect', () => tls.write(option(OPT_LIST)));
  await ended;
  t.is(Buffer.concat(got).length, 0, 'no option reply for a client whose certificate another CA signed');
  t.true(await logged(d, /client certificate refused \((?!none)[A-Z_]+\)/), 'the log names the verification error');
  c.destroy();
  await stop(d);
});

t_(`X.509 with tlsVerifyPeer and ca-crl.pem: a revoked client certificate is refused${skipSuffix(why)}`, async (t) => {
  const d = await start(['--tls', 'require', '--tls-certificates', x509.serverWithCrl, '--tls-verify-peer'], { tcp: '' });
  const ok = await nbdinfo(tlsUnix(d, `tls-certificates=${x509.client}`));
  t.is(ok.code, 0, describe(ok));
  const r = await nbdinfo(tlsUnix(d, `tls-certificates=${x509.revoked}`));
  t.not(r.code, 0, describe(r));
  t.notRegex(r.stdout, /export-size/);
  t.true(await logged(d, /client certificate refused \(CERT_REVOKED\)/), 'the log says it was revoked');
  await stop(d);
});

t_(`PSK: nbdinfo over nbds:// and nbds+unix:// with the key; a wrong key or an unknown user is refused${skipSuffix(why)}`, async (t) => {
  const d = await start(['--tls', 'require', '--tls-psk', psk.file]);
  const port = await tcpPort(d);
  for (const uri of [tlsTcp(port, d.name, `tls-psk-file=${psk.file}`, 'alice@'), `nbds+unix://alice@/${d.name}?socket=${d.sock}&tls-psk-file=${psk.file}`]) {
    const r = await nbdinfo(uri);
    t.is(r.code, 0, describe(r));
    t.regex(r.stdout, /with TLS/, describe(r));
  }
  const wrong = join(root, 'wrong.psk');
  writeFileSync(wrong, `alice:${psk.key.replace(/^./, (c) => (c === '0' ? '1' : '0'))}\n`);
  const stranger = join(root, 'bob.psk');
  writeFileSync(stranger, `bob:${psk.key}\n`);
  for (const uri of [tlsTcp(port, d.name, `tls-psk-file=${wrong}`, 'alice@'), tlsTcp(port, d.name, `tls-psk-file=${stranger}`, 'bob@')]) {
    const r = await nbdinfo(uri);
    t.not(r.code, 0, describe(r));
    t.notRegex(r.stdout, /export-size/);
  }
  t.true(await logged(d, /does not match the one in/), 'the log names a wrong key');
  const plain = await nbdinfo(d.uri);
  t.not(plain.code, 0, describe(plain));
  const { stats } = ((await controlRequest(d.control, { op: 'status' })) as { caches: CacheStatus[] }).caches[0]!;
  t.like(stats, { tls_handshakes: 2, tls_failures: 2 }, 'status counts the upgrades and the refusals');
  await stop(d);
});

t_(`PSK: qemu-img info and qemu-io write and read back with tls-creds-psk${skipSuffix(why)}`, async (t) => {
  // At debug level the log shows each connection's protocol and cipher.
  const d = await start(['--tls', 'require', '--tls-psk', psk.file], { logLevel: 'debug' });
  const port = await tcpPort(d);
  const creds = `tls-creds-psk,id=tls0,dir=${psk.dir},username=alice,endpoint=client`;
  const info = await run('qemu-img', ['info', ...qemuNbd(port, d.name, creds)], { timeoutMs: 60_000 });
  t.is(info.code, 0, describe(info));
  t.regex(info.stdout, /virtual size: 64 MiB/, describe(info));
  const w = await run('qemu-io', [...qemuNbd(port, d.name, creds), '-c', 'write -P 0x5c 8M 1M', '-c', 'flush'], { timeoutMs: 60_000 });
  t.is(w.code, 0, describe(w));
  const r = await run('qemu-io', [...qemuNbd(port, d.name, creds), '-r', '-c', 'read -P 0x5c 8M 1M'], { timeoutMs: 60_000 });
  t.is(r.code, 0, describe(r));
  t.regex(r.stdout, /^read 1048576\/1048576 bytes/m, describe(r));
  t.notRegex(r.stdout + r.stderr, /verification failed/i, describe(r));
  t.true(await logged(d, /"protocol":"TLSv1\.2","cipher":"[A-Z0-9-]*PSK[A-Z0-9-]*"/), 'PSK runs over TLS 1.2 with a PSK suite');
  await stop(d);
});

t_(`tls on: plaintext and TLS clients are both served, and see each other's writes${skipSuffix(why)}`, async (t) => {
  const d = await start(['--tls', 'on', '--tls-certificates', x509.server], { tcp: '' });
  const plain = await nbdinfo(d.uri);
  t.is(plain.code, 0, describe(plain));
  t.regex(plain.stdout, /without TLS/, describe(plain));
  const secure = await nbdinfo(tlsUnix(d, `tls-certificates=${x509.anonymous}`));
  t.is(secure.code, 0, describe(secure));
  t.regex(secure.stdout, /with TLS/, describe(secure));
  await nbdshOn(d.uri, `h.pwrite(b'\\x77' * 65536, 3 * 1048576)\nh.flush()\nprint(json.dumps(1))`);
  t.is(await countByte(tlsUnix(d, `tls-certificates=${x509.anonymous}`), 3 * MiB, 65536, 0x77), 65536);
  // Plaintext connections read into a pool (receive-pool.ts); TLS ones go through node:tls.
  const { stats } = ((await controlRequest(d.control, { op: 'status' })) as { caches: CacheStatus[] }).caches[0]!;
  t.true(stats.connections_pooled! >= 2, `pooled ${stats.connections_pooled}`);
  t.true(stats.connections_pooled! + stats.tls_handshakes! <= stats.connections_total!, JSON.stringify(stats));
  await stop(d);
});
