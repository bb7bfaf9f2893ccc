// TLS credentials for tests, made with gnutls-bin's certtool and psktool in the layouts the
// clients expect: nbdkit's server folder (ca-cert.pem, server-cert.pem, server-key.pem) and the
// client folder libnbd's tls-certificates= and qemu's tls-creds-x509 read (ca-cert.pem,
// client-cert.pem, client-key.pem). ECDSA keys: quick to make on a busy machine.

import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runOk } from './tools.js';

export interface X509Set {
  /** Server folder for `tlsCertificates`. */
  server: string;
  /** Client folder with the CA and a client certificate signed by it. */
  client: string;
  /** Client folder with the CA only (no client certificate). */
  anonymous: string;
  /** Client folder trusting the right CA but holding a certificate from another CA. */
  stranger: string;
  /** Client folder with a certificate from the CA that `serverWithCrl`'s ca-crl.pem revokes. */
  revoked: string;
  /** The server folder plus a ca-crl.pem revoking `revoked`'s certificate. */
  serverWithCrl: string;
}

async function certtool(args: string[], dir: string): Promise<string> {
  return (await runOk('certtool', args, { cwd: dir, timeoutMs: 30_000 })).stdout;
}

async function privkey(path: string, dir: string): Promise<void> {
  writeFileSync(path, await certtool(['--generate-privkey', '--key-type=ecdsa'], dir), { mode: 0o600 });
}

async function selfSignedCa(dir: string, name: string): Promise<{ cert: string; key: string }> {
  const key = join(dir, `${name}-key.pem`);
  const cert = join(dir, `${name}-cert.pem`);
  const info = join(dir, `${name}.info`);
  await privkey(key, dir);
  writeFileSync(info, `cn = ${name}\nca\ncert_signing_key\ncrl_signing_key\nexpiration_days = 2\n`);
  await certtool(['--generate-self-signed', '--load-privkey', key, '--template', info, '--outfile', cert], dir);
  return { cert, key };
}

async function issue(dir: string, ca: { cert: string; key: string }, keyPath: string, certPath: string, template: string): Promise<void> {
  const info = `${certPath}.info`;
  writeFileSync(info, template);
  await privkey(keyPath, dir);
  await certtool(['--generate-certificate', '--load-ca-certificate', ca.cert, '--load-ca-privkey', ca.key,
    '--load-privkey', keyPath, '--template', info, '--outfile', certPath], dir);
}

export async function makeX509(root: string): Promise<X509Set> {
  const work = join(root, 'pki');
  const set: X509Set = {
    server: join(root, 'server'), client: join(root, 'client'), anonymous: join(root, 'anonymous'), stranger: join(root, 'stranger'),
    revoked: join(root, 'revoked'), serverWithCrl: join(root, 'server-crl'),
  };
  for (const d of [work, ...Object.values(set)]) mkdirSync(d, { recursive: true });
  const ca = await selfSignedCa(work, 'ca');
  const other = await selfSignedCa(work, 'other-ca');
  // The names both clients check: libnbd and qemu verify "localhost" or 127.0.0.1.
  await issue(work, ca, join(set.server, 'server-key.pem'), join(set.server, 'server-cert.pem'),
    'cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n');
  const client = 'cn = pcached-test-client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n';
  await issue(work, ca, join(set.client, 'client-key.pem'), join(set.client, 'client-cert.pem'), client);
  await issue(work, other, join(set.stranger, 'client-key.pem'), join(set.stranger, 'client-cert.pem'), client);
  await issue(work, ca, join(set.revoked, 'client-key.pem'), join(set.revoked, 'client-cert.pem'), client);
  for (const d of [set.server, set.client, set.anonymous, set.stranger, set.revoked, set.serverWithCrl]) copyFileSync(ca.cert, join(d, 'ca-cert.pem'));
  for (const f of ['server-cert.pem', 'server-key.pem']) copyFileSync(join(set.server, f), join(set.serverWithCrl, f));
  writeFileSync(join(work, 'crl.info'), 'crl_next_update = 2\ncrl_number = 1\n');
  await certtool(['--generate-crl', '--load-ca-privkey', ca.key, '--load-ca-certificate', ca.cert,
    '--load-certificate', join(set.revoked, 'client-cert.pem'), '--template', join(work, 'crl.info'), '--outfile', join(set.serverWithCrl, 'ca-crl.pem')], work);
  return set;
}

/** A psktool key file for `user` in a folder of its own (qemu's tls-creds-psk reads dir/keys.psk). */
export async function makePsk(root: string, user: string): Promise<{ dir: string; file: string; key: string }> {
  const dir = join(root, `psk-${user}`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = join(dir, 'keys.psk');
  await runOk('psktool', ['-u', user, '-p', file], { timeoutMs: 30_000 });
  const key = readFileSync(file, 'utf8').trim().split(':')[1]!;
  return { dir, file, key };
}
