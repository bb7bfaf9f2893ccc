// Internal errnos (src/util/errno.ts) and the two NBD edges (src/nbd/errors.ts): the reply our
// server writes and the reply a remote server sent the NBD origin. Wire values and commands are
// spelled out so the test does not share the code's constants.

import test from 'ava';
import fc from 'fast-check';
import fs from 'node:fs';
import os from 'node:os';
import { Errno, errnoFromError, errnoFromResult, errnoName } from '../src/util/errno.js';
import { errnoFromNbd, nbdError, type ReplyContext } from '../src/nbd/errors.js';

const e = os.constants.errno;
/** Linux's ESHUTDOWN: libuv's table, and so Node's, does not have it. */
const ESHUTDOWN = 108;
// NBD wire values ([proto] "Error values").
const NBD = { OK: 0, EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;
const WIRE_VALUES = new Set<number>(Object.values(NBD));
const READ = 0, WRITE = 1, FLUSH = 3, TRIM = 4, WRITE_ZEROES = 6, BLOCK_STATUS = 7;
const FUA = 1, DF = 4, FAST_ZERO = 16;

const ctx = (over: Partial<ReplyContext> = {}): ReplyContext => ({ type: WRITE, flags: 0, structured: true, shuttingDown: false, ...over });

test('Errno holds the platform\'s numbers', (t) => {
  const ours: Array<[string, number]> = [
    ['EPERM', Errno.EPERM], ['EIO', Errno.EIO], ['ENOMEM', Errno.ENOMEM], ['EACCES', Errno.EACCES],
    ['EINVAL', Errno.EINVAL], ['EFBIG', Errno.EFBIG], ['ENOSPC', Errno.ENOSPC], ['EROFS', Errno.EROFS],
    ['EOVERFLOW', Errno.EOVERFLOW], ['ENOTSUP', Errno.ENOTSUP], ['EOPNOTSUPP', Errno.EOPNOTSUPP],
    ['EDQUOT', Errno.EDQUOT],
  ];
  for (const [name, n] of ours) t.is(n, (e as Record<string, number>)[name], name);
  t.is(Errno.ESHUTDOWN, ESHUTDOWN);
});

test('thrown errors and negative results become positive errnos, the cause kept', (t) => {
  const thrown = (fn: () => unknown): unknown => {
    try {
      fn();
    } catch (err) {
      return err;
    }
    throw new Error('did not throw');
  };
  t.is(errnoFromError(thrown(() => fs.openSync('/nonexistent/pcached', 'r'))), e.ENOENT);
  t.is(errnoFromError(thrown(() => fs.readSync(-5, Buffer.alloc(1)))), e.EINVAL, 'ERR_OUT_OF_RANGE');
  t.is(errnoFromError(Object.assign(new Error('x'), { code: 'EDQUOT', errno: -e.EDQUOT })), e.EDQUOT);
  t.is(errnoFromError(Object.assign(new Error('x'), { errno: -e.EROFS })), e.EROFS, 'libuv\'s negative errno');
  t.is(errnoFromError(Object.assign(new Error('x'), { code: 'ENOSPC' })), e.ENOSPC, 'the code alone');
  t.is(errnoFromError(Object.assign(new Error('x'), { code: 'constructor' })), e.EIO, 'no prototype lookups');
  t.is(errnoFromError(Object.assign(new Error('x'), { errno: 0 })), e.EIO, 'errno 0 is no error to report');
  t.is(errnoFromError(new Error('plain')), e.EIO);
  t.is(errnoFromError('a string'), e.EIO);
  t.is(errnoFromError(null), e.EIO);

  t.is(errnoFromResult(-e.EROFS), e.EROFS, 'the addon\'s -errno');
  t.is(errnoFromResult(-e.ENXIO), e.ENXIO);
  t.is(errnoFromResult(0), e.EIO, 'not a failure: a caller bug, reported as EIO');
  t.is(errnoFromResult(3), e.EIO);

  t.is(errnoName(e.EROFS), 'EROFS');
  t.is(errnoName(95), 'ENOTSUP', 'the NBD spelling of 95');
  t.is(errnoName(ESHUTDOWN), 'ESHUTDOWN');
  t.is(errnoName(9999), 'errno 9999');
});

test('every errno maps to the NBD value the spec asks for, at the reply', (t) => {
  const table: Array<[string, number, Partial<ReplyContext>, number]> = [
    ['success', 0, {}, NBD.OK],
    ['success, READ', 0, { type: READ }, NBD.OK],
    ['EPERM', e.EPERM, {}, NBD.EPERM],
    ['EROFS', e.EROFS, {}, NBD.EPERM],
    ['EACCES', e.EACCES, {}, NBD.EPERM],
    ['EIO', e.EIO, {}, NBD.EIO],
    ['ENOMEM', e.ENOMEM, {}, NBD.ENOMEM],
    ['EINVAL', e.EINVAL, {}, NBD.EINVAL],
    ['ENOSPC', e.ENOSPC, {}, NBD.ENOSPC],
    ['EDQUOT', e.EDQUOT, {}, NBD.ENOSPC],
    ['EFBIG', e.EFBIG, {}, NBD.ENOSPC],
    ['EOVERFLOW, structured READ', e.EOVERFLOW, { type: READ }, NBD.EOVERFLOW],
    ['EOVERFLOW, structured READ with DF', e.EOVERFLOW, { type: READ, flags: DF }, NBD.EOVERFLOW],
    ['EOVERFLOW, simple READ', e.EOVERFLOW, { type: READ, structured: false }, NBD.EINVAL],
    ['EOVERFLOW, WRITE', e.EOVERFLOW, { type: WRITE }, NBD.EINVAL],
    ['EOVERFLOW, BLOCK_STATUS', e.EOVERFLOW, { type: BLOCK_STATUS }, NBD.EINVAL],
    ['ENOTSUP, fast zero', e.ENOTSUP, { type: WRITE_ZEROES, flags: FAST_ZERO }, NBD.ENOTSUP],
    ['EOPNOTSUPP, fast zero with FUA', e.EOPNOTSUPP, { type: WRITE_ZEROES, flags: FAST_ZERO | FUA }, NBD.ENOTSUP],
    ['ENOTSUP, plain zero', e.ENOTSUP, { type: WRITE_ZEROES }, NBD.EINVAL],
    ['ENOTSUP, TRIM', e.ENOTSUP, { type: TRIM }, NBD.EINVAL],
    ['ENOTSUP, READ', e.ENOTSUP, { type: READ }, NBD.EINVAL],
    ['ESHUTDOWN, shutting down', ESHUTDOWN, { type: FLUSH, shuttingDown: true }, NBD.ESHUTDOWN],
    ['ESHUTDOWN, running (an origin closing)', ESHUTDOWN, { type: FLUSH }, NBD.EIO],
    ['EIO while shutting down', e.EIO, { shuttingDown: true }, NBD.EIO],
    ['ENOENT', e.ENOENT, {}, NBD.EIO],
    ['EBADF', e.EBADF, {}, NBD.EIO],
    ['ENXIO', e.ENXIO, {}, NBD.EIO],
    ['EAGAIN', e.EAGAIN, {}, NBD.EIO],
    ['ETIMEDOUT', e.ETIMEDOUT, {}, NBD.EIO],
    ['ECONNRESET', e.ECONNRESET, {}, NBD.EIO],
    ['ECANCELED', e.ECANCELED, {}, NBD.EIO],
    ['unnamed', 9999, {}, NBD.EIO],
  ];
  for (const [what, errno, over, wire] of table) t.is(nbdError(errno, ctx(over)), wire, what);
});

test('property: a reply only ever carries a value the spec defines, and the restricted ones only where allowed', (t) => {
  const contexts = fc.record({
    type: fc.constantFrom(READ, WRITE, FLUSH, TRIM, 5, WRITE_ZEROES, BLOCK_STATUS),
    flags: fc.integer({ min: 0, max: 31 }),
    structured: fc.boolean(),
    shuttingDown: fc.boolean(),
  });
  fc.assert(fc.property(fc.integer({ min: 0, max: 4096 }), contexts, (errno, c) => {
    const v = nbdError(errno, c);
    if (!WIRE_VALUES.has(v)) return false;
    if ((v === 0) !== (errno === 0)) return false;
    if (v === NBD.EOVERFLOW && !(c.type === READ && c.structured)) return false;
    if (v === NBD.ENOTSUP && !(c.type === WRITE_ZEROES && (c.flags & FAST_ZERO) !== 0)) return false;
    if (v === NBD.ESHUTDOWN && !c.shuttingDown) return false;
    return true;
  }));
  t.pass();
});

test('a remote server\'s error values become errnos; anything outside the set counts as EINVAL', (t) => {
  for (const v of WIRE_VALUES) t.is(errnoFromNbd(v), v, `wire ${v}`);
  for (const v of [2, 13, 30, 104, 122, 0x80000000, 0xffffffff]) t.is(errnoFromNbd(v), e.EINVAL, `wire ${v}`);
  // Passed on unchanged where the spec allows the value at all.
  for (const v of WIRE_VALUES) {
    t.is(nbdError(errnoFromNbd(v), ctx({ type: WRITE_ZEROES, flags: FAST_ZERO, shuttingDown: true })), v === NBD.EOVERFLOW ? NBD.EINVAL : v);
  }
  t.is(nbdError(errnoFromNbd(NBD.EOVERFLOW), ctx({ type: READ })), NBD.EOVERFLOW);
});
