// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md).
// All integers on the wire are big-endian.

export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
// Extended headers (experimental) magics, only recognised to reject cleanly.
export const EXTENDED_REQUEST_MAGIC = 0x21e41c71;

/** Handshake flags sent by the server in the greeting (u16). */
export const enum HandshakeFlag {
  FIXED_NEWSTYLE = 1 << 0,
  NO_ZEROES = 1 << 1,
}

/** Client flags sent in reply to the greeting (u32). */
export const enum ClientFlag {
  C_FIXED_NEWSTYLE = 1 << 0,
  C_NO_ZEROES = 1 << 1,
}

export const enum Opt {
  EXPORT_NAME = 1,
  ABORT = 2,
  LIST = 3,
  PEEK_EXPORT = 4,
  STARTTLS = 5,
  INFO = 6,
  GO = 7,
  STRUCTURED_REPLY = 8,
  LIST_META_CONTEXT = 9,
  SET_META_CONTEXT = 10,
  EXTENDED_HEADERS = 11,
}

export const enum Rep {
  ACK = 1,
  SERVER = 2,
  INFO = 3,
  META_CONTEXT = 4,
  ERR_UNSUP = 0x80000001,
  ERR_POLICY = 0x80000002,
  ERR_INVALID = 0x80000003,
  ERR_PLATFORM = 0x80000004,
  ERR_TLS_REQD = 0x80000005,
  ERR_UNKNOWN = 0x80000006,
  ERR_SHUTDOWN = 0x80000007,
  ERR_BLOCK_SIZE_REQD = 0x80000008,
  ERR_TOO_BIG = 0x80000009,
}

export const enum Info {
  EXPORT = 0,
  NAME = 1,
  DESCRIPTION = 2,
  BLOCK_SIZE = 3,
}

/** Transmission flags (u16), in NBD_INFO_EXPORT and the EXPORT_NAME reply. */
export const enum TxFlag {
  HAS_FLAGS = 1 << 0,
  READ_ONLY = 1 << 1,
  SEND_FLUSH = 1 << 2,
  SEND_FUA = 1 << 3,
  ROTATIONAL = 1 << 4,
  SEND_TRIM = 1 << 5,
  SEND_WRITE_ZEROES = 1 << 6,
  SEND_DF = 1 << 7,
  CAN_MULTI_CONN = 1 << 8,
  SEND_RESIZE = 1 << 9,
  SEND_CACHE = 1 << 10,
  SEND_FAST_ZERO = 1 << 11,
}

export const enum Cmd {
  READ = 0,
  WRITE = 1,
  DISC = 2,
  FLUSH = 3,
  TRIM = 4,
  CACHE = 5,
  WRITE_ZEROES = 6,
  BLOCK_STATUS = 7,
}

export const enum CmdFlag {
  FUA = 1 << 0,
  NO_HOLE = 1 << 1,
  DF = 1 << 2,
  REQ_ONE = 1 << 3,
  FAST_ZERO = 1 << 4,
}

export const enum ReplyFlag {
  DONE = 1 << 0,
}

export const enum ChunkType {
  NONE = 0,
  OFFSET_DATA = 1,
  OFFSET_HOLE = 2,
  BLOCK_STATUS = 5,
  ERROR = 0x8001,
  ERROR_OFFSET = 0x8002,
}

/** The only error values allowed on the wire. */
export const enum NbdErr {
  OK = 0,
  EPERM = 1,
  EIO = 5,
  ENOMEM = 12,
  EINVAL = 22,
  ENOSPC = 28,
  EOVERFLOW = 75,
  ENOTSUP = 95,
  ESHUTDOWN = 108,
}

/** base:allocation flags. */
export const enum BlockState {
  HOLE = 1 << 0,
  ZERO = 1 << 1,
}

export const BASE_ALLOCATION = 'base:allocation';
/** Context id we hand out for base:allocation (any non-zero-safe u32 works; nbdkit uses 1). */
export const BASE_ALLOCATION_ID = 1;

/** Sizes our server advertises in NBD_INFO_BLOCK_SIZE (its maximum: coordinator/limits.ts). */
export const MIN_BLOCK = 1;
export const PREFERRED_BLOCK = 4096;
/** The protocol's default maximum payload ([proto] "Size constraints"): what a peer that advertises none accepts. */
export const MAX_PAYLOAD = 32 * 1024 * 1024;
/** Codec default: a WRITE payload or reply chunk above this cannot be skipped cheaply (64 MiB, nbdkit's and libnbd's own maximum). */
export const MAX_DRAINABLE_PAYLOAD = 64 * 1024 * 1024;
/** Strings (export names, queries) MUST be at most 4096 bytes (proto "Conventions"). */
export const MAX_STRING = 4096;
/** An option payload larger than this ends the connection (nothing legitimate comes close). */
export const MAX_OPTION_LENGTH = 64 * 1024;
/** Options in one handshake before we give up on the client. */
export const MAX_OPTIONS = 64;

export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const STRUCTURED_HEADER_SIZE = 20;
export const OPTION_HEADER_SIZE = 16; // IHAVEOPT + option + length
export const OPTION_REPLY_HEADER_SIZE = 20;

export function cmdName(type: number): string {
  switch (type) {
    case Cmd.READ: return 'READ';
    case Cmd.WRITE: return 'WRITE';
    case Cmd.DISC: return 'DISC';
    case Cmd.FLUSH: return 'FLUSH';
    case Cmd.TRIM: return 'TRIM';
    case Cmd.CACHE: return 'CACHE';
    case Cmd.WRITE_ZEROES: return 'WRITE_ZEROES';
    case Cmd.BLOCK_STATUS: return 'BLOCK_STATUS';
    default: return `CMD_${type}`;
  }
}
