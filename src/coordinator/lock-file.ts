// The portable stand-in for flock when the native addon is missing (PCACHED_NO_NATIVE=1): one
// file per claimant in a shared lock folder, named by the device's identity (so a symlink or a
// hard link meets the same name) and by the claimant's PID and start time (so a file left by a
// process that died, even one whose PID was reused since, is recognised as stale and removed).
//
// Each claimant creates its own file first and then looks for others: two racing starts both see
// each other and both refuse, never both run. It is weaker than flock: it relies on every user
// looking in the same folder, and a process killed by SIGKILL leaves its file behind until the
// next claimant finds it dead.

import { chmodSync, mkdirSync, readdirSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { processAlive, processStartTime } from '../util/proc-info.js';

export type LockMode = 'shared' | 'exclusive';

export interface LockFileHolder {
  pid: number;
  mode: LockMode;
}

export interface LockFileClaim {
  file: string;
  /** Removes the file: only once nothing of this process can write the device any more. */
  release(): void;
}

/** $PCACHED_LOCK_DIR, else /run/lock/pcached where /run/lock exists, else TMPDIR/pcached-locks. */
export function lockDir(env: Readonly<Record<string, string | undefined>> = process.env): string {
  if (env.PCACHED_LOCK_DIR) return env.PCACHED_LOCK_DIR;
  try {
    if (statSync('/run/lock').isDirectory()) return '/run/lock/pcached';
  } catch { /* no /run/lock */ }
  return join(tmpdir(), 'pcached-locks');
}

function ensureDir(dir: string): void {
  try {
    statSync(dir);
    return;
  } catch { /* create it */ }
  mkdirSync(dir, { recursive: true });
  // Daemons of different users share it, as they share /tmp.
  try { chmodSync(dir, 0o1777); } catch { /* not ours to change */ }
}

const NAME = /^(.+)\.(\d+)-(\d+)\.(ex|sh)$/;

/** Live claimants of `key` other than this process; stale files met on the way are removed. */
export function lockFileHolders(dir: string, key: string, except?: string): LockFileHolder[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const out: LockFileHolder[] = [];
  for (const name of names) {
    const m = NAME.exec(name);
    if (!m || m[1] !== key || name === except) continue;
    const pid = Number(m[2]);
    if (!processAlive(pid, m[3] === '0' ? undefined : m[3])) {
      try { unlinkSync(join(dir, name)); } catch { /* another claimant removed it */ }
      continue;
    }
    out.push({ pid, mode: m[4] === 'ex' ? 'exclusive' : 'shared' });
  }
  return out;
}

/**
 * Claims `key` in `dir`: the claim, or the live holder that conflicts (an exclusive claim
 * conflicts with any other, a shared one with an exclusive one). `about` goes into the file for
 * whoever looks.
 */
export function claimLockFile(dir: string, key: string, mode: LockMode, about: Record<string, unknown>): LockFileClaim | { holder: LockFileHolder } {
  ensureDir(dir);
  const name = `${key}.${process.pid}-${processStartTime(process.pid) ?? '0'}.${mode === 'exclusive' ? 'ex' : 'sh'}`;
  const file = join(dir, name);
  try {
    writeFileSync(file, `${JSON.stringify({ pid: process.pid, mode, ...about })}\n`, { flag: 'wx', mode: 0o644 });
  } catch (err) {
    // This very process claimed it already (as flock would, two claims in one process conflict).
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return { holder: { pid: process.pid, mode } };
    throw err;
  }
  const conflict = lockFileHolders(dir, key, name).find((h) => mode === 'exclusive' || h.mode === 'exclusive');
  if (conflict) {
    try { unlinkSync(file); } catch { /* gone already */ }
    return { holder: conflict };
  }
  return { file, release: () => { try { unlinkSync(file); } catch { /* gone already */ } } };
}
