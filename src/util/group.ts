// Group names to ids, for the socket files' groups. Node has no getgrnam(3); getent(1) asks the
// same NSS sources it would (files, LDAP, sssd ...). /etc/group is the fallback without getent.

import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { PcachedError } from './errors.js';

function fromGroupLine(line: string, name: string): number | undefined {
  const [n, , gid] = line.trim().split(':');
  return n === name && gid !== undefined && /^\d+$/.test(gid) ? Number(gid) : undefined;
}

function lookup(name: string): number | undefined {
  try {
    const out = execFileSync('getent', ['group', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 });
    return fromGroupLine(out.split('\n')[0] ?? '', name);
  } catch (err) {
    // getent exits 2 for an unknown group; only its absence sends us to the file.
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return undefined;
  }
  try {
    for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
      const gid = fromGroupLine(line, name);
      if (gid !== undefined) return gid;
    }
  } catch { /* no /etc/group */ }
  return undefined;
}

/** "" → null (keep the process's group); a numeric id as is; a name through NSS. */
export function resolveGroup(spec: string, key: string): number | null {
  if (spec === '') return null;
  if (/^\d+$/.test(spec)) return Number(spec);
  const gid = lookup(spec);
  if (gid === undefined) throw new PcachedError('ERR_CONFIG', `${key}: no group named ${JSON.stringify(spec)} on this host (getent group ${spec} finds none)`);
  return gid;
}
