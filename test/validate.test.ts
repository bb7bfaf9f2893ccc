import test from 'ava';
import { validateRequest, type ExportState } from '../src/coordinator/validate.js';
import { Cmd, CmdFlag, NbdErr } from '../src/nbd/constants.js';
import type { NbdRequest } from '../src/nbd/transmission.js';
import { MAX_REQUEST_PAYLOAD } from '../src/coordinator/limits.js';

const size = 1 << 20;
const rw: ExportState = { size, readOnly: false, structuredReplies: true, metaContext: true };
const ro: ExportState = { ...rw, readOnly: true };
const simple: ExportState = { ...rw, structuredReplies: false, metaContext: false };

function req(type: number, offset: number, length: number, flags = 0, payloadDropped = false): NbdRequest {
  return { type, flags, offset, length, cookieHi: 0, cookieLo: 1, payload: null, payloadDropped };
}

test('range: EINVAL for reads/trims/cache/status, ENOSPC for writes and zeroes', (t) => {
  t.is(validateRequest(req(Cmd.READ, size - 4096, 8192), rw), NbdErr.EINVAL);
  t.is(validateRequest(req(Cmd.TRIM, size, 1), rw), NbdErr.EINVAL);
  t.is(validateRequest(req(Cmd.CACHE, size + 1, 0), rw), NbdErr.EINVAL);
  t.is(validateRequest(req(Cmd.BLOCK_STATUS, size - 1, 2), rw), NbdErr.EINVAL);
  t.is(validateRequest(req(Cmd.WRITE, size - 1, 2), rw), NbdErr.ENOSPC);
  t.is(validateRequest(req(Cmd.WRITE_ZEROES, 2 ** 63, 1), rw), NbdErr.ENOSPC);
  t.is(validateRequest(req(Cmd.READ, 0, size), rw), 0);
  t.is(validateRequest(req(Cmd.WRITE, size - 1, 1), rw), 0);
});

test('read-only export: EPERM for every write-type command, before the range check', (t) => {
  for (const c of [Cmd.WRITE, Cmd.TRIM, Cmd.WRITE_ZEROES]) {
    t.is(validateRequest(req(c, 0, 512), ro), NbdErr.EPERM);
    t.is(validateRequest(req(c, size * 2, 512), ro), NbdErr.EPERM);
  }
  t.is(validateRequest(req(Cmd.READ, 0, 512), ro), 0);
  t.is(validateRequest(req(Cmd.FLUSH, 0, 0), ro), 0);
});

test('flags: unknown bits and flags on the wrong command are EINVAL; FUA is fine everywhere', (t) => {
  t.is(validateRequest(req(Cmd.READ, 0, 512, 1 << 7), rw), NbdErr.EINVAL);
  t.is(validateRequest(req(Cmd.WRITE, 0, 512, CmdFlag.NO_HOLE), rw), NbdErr.EINVAL);
  t.is(validateRequest(req(Cmd.WRITE, 0, 512, CmdFlag.FAST_ZERO), rw), NbdErr.EINVAL);
  t.is(validateRequest(req(Cmd.TRIM, 0, 512, CmdFlag.REQ_ONE), rw), NbdErr.EINVAL);
  t.is(validateRequest(req(Cmd.READ, 0, 512, CmdFlag.DF), simple), NbdErr.EINVAL);
  t.is(validateRequest(req(Cmd.READ, 0, 512, CmdFlag.DF), rw), 0);
  t.is(validateRequest(req(Cmd.WRITE_ZEROES, 0, 512, CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO | CmdFlag.FUA), rw), 0);
  for (const c of [Cmd.READ, Cmd.WRITE, Cmd.FLUSH, Cmd.TRIM, Cmd.CACHE, Cmd.WRITE_ZEROES]) {
    t.is(validateRequest(req(c, 0, c === Cmd.FLUSH ? 0 : 512, CmdFlag.FUA), rw), 0, `FUA on ${c}`);
  }
});

test('unknown commands, non-zero FLUSH fields, oversize reads and writes, block status without context', (t) => {
  t.is(validateRequest(req(8, 0, 0), rw), NbdErr.EINVAL);
  t.is(validateRequest(req(0xffff, 0, 0), rw), NbdErr.EINVAL);
  t.is(validateRequest(req(Cmd.FLUSH, 1, 0), rw), NbdErr.EINVAL);
  const big = { ...rw, size: 2 ** 30 };
  t.is(validateRequest(req(Cmd.READ, 0, MAX_REQUEST_PAYLOAD), big), 0, 'the advertised maximum is accepted');
  t.is(validateRequest(req(Cmd.WRITE, 0, MAX_REQUEST_PAYLOAD), big), 0);
  t.is(validateRequest(req(Cmd.READ, 0, MAX_REQUEST_PAYLOAD + 1), big), NbdErr.EOVERFLOW, 'structured: the spec\'s hint to retry smaller');
  t.is(validateRequest(req(Cmd.READ, 0, MAX_REQUEST_PAYLOAD + 1), { ...simple, size: 2 ** 30 }), NbdErr.EINVAL);
  t.is(validateRequest(req(Cmd.WRITE, 0, MAX_REQUEST_PAYLOAD + 1), big), NbdErr.EINVAL);
  t.is(validateRequest(req(Cmd.WRITE, 2 ** 30, MAX_REQUEST_PAYLOAD + 1), big), NbdErr.EINVAL, 'size before range');
  // Effect-only commands may exceed the maximum payload.
  t.is(validateRequest(req(Cmd.WRITE_ZEROES, 0, 2 ** 30), big), 0);
  t.is(validateRequest(req(Cmd.TRIM, 0, 2 ** 30), big), 0);
  t.is(validateRequest(req(Cmd.BLOCK_STATUS, 0, 512), simple), NbdErr.EINVAL);
  t.is(validateRequest(req(Cmd.BLOCK_STATUS, 0, 512), { ...rw, metaContext: false }), NbdErr.EINVAL);
  t.is(validateRequest(req(Cmd.BLOCK_STATUS, 0, 0), rw), NbdErr.EINVAL);
});
