// Every request passes here before it reaches a stripe, checked in nbdkit's order: command
// known, flags allowed for the command, read-only, reserved fields, size, range.
// Returns 0 or the errno to reply with (the reply maps it, src/nbd/errors.ts); the connection
// always stays usable. A WRITE is validated when its header arrives, so a refused one has its
// payload dropped unbuffered.

import { Cmd, CmdFlag } from '../nbd/constants.js';
import { Errno } from '../util/errno.js';
import type { NbdRequest } from '../nbd/transmission.js';
import { MAX_REQUEST_PAYLOAD } from './limits.js';

export interface ExportState {
  size: number;
  readOnly: boolean;
  structuredReplies: boolean;
  /** base:allocation selected with SET_META_CONTEXT. */
  metaContext: boolean;
}

const KNOWN_FLAGS = CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.DF | CmdFlag.REQ_ONE | CmdFlag.FAST_ZERO;

function flagsAllowed(type: number, flags: number, st: ExportState): boolean {
  if ((flags & ~KNOWN_FLAGS) !== 0) return false;
  // FUA is valid on every command once SEND_FUA is advertised (proto "Command flags").
  if ((flags & (CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO)) !== 0 && type !== Cmd.WRITE_ZEROES) return false;
  if ((flags & CmdFlag.DF) !== 0 && (type !== Cmd.READ || !st.structuredReplies)) return false;
  if ((flags & CmdFlag.REQ_ONE) !== 0 && type !== Cmd.BLOCK_STATUS) return false;
  return true;
}

export function validateRequest(req: NbdRequest, st: ExportState): number {
  const { type, flags, offset, length } = req;
  if (type > Cmd.BLOCK_STATUS || type === Cmd.DISC) {
    // DISC never gets here (it has no reply); anything unknown is EINVAL.
    return Errno.EINVAL;
  }
  if (!flagsAllowed(type, flags, st)) return Errno.EINVAL;
  const writes = type === Cmd.WRITE || type === Cmd.TRIM || type === Cmd.WRITE_ZEROES;
  if (writes && st.readOnly) return Errno.EPERM;
  if (type === Cmd.FLUSH) return offset === 0 && length === 0 ? 0 : Errno.EINVAL;
  if ((type === Cmd.READ || type === Cmd.WRITE) && length > MAX_REQUEST_PAYLOAD) {
    // The spec's hint for a read that is too large is EOVERFLOW (retry smaller); a simple-reply
    // client or a WRITE broke the advertised maximum: EINVAL.
    return type === Cmd.READ && st.structuredReplies ? Errno.EOVERFLOW : Errno.EINVAL;
  }
  // offset may be a rounded u64; anything >= 2^53 is beyond every size we can serve.
  if (offset > st.size || length > st.size - offset) {
    return type === Cmd.WRITE || type === Cmd.WRITE_ZEROES ? Errno.ENOSPC : Errno.EINVAL;
  }
  if (type === Cmd.BLOCK_STATUS) {
    if (!st.structuredReplies || !st.metaContext) return Errno.EINVAL;
    if (length === 0) return Errno.EINVAL;
  }
  return 0;
}
