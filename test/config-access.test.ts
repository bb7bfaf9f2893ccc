// The access keys of the configuration (config/access-schema.ts, src/config/access.ts): TLS
// settings and credentials, the loopback rule for plaintext TCP, socket modes and groups. Each
// refusal names the key, in the file's terms (caches[i].key), and what to do.

import test from 'ava';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { diffConfig, loadConfig, type ConfigSource, type LoadedConfig } from '../src/config/load.js';
import { parsePskFile } from '../src/tls/credentials.js';
import { isPcachedError } from '../src/util/errors.js';
import { scratchDir, removeScratchDirs } from './helpers/scratch.js';
import { makeX509, type X509Set } from './helpers/tls-creds.js';
import { needTools } from './helpers/tools.js';

const dir = scratchDir('pcached-access-');
const noCerttool = needTools('certtool');
let x509: X509Set | undefined;

test.before(async () => {
  if (!noCerttool) x509 = await makeX509(join(dir, 'x509'));
});
test.after.always(removeScratchDirs);

function load(src: Partial<ConfigSource> = {}): LoadedConfig {
  return loadConfig({ env: {}, flags: {}, cwd: dir, ...src });
}

let fileNo = 0;
function file(content: unknown, name = `c${fileNo++}.json`): string {
  const p = join(dir, name);
  writeFileSync(p, typeof content === 'string' ? content : JSON.stringify(content));
  return p;
}

function refused(t: import('ava').ExecutionContext, fn: () => unknown, ...parts: (string | RegExp)[]): void {
  const err = t.throws(fn);
  t.true(isPcachedError(err, 'ERR_CONFIG'), `expected ERR_CONFIG, got ${String(err)}`);
  for (const p of parts) {
    if (typeof p === 'string') t.true(err!.message.includes(p), `"${err!.message}" should contain "${p}"`);
    else t.regex(err!.message, p);
  }
}

const one = (c: object) => ({ caches: [{ name: 'a', origin: '/srv/a.img', cache: '/srv/a.cache', unix: '/run/a.sock', ...c }] });
const two = (c: object) => ({ caches: [{ name: 'a', origin: '/srv/a.img', cache: '/srv/a.cache', unix: '/run/a.sock' }, { name: 'b', origin: '/srv/b.img', cache: '/srv/b.cache', unix: '/run/b.sock', ...c }] });
const psk = file('alice:00112233445566778899aabbccddeeff\n', 'keys.psk');

test('defaults: TLS off, sockets 0600 in the daemon\'s group, loopback TCP allowed', (t) => {
  const { config } = load();
  t.is(config.controlMode, 0o600);
  t.is(config.controlGroup, '');
  const c = config.caches[0]!;
  t.like(c, { tls: 'off', tlsCertificates: '', tlsPsk: '', tlsVerifyPeer: false, allowRemotePlaintext: false, unixMode: 0o600, unixGroup: '' });
  for (const tcp of ['127.0.0.1:10809', '[::1]:10809', 'localhost:10809', '127.1.2.3:0']) t.notThrows(() => load({ flags: { tcp } }), tcp);
});

test('a TCP address beyond loopback needs tls require or allowRemotePlaintext', (t) => {
  refused(t, () => load({ flags: { tcp: '0.0.0.0:10809' } }), 'tcp: 0.0.0.0 is not a loopback address', 'allowRemotePlaintext', 'value was "0.0.0.0:10809"');
  refused(t, () => load({ configFile: file(two({ tcp: '[::]:10809' })) }), 'caches[1].tcp: :: is not a loopback address');
  refused(t, () => load({ flags: { tcp: 'nbd.example.com:10809', tls: 'on', tlsPsk: psk } }), 'with tls "on"');
  t.notThrows(() => load({ flags: { tcp: '0.0.0.0:10809' }, env: { PCACHED_ALLOW_REMOTE_PLAINTEXT: 'true' } }));
  t.notThrows(() => load({ configFile: file(one({ tcp: '0.0.0.0:10809', tls: 'require', tlsPsk: psk })) }));
});

test('TLS keys that do not fit together', (t) => {
  refused(t, () => load({ flags: { tls: 'require' } }), 'tls: "require" needs credentials');
  refused(t, () => load({ flags: { tls: 'on' } }), 'tls: "on" needs credentials');
  refused(t, () => load({ flags: { tlsPsk: psk } }), 'tlsPsk: is set but tls is "off"');
  refused(t, () => load({ flags: { tlsVerifyPeer: true } }), 'tlsVerifyPeer: is set but tls is "off"');
  refused(t, () => load({ flags: { tls: 'on', tlsPsk: psk, tlsCertificates: dir } }), 'tlsPsk: set either tlsCertificates or tlsPsk, not both');
  refused(t, () => load({ flags: { tls: 'on', tlsPsk: psk, tlsVerifyPeer: true } }), 'tlsVerifyPeer: checks client certificates', 'does not apply to tlsPsk');
  refused(t, () => load({ flags: { tls: 'maybe' } }), 'tls: must be one of off, on, require', 'value was "maybe"');
  refused(t, () => load({ configFile: file(one({ tlsVerifyPeer: 'yes please' })) }), 'caches[0].tlsVerifyPeer: must be true or false');
});

