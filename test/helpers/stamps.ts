// Stamped 4 KiB blocks: write number `version` of block `block` has content that says exactly
// that in every 16 bytes, so a check can tell which version a block holds and recognise a block
// torn between versions (512-byte sectors of different writes), a stamp of another block, or
// bytes nobody wrote.
//
// Layout of each 16-byte unit i (0..255): "STMP", u32 LE block, u32 LE version, u32 LE mix(block,
// version, i). An all-zero block is version 0 (never written: what a fresh image holds).

export const STAMP_BLOCK = 4096;
const UNIT = 16;
const SECTOR = 512;
const MAGIC = 0x504d5453; // "STMP" read as u32 LE

function mix(block: number, version: number, unit: number): number {
  let h = Math.imul(block ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(version + 0x7f4a7c15, 0xc2b2ae35) ^ Math.imul(unit + 1, 0x27d4eb2f);
  h ^= h >>> 15;
  return Math.imul(h, 0x2c1b3c6d) >>> 0;
}

export function stampBlock(block: number, version: number, into: Buffer = Buffer.allocUnsafe(STAMP_BLOCK), at = 0): Buffer {
  for (let i = 0; i < STAMP_BLOCK / UNIT; i++) {
    const o = at + i * UNIT;
    into.writeUInt32LE(MAGIC, o);
    into.writeUInt32LE(block >>> 0, o + 4);
    into.writeUInt32LE(version >>> 0, o + 8);
    into.writeUInt32LE(mix(block, version, i), o + 12);
  }
  return into;
}

/** What one 4 KiB block holds: a version (0: zeros), or a description of what is wrong with it. */
export type StampRead = { version: number } | { bad: string };

/** Decodes the block at `buf[at..at+4096)` expected to be block `block`. */
export function readStamp(buf: Buffer, block: number, at = 0): StampRead {
  const end = at + STAMP_BLOCK;
  let zero = true;
  for (let i = at; i < end; i += 4) if (buf.readUInt32LE(i) !== 0) { zero = false; break; }
  if (zero) return { version: 0 };
  const sectors: string[] = [];
  let first = -1;
  let whole = true;
  for (let s = 0; s < STAMP_BLOCK / SECTOR; s++) {
    const v = sectorVersion(buf, at + s * SECTOR, block, s);
    if (typeof v === 'string') {
      whole = false;
      sectors.push(v);
      continue;
    }
    sectors.push(`v${v}`);
    if (first < 0) first = v;
    else if (v !== first) whole = false;
  }
  if (whole && first >= 0) return { version: first };
  return { bad: `torn or foreign block (sectors: ${sectors.join(' ')})` };
}

/** The version one 512-byte sector is an intact copy of, or what it is instead. */
function sectorVersion(buf: Buffer, at: number, block: number, sector: number): number | string {
  if (buf.readUInt32LE(at) !== MAGIC) {
    let zero = true;
    for (let i = at; i < at + SECTOR; i += 4) if (buf.readUInt32LE(i) !== 0) { zero = false; break; }
    return zero ? 'zeros' : 'garbage';
  }
  const b = buf.readUInt32LE(at + 4);
  const v = buf.readUInt32LE(at + 8);
  if (b !== block) return `block${b}`;
  for (let u = 0; u < SECTOR / UNIT; u++) {
    const o = at + u * UNIT;
    const unit = sector * (SECTOR / UNIT) + u;
    if (buf.readUInt32LE(o) !== MAGIC || buf.readUInt32LE(o + 4) !== b || buf.readUInt32LE(o + 8) !== v || buf.readUInt32LE(o + 12) !== mix(b, v, unit)) {
      return `v${v}-damaged`;
    }
  }
  return v;
}
