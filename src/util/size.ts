// Sizes in configs and flags: a plain byte count or a number with a unit (K/M/G/T, KiB/MiB/...,
// KB/MB/... are all powers of 1024: this is a block device tool, nobody means 10^9 here).

const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50 };

export function parseSize(input: string | number): number {
  if (typeof input === 'number') {
    if (!Number.isSafeInteger(input) || input < 0) throw new RangeError(`invalid size ${input}: must be a non-negative integer number of bytes`);
    return input;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$/i.exec(input) ?? /^\s*(\d+)\s*(b)\s*$/i.exec(input);
  if (!m) throw new RangeError(`invalid size "${input}": expected a number with an optional unit (e.g. 4096, 256M, 1GiB)`);
  const bytes = Number(m[1]) * (UNITS[(m[2] ?? '').toLowerCase()] ?? NaN);
  if (!Number.isSafeInteger(bytes)) throw new RangeError(`invalid size "${input}": not a whole number of bytes`);
  return bytes;
}

export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1 && v % 1024 === 0) { v /= 1024; i++; }
  return `${v}${units[i]}`;
}

/** For people: binary units with one decimal ("12.3 MiB", "512 B"); exact values stay whole ("64 MiB"). */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = Math.abs(bytes);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  const digits = i === 0 || Number.isInteger(v) ? v.toFixed(0) : v.toFixed(1);
  return `${bytes < 0 ? '-' : ''}${digits} ${units[i]}`;
}
