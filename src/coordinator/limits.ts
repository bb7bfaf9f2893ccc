// What one request may be, and what one session (and the whole daemon) may hold. One place, so
// the advertised NBD_INFO_BLOCK_SIZE, validation, the parser, back-pressure and the docs agree.

const MiB = 1024 * 1024;

/**
 * Largest READ or WRITE payload accepted, advertised as the maximum payload size. nbdkit
 * accepts 64 MiB too; the spec's default is 32 MiB, and the NBD reference implementation's
 * test trace sends 47.6 MiB requests.
 */
export const MAX_REQUEST_PAYLOAD = 64 * MiB;

/**
 * A WRITE over MAX_REQUEST_PAYLOAD but not over this has its payload read and dropped, then
 * gets EINVAL; a larger one ends the connection (skipping it would only feed a client that
 * ignores the advertised maximum).
 */
export const MAX_DRAINABLE_WRITE = 2 * MAX_REQUEST_PAYLOAD;

/** A session stops reading requests while it has this many in flight. */
export const MAX_SESSION_REQUESTS = 512;

/**
 * Request bytes (WRITE payloads from their header on, READ reply data) one session may hold. A
 * request that would go over waits, unless the session holds nothing (so a maximum-size request
 * is always served).
 */
export const MAX_SESSION_BYTES = 64 * MiB;

/** Unsent reply bytes above which a session stops reading requests until its client drains them. */
export const WRITE_BACKLOG_LIMIT = 8 * MiB;

/**
 * Replies are sent straight from the slab (no copy) only while the socket's unsent backlog,
 * counting them, stays under this: a client that reads keeps its replies zero-copy (1 MiB reads
 * at QD8 keep 8-16 MiB queued), one that stops can leave at most this much behind it, and
 * within half of each slab (StripeRing.pinForSocket); later replies are copied out.
 */
export const ZERO_COPY_BACKLOG = 2 * WRITE_BACKLOG_LIMIT;

/** Request bytes the whole daemon may hold (flow.ts); payloads still arriving may hold half. */
export const FLOW_LIMIT = 512 * MiB;

/**
 * A WRITE payload up to this size whose bytes are still arriving is charged as ordinary request
 * data, not against the half for payloads still arriving: a header and its payload split
 * across reads is normal pipelining, and a session has one payload in progress at most, so
 * slow senders hold at most this much each that way.
 */
export const SMALL_PAYLOAD = 1 * MiB;
