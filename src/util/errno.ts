// Errors inside pcached are positive Linux errno numbers, whatever produced them: a thrown
// SystemError, a negative libuv or addon result, a remote NBD server's reply (converted where
// it arrives, src/nbd/errors.ts). Origins, the cache engine, the stripe rings and the
// coordinator carry them unchanged, so a log line can still say EROFS or EDQUOT; only the
// server's reply turns one into an NBD error value (nbdError in src/nbd/errors.ts).

import { constants as osConstants } from 'node:os';

/** The errnos pcached produces or tells apart. Linux numbers: the daemon runs on Linux only. */
export const enum Errno {
  OK = 0,
  EPERM = 1,
  EIO = 5,
  ENOMEM = 12,
  EACCES = 13,
  EINVAL = 22,
  EFBIG = 27,
  ENOSPC = 28,
  EROFS = 30,
  EOVERFLOW = 75,
  /** The same number as EOPNOTSUPP on Linux. */
  ENOTSUP = 95,
  EOPNOTSUPP = 95,
  ESHUTDOWN = 108,
  EDQUOT = 122,
}

const numberOf = osConstants.errno as Readonly<Record<string, number | undefined>>;
const nameOf = new Map<number, string>();
for (const [name, n] of Object.entries(numberOf)) if (n !== undefined && !nameOf.has(n)) nameOf.set(n, name);
// Both spellings share 95; the NBD name is the one readers look for in logs.
nameOf.set(Errno.ENOTSUP, 'ENOTSUP');
// libuv's table, which Node exposes, has no ESHUTDOWN.
nameOf.set(Errno.ESHUTDOWN, 'ESHUTDOWN');

/** Node's argument-validation codes: the request carried a value the call cannot take. */
const invalidArgumentCodes = new Set(['ERR_OUT_OF_RANGE', 'ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_VALUE']);

/** A negative result of the addon or libuv (-errno) as an errno; one that is not negative is a bug, so EIO. */
export function errnoFromResult(r: number): number {
  return Number.isInteger(r) && r < 0 ? -r : Errno.EIO;
}

/** A thrown value (a SystemError from fs.*, libuv's callbacks, io_uring) as an errno; EIO when it names none. */
export function errnoFromError(err: unknown): number {
  if (typeof err !== 'object' || err === null) return Errno.EIO;
  const { code, errno } = err as { code?: unknown; errno?: unknown };
  if (typeof code === 'string') {
    const n = Object.hasOwn(numberOf, code) ? numberOf[code] : undefined;
    if (n !== undefined && n > 0) return n;
    if (invalidArgumentCodes.has(code)) return Errno.EINVAL;
  }
  if (typeof errno === 'number' && Number.isInteger(errno) && errno !== 0) return Math.abs(errno);
  return Errno.EIO;
}

/** 'EROFS' for logs and messages; numbers the platform does not name stay numbers. */
export function errnoName(errno: number): string {
  return nameOf.get(errno) ?? `errno ${errno}`;
}
