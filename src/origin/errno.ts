// The one place where an operating-system error becomes an NBD error value. The wire allows
// only a handful of values (NbdErr); anything without a specific meaning for the client is EIO.

import { constants as osConstants } from 'node:os';
import { NbdErr } from '../nbd/constants.js';

const byName: Readonly<Record<string, NbdErr>> = {
  EROFS: NbdErr.EPERM,
  EPERM: NbdErr.EPERM,
  EACCES: NbdErr.EPERM,
  ENOSPC: NbdErr.ENOSPC,
  EDQUOT: NbdErr.ENOSPC,
  EFBIG: NbdErr.ENOSPC,
  EOPNOTSUPP: NbdErr.ENOTSUP,
  ENOTSUP: NbdErr.ENOTSUP,
  EINVAL: NbdErr.EINVAL,
  ENOMEM: NbdErr.ENOMEM,
};

/** errno number (either sign: the addon returns -errno, libuv uses negative values too) → NbdErr. */
const byNumber: ReadonlyMap<number, NbdErr> = new Map(
  Object.entries(byName).flatMap(([name, nbd]) => {
    const n = (osConstants.errno as Record<string, number | undefined>)[name];
    return n === undefined ? [] : [[n, nbd] as const];
  }),
);

/** Node's argument-validation codes: the request carried a value the call cannot take. */
const invalidArgumentCodes = new Set(['ERR_OUT_OF_RANGE', 'ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_VALUE']);

export function nbdErrFromErrno(errno: number): NbdErr {
  return byNumber.get(Math.abs(errno)) ?? NbdErr.EIO;
}

export function nbdErrFromErrnoName(name: string): NbdErr {
  return Object.hasOwn(byName, name) ? byName[name] : NbdErr.EIO;
}

/** A thrown value from fs.*Sync (a SystemError with `code` 'ENOSPC' etc.) or anything else → NbdErr. */
export function nbdErrFromError(err: unknown): NbdErr {
  if (typeof err !== 'object' || err === null) return NbdErr.EIO;
  const { code, errno } = err as { code?: unknown; errno?: unknown };
  if (typeof code === 'string') {
    if (Object.hasOwn(byName, code)) return byName[code];
    if (invalidArgumentCodes.has(code)) return NbdErr.EINVAL;
  }
  if (typeof errno === 'number') return nbdErrFromErrno(errno);
  return NbdErr.EIO;
}
