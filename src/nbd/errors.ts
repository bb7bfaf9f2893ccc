// The NBD wire's error values ([proto] "Error values") at the two edges where they meet
// pcached's internal errnos (src/util/errno.ts): a reply our server writes (nbdError, called
// only by Session.writeStatus), and a reply a remote server sent to the NBD origin
// (errnoFromNbd). Everything in between carries errnos.

import { Cmd, CmdFlag, NbdErr } from './constants.js';
import { Errno } from '../util/errno.js';

/** What the spec lets the answer depend on: the request, the reply form, the server's state. */
export interface ReplyContext {
  type: number;
  flags: number;
  /** Structured replies were negotiated. */
  structured: boolean;
  /** The server is draining its connections to stop. */
  shuttingDown: boolean;
}

/**
 * The value for the reply's error field. The spec allows few values and restricts some:
 * EOVERFLOW only to a READ with structured replies (retry smaller), ENOTSUP only to a
 * WRITE_ZEROES with FAST_ZERO (not fast: zero the slow way), ESHUTDOWN only while the server
 * shuts down (the client must disconnect on it). Anything the client cannot act on is EIO.
 */
export function nbdError(errno: number, ctx: ReplyContext): NbdErr {
  switch (errno) {
    case Errno.OK:
      return NbdErr.OK;
    case Errno.EPERM: case Errno.EROFS: case Errno.EACCES:
      return NbdErr.EPERM;
    case Errno.ENOSPC: case Errno.EDQUOT: case Errno.EFBIG:
      return NbdErr.ENOSPC;
    case Errno.EINVAL:
      return NbdErr.EINVAL;
    case Errno.ENOMEM:
      return NbdErr.ENOMEM;
    case Errno.EOVERFLOW:
      return ctx.type === Cmd.READ && ctx.structured ? NbdErr.EOVERFLOW : NbdErr.EINVAL;
    case Errno.ENOTSUP:
      // nbdkit's choice too: an operation we cannot do for this request is a request we refuse.
      return ctx.type === Cmd.WRITE_ZEROES && (ctx.flags & CmdFlag.FAST_ZERO) !== 0 ? NbdErr.ENOTSUP : NbdErr.EINVAL;
    case Errno.ESHUTDOWN:
      return ctx.shuttingDown ? NbdErr.ESHUTDOWN : NbdErr.EIO;
    default:
      return NbdErr.EIO;
  }
}

/**
 * A remote server's error value as an errno. The wire values are Linux's numbers for the same
 * errors; one outside the set counts as EINVAL, as the spec asks of clients.
 */
export function errnoFromNbd(value: number): number {
  switch (value) {
    case NbdErr.OK: return Errno.OK;
    case NbdErr.EPERM: return Errno.EPERM;
    case NbdErr.EIO: return Errno.EIO;
    case NbdErr.ENOMEM: return Errno.ENOMEM;
    case NbdErr.EINVAL: return Errno.EINVAL;
    case NbdErr.ENOSPC: return Errno.ENOSPC;
    case NbdErr.EOVERFLOW: return Errno.EOVERFLOW;
    case NbdErr.ENOTSUP: return Errno.ENOTSUP;
    case NbdErr.ESHUTDOWN: return Errno.ESHUTDOWN;
    default: return Errno.EINVAL;
  }
}
