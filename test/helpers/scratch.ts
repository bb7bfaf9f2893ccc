// Scratch directories a test file makes and removes in its after.always hook, so runs do not
// pile directories up in /tmp.

import { closeSync, constants, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const made: string[] = [];

export function scratchDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}

export function removeScratchDirs(): void {
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
}

/** Whether files in `dir` can be opened with O_DIRECT (not on tmpfs, for one). */
export function directIoWorks(dir: string): boolean {
  const probe = join(dir, 'direct-probe');
  writeFileSync(probe, Buffer.alloc(4096));
  try {
    closeSync(openSync(probe, constants.O_WRONLY | constants.O_DIRECT));
    return true;
  } catch {
    return false;
  } finally {
    rmSync(probe, { force: true });
  }
}
