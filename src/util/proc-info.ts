// What /proc says about other processes, for messages such as "in use by PID 1234 (pcached
// coordinator of "vol")": who holds a flock on an inode (/proc/locks), whether a PID is still the
// process it was (its start time), what a process is (its command line), where a block device
// is mounted. Linux only; every function answers "unknown" (null, []) rather than throw.

import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

/** A dev_t split the way glibc's gnu_dev_major/gnu_dev_minor do. */
export function majorMinor(dev: number | bigint): { major: number; minor: number } {
  const d = BigInt(dev);
  const major = ((d >> 8n) & 0xfffn) | ((d >> 32n) & 0xfffff000n);
  const minor = (d & 0xffn) | ((d >> 12n) & 0xffffff00n);
  return { major: Number(major), minor: Number(minor) };
}

function readText(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}

export interface FlockHolder {
  pid: number;
  mode: 'shared' | 'exclusive';
}

// "1: FLOCK  ADVISORY  WRITE 5658 00:06:93 0 EOF": the device is the filesystem's, in hex; the
// inode in decimal. Waiters ("1: -> FLOCK ...") hold nothing and are skipped.
const LOCK_LINE = /^\d+:\s+FLOCK\s+\S+\s+(READ|WRITE)\s+(-?\d+)\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s/;

/** The processes holding a flock on the inode `ino` of the filesystem `dev` (from stat). */
export function flockHolders(dev: number | bigint, ino: number | bigint, locksText = readText('/proc/locks')): FlockHolder[] {
  if (locksText === null) return [];
  const { major, minor } = majorMinor(dev);
  const inode = BigInt(ino);
  const out: FlockHolder[] = [];
  for (const line of locksText.split('\n')) {
    const m = LOCK_LINE.exec(line);
    if (!m) continue;
    if (parseInt(m[3]!, 16) !== major || parseInt(m[4]!, 16) !== minor || BigInt(m[5]!) !== inode) continue;
    const pid = Number(m[2]);
    if (pid > 0) out.push({ pid, mode: m[1] === 'WRITE' ? 'exclusive' : 'shared' });
  }
  return out;
}

/** Field 22 of /proc/PID/stat (clock ticks after boot): with the PID, it names one process for good. */
export function processStartTime(pid: number): string | null {
  const stat = readText(`/proc/${pid}/stat`);
  if (stat === null) return null;
  // The command name (field 2) may hold spaces and parentheses; fields after it are plain.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return rest[19] ?? null;
}

/**
 * True while `pid` runs and, when `startTime` is given, is still the process that had it then
 * (not a later one that got the same PID). A zombie is dead: its threads are gone.
 */
export function processAlive(pid: number, startTime?: string): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const stat = readText(`/proc/${pid}/stat`);
  if (stat === null) return process.platform !== 'linux';
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  if (state === 'Z' || state === 'X') return false;
  return startTime === undefined || processStartTime(pid) === startTime;
}

/** The argument that carries a coordinator's cache name (see CoordinatorHandle's fork). */
export const COORDINATOR_NAME_ARG = '--pcached-cache';

function parentPid(pid: number): number | null {
  const status = readText(`/proc/${pid}/status`);
  const m = status === null ? null : /^PPid:\s+(\d+)$/m.exec(status);
  return m ? Number(m[1]) : null;
}

function commandLine(pid: number): string[] | null {
  const raw = readText(`/proc/${pid}/cmdline`);
  if (raw === null || raw === '') return null;
  return raw.replace(/\0$/, '').split('\0');
}

const isPcachedMain = (args: string[]): boolean => args.some((a) => /(^|\/)(bin\/pcached|cli\/main\.js)$/.test(a));

/**
 * What process `pid` is, for an operator: a pcached coordinator (its cache, and whether its
 * supervisor still runs), or its command line; null when /proc cannot tell.
 */
export function describeProcess(pid: number): string | null {
  const args = commandLine(pid);
  if (args === null) return null;
  const at = args.indexOf(COORDINATOR_NAME_ARG);
  if (args.some((a) => a.endsWith('coordinator/main.js'))) {
    const name = at >= 0 && at + 1 < args.length ? ` of ${JSON.stringify(args[at + 1])}` : '';
    const ppid = parentPid(pid);
    const parent = ppid === null ? null : commandLine(ppid);
    const sup = ppid !== null && parent !== null && isPcachedMain(parent) ? `, supervisor PID ${ppid}` : ', orphaned: its supervisor is gone and it is shutting down';
    return `pcached coordinator${name}${sup}`;
  }
  if (isPcachedMain(args)) return 'pcached';
  const text = [basename(args[0]!), ...args.slice(1)].join(' ');
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** Where the block device `rdev` is mounted (from /proc/self/mountinfo), or null. */
export function mountPointOf(rdev: number | bigint, mountinfo = readText('/proc/self/mountinfo')): string | null {
  if (mountinfo === null) return null;
  const { major, minor } = majorMinor(rdev);
  for (const line of mountinfo.split('\n')) {
    // "36 35 98:0 /mnt1 /mnt/parent rw,... - ext3 /dev/root rw": field 3 is major:minor, field 5 the mount point.
    const f = line.split(' ');
    if (f[2] === `${major}:${minor}` && f[4] !== undefined) return f[4].replace(/\\040/g, ' ');
  }
  return null;
}
