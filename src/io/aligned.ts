// Buffers for O_DIRECT. The kernel wants the memory, the file offset and the length aligned to the
// device's logical block; JS cannot choose where a buffer lands, so a window at an aligned address
// is cut out of a slightly larger allocation, found with the addon's addressMod.

import { native } from '../native/index.js';

/** Memory alignment of every buffer handed to the kernel (a page: safe for any logical block). */
export const MEM_ALIGN = 4096;

/** True when addressMod exists, without which no aligned buffer can be found. */
export function canAlign(): boolean {
  return native?.addressMod !== undefined;
}

/** True when `view` starts at a `align`-aligned address. */
export function isAligned(view: Uint8Array, align = MEM_ALIGN): boolean {
  return native?.addressMod !== undefined && native.addressMod(view, align) === 0;
}

/**
 * A buffer of `len` bytes starting at a MEM_ALIGN-aligned address: zeroed, unless the caller only
 * ever exposes bytes a read has just filled (zeroing a 1 MiB chunk of read windows was 2.8 % of
 * the coordinator under direct read hits).
 */
export function alignedBuffer(len: number, zeroed = true): Buffer {
  if (native?.addressMod === undefined) throw new Error('aligned buffers need the native addon (addressMod)');
  const raw = zeroed ? Buffer.alloc(len + MEM_ALIGN) : Buffer.allocUnsafeSlow(len + MEM_ALIGN);
  const mod = native.addressMod(raw, MEM_ALIGN);
  const start = mod === 0 ? 0 : MEM_ALIGN - mod;
  return raw.subarray(start, start + len);
}