test('PSK files: psktool\'s format, every line checked', (t) => {
  t.notThrows(() => load({ flags: { tls: 'require', tlsPsk: 'keys.psk' } }), 'relative to the working folder');
  const keys = parsePskFile('alice:0011\n\nbob:AABB\r\n', '/k');
  t.deepEqual([...keys].map(([u, k]) => [u, k.toString('hex')]), [['alice', '0011'], ['bob', 'aabb']]);
  const cases: [string, string][] = [
    ['', 'holds no keys (create one with: psktool -u USER -p'],
    ['alice\n', 'line 1: expected username:hexkey'],
    [':0011\n', 'line 1: expected username:hexkey'],
    ['alice:001\n', 'line 1: the key of "alice" is not an even number of hex digits'],
    ['alice:\n', 'line 1: the key of "alice" is not an even number of hex digits'],
    ['alice:0011\nalice:2233\n', 'line 2: username "alice" appears twice'],
    [`${'u'.repeat(129)}:0011\n`, 'username longer than 128 bytes'],
    [`alice:${'00'.repeat(257)}\n`, 'longer than 256 bytes'],
  ];
  for (const [text, msg] of cases) {
    const p = file(text, `bad${fileNo++}.psk`);
    refused(t, () => load({ flags: { tls: 'on', tlsPsk: p } }), `tlsPsk: ${p}`, msg);
  }
  refused(t, () => load({ configFile: file(two({ tls: 'on', tlsPsk: join(dir, 'none.psk') })) }), 'caches[1].tlsPsk: cannot read', 'no such file');
  refused(t, () => load({ flags: { tls: 'on', tlsPsk: dir } }), 'is a folder, not a file');
});

const x = noCerttool ? test.skip : test;

x('X.509 folders: nbdkit\'s layout, loaded at config time', (t) => {
  const s = x509!;
  t.notThrows(() => load({ flags: { tls: 'require', tlsCertificates: s.server } }));
  t.notThrows(() => load({ flags: { tls: 'require', tlsCertificates: s.server, tlsVerifyPeer: true } }));
  const noCa = join(dir, 'no-ca');
  mkdirSync(noCa);
  for (const f of ['server-cert.pem', 'server-key.pem']) writeFileSync(join(noCa, f), readFileSync(join(s.server, f), 'utf8'));
  t.notThrows(() => load({ flags: { tls: 'on', tlsCertificates: noCa } }), 'ca-cert.pem is optional without tlsVerifyPeer');
  refused(t, () => load({ flags: { tls: 'on', tlsCertificates: noCa, tlsVerifyPeer: true } }), 'tlsCertificates: cannot read', 'ca-cert.pem: no such file');
  // A key that is not the certificate's.
  const mismatched = join(dir, 'mismatch');
  mkdirSync(mismatched);
  writeFileSync(join(mismatched, 'server-cert.pem'), readFileSync(join(s.server, 'server-cert.pem'), 'utf8'));
  writeFileSync(join(mismatched, 'server-key.pem'), readFileSync(join(s.client, 'client-key.pem'), 'utf8'));
  refused(t, () => load({ flags: { tls: 'on', tlsCertificates: mismatched } }), /tlsCertificates: \S+mismatch: server-cert\.pem, server-key\.pem do not load: .*(mismatch|key)/i);
  refused(t, () => load({ flags: { tls: 'on', tlsCertificates: join(s.server, 'server-cert.pem') } }), 'is not a folder');
  refused(t, () => load({ configFile: file(two({ tls: 'on', tlsCertificates: join(dir, 'gone') })) }), 'caches[1].tlsCertificates:', 'no such folder');
});

test('socket modes and groups', (t) => {
  const { config } = load({ env: { PCACHED_UNIX_MODE: '660', PCACHED_CONTROL_MODE: '0640', PCACHED_UNIX_GROUP: '0', PCACHED_CONTROL_GROUP: 'root' } });
  t.is(config.caches[0]!.unixMode, 0o660);
  t.is(config.controlMode, 0o640);
  for (const bad of ['0400', '0060', '600 ', '0o600', '1777', '8', 600]) {
    refused(t, () => load({ configFile: file({ controlMode: bad }) }), 'controlMode: must be octal permission bits', 'keeping owner read and write');
  }
  refused(t, () => load({ configFile: file(two({ unixGroup: 'no-such-group-pcached' })) }), 'caches[1].unixGroup: no group named "no-such-group-pcached"');
  refused(t, () => load({ configFile: file({ controlGroup: 'a b' }) }), 'controlGroup: must be a group name');
});

test('the access keys need a restart: SIGHUP refuses to change them', (t) => {
  const before = load({ configFile: file(one({})) }).config;
  const after = load({ configFile: file(one({ tls: 'on', tlsPsk: psk, unixMode: '0660' })) }).config;
  const d = diffConfig(before, after);
  t.false(d.reloadable);
  t.deepEqual(d.rejected.sort(), ['caches[a].tls', 'caches[a].tlsPsk', 'caches[a].unixMode'].sort());
  t.deepEqual(diffConfig(before, load({ configFile: file({ ...one({}), controlMode: '0660' }) }).config).rejected, ['controlMode']);
});
