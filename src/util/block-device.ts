// Node exposes neither BLKGETSIZE64 nor lseek(SEEK_END): a block device's size comes from the
// native helper, or from sysfs when the helper is not built.

import fs from 'node:fs';
import { native as loadedNative, type NativeBinding } from '../native/index.js';
import { majorMinor } from './proc-info.js';

const SECTOR = 512;

/** Size in bytes of the block device open on `fd` (rdev from its fstat). Throws a plain Error. */
export function blockDeviceSize(fd: number, rdev: number | bigint, native: NativeBinding | null = loadedNative): number {
  if (native) {
    const size = native.blkGetSize64(fd);
    if (size >= 0) return size;
  }
  const { major, minor } = majorMinor(rdev);
  const sysfs = `/sys/dev/block/${major}:${minor}/size`;
  const sectors = Number(fs.readFileSync(sysfs, 'utf8').trim());
  if (!Number.isSafeInteger(sectors * SECTOR) || sectors < 0) throw new Error(`unreadable device size in ${sysfs}`);
  return sectors * SECTOR;
}
