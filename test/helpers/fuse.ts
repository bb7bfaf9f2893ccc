// An NBD export as a local file, through nbdfuse (Debian: libnbd-bin) and FUSE (fuse3 for
// fusermount3), so that a pcached cache file or file origin can sit on a faulty disk.
//
// What nbdfuse 1.14 does with the file, measured here against the faulty disk's counters
// (test/faulty-disk.test.ts checks each of these):
// - No options are needed for durability: fdatasync/fsync on the file sends one NBD FLUSH and
//   returns its error (EIO from a failing flush reaches fdatasync). pwrite returns the NBD WRITE's
//   error (EIO). Neither close() nor unmounting sends a FLUSH: what was not fdatasynced stays in
//   the disk's volatile cache (contrary to older notes saying the last close flushes).
// - The kernel's FUSE writeback cache is off (libfuse3 and nbdfuse do not ask for it), so every
//   pwrite is sent to the disk before it returns, with its own offset and length (a 10-byte pwrite
//   is a 10-byte NBD WRITE); nothing is written back later behind the caller's back.
// - The page cache still keeps what was read or written: a file descriptor that stays open can
//   read data the disk has since dropped (a failed flush). Without `-o kernel_cache` every open()
//   of the file invalidates that cache, so a reopened file reads what the disk really holds.
//   O_DIRECT opens work and bypass it.
// - When the disk dies (a power cut) requests fail with ENOTCONN/ECONNABORTED and nbdfuse may
//   abort on an internal assertion; the mount then answers "Transport endpoint is not connected"
//   until it is unmounted, while `mountpoint -q` says it is no mount point at all (stat fails),
//   so unmounting goes by /proc/self/mountinfo instead. After a power cut the mount is torn down
//   (fusermount3 -u, nbdfuse killed by PID if it still runs) and made again once the disk is
//   back: `remount()`.
// - It opens 4 connections when the server advertises multi-conn (the faulty disk does, and a
//   FLUSH on one covers writes completed on all of them).

import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { spawnTracked, sleep, within, type Proc } from './lifecycle.js';
import { missingTools, run, TOOL_ENV } from './tools.js';

export interface FuseMount {
  /** The mount point (a directory). */
  readonly dir: string;
  /** The file standing for the export: `${dir}/${name}`. */
  readonly file: string;
  readonly uri: string;
  /** PID of the running nbdfuse (0 while unmounted). */
  readonly pid: number;
  mounted(): Promise<boolean>;
  /** fusermount3 -u (lazy as a last resort), then nbdfuse stopped by PID. Safe to call twice. */
  unmount(): Promise<void>;
  /** Unmount if mounted, then mount the same URI again (after the disk under it restarted). */
  remount(): Promise<void>;
}

/** Why FUSE tests cannot run here, or null. */
export function fuseUnavailable(): string | null {
  const missing = missingTools('nbdfuse', 'fusermount3', 'mountpoint');
  if (missing.length) return `missing tool(s): ${missing.join(', ')} (run scripts/install-test-deps.sh as root)`;
  if (!existsSync('/dev/fuse')) return '/dev/fuse is missing (no FUSE in this kernel or container)';
  return null;
}

/** `mountpoint -q`: a live mount. It says no for a FUSE mount whose daemon died (stat fails). */
export async function isMountpoint(dir: string): Promise<boolean> {
  const r = await run('mountpoint', ['-q', dir], { timeoutMs: 10_000 });
  return r.code === 0;
}

/** Anything mounted at `dir`, dead FUSE mounts included: the kernel's own mount table. */
export function hasMount(dir: string): boolean {
  const want = resolve(dir);
  // Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
  const unescape = (p: string): string => p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => unescape(l.split(' ')[4] ?? '') === want);
}

const MOUNT_TIMEOUT_MS = 15_000;

/**
 * Mounts `uri` at `dir/name` (default `nbd`) with nbdfuse; resolves once `mountpoint -q dir`
 * holds and the file is there. With `t`, the mount is undone in teardown.
 */
export async function mountNbd(o: { dir: string; uri: string; name?: string; connections?: number; t?: { teardown(fn: () => unknown): void } }): Promise<FuseMount> {
  const name = o.name ?? 'nbd';
  const file = join(o.dir, name);
  const pidFile = `${o.dir}.nbdfuse.pid`;
  let proc: Proc | null = null;

  const mount = async (): Promise<void> => {
    if (hasMount(o.dir)) throw new Error(`${o.dir} is already a mount point`);
    mkdirSync(o.dir, { recursive: true });
    rmSync(pidFile, { force: true });
    const args = ['-P', pidFile, ...(o.connections ? ['-C', String(o.connections)] : []), file, o.uri];
    const p = spawnTracked('nbdfuse', args, { env: TOOL_ENV });
    proc = p;
    const deadline = Date.now() + MOUNT_TIMEOUT_MS;
    // nbdfuse writes its PID file once it serves; only then is the mount usable.
    while (!(existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '' && (await isMountpoint(o.dir)) && existsSync(file))) {
      if (!p.alive()) throw new Error(`nbdfuse exited with ${p.exitCode()} before ${o.dir} was mounted:\n${p.output()}`);
      if (Date.now() > deadline) {
        await p.stop('SIGKILL');
        throw new Error(`nbdfuse did not mount ${o.dir} within ${MOUNT_TIMEOUT_MS} ms:\n${p.output()}`);
      }
      await sleep(20);
    }
  };

  const unmount = async (): Promise<void> => {
    // Not `mountpoint -q`: it misses the dead mount a killed nbdfuse leaves behind.
    for (let attempt = 0; hasMount(o.dir); attempt++) {
      // A dead nbdfuse leaves "Transport endpoint is not connected": -u still clears it.
      const r = await run('fusermount3', attempt < 20 ? ['-u', o.dir] : ['-u', '-z', o.dir], { timeoutMs: 10_000 });
      if (r.code === 0 || attempt >= 20) break;
      await sleep(100);
    }
    const p = proc;
    proc = null;
    // After the unmount nbdfuse waits for its last requests, then exits by itself.
    if (p) {
      await within(p.exited, 5_000, -1);
      await p.stop('SIGKILL');
    }
    rmSync(pidFile, { force: true });
  };

  await mount();
  const m: FuseMount = {
    dir: o.dir,
    file,
    uri: o.uri,
    get pid() { return (proc as Proc | null)?.pid ?? 0; },
    mounted: () => isMountpoint(o.dir),
    unmount,
    async remount() {
      await unmount();
      await mount();
    },
  };
  o.t?.teardown(unmount);
  return m;
}
