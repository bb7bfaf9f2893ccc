// One base error with stable codes: callers branch on `code`, never on message text.

export type PcachedErrorCode =
  | 'ERR_CONFIG'
  | 'ERR_CONFIG_RELOAD_REJECTED'
  | 'ERR_ORIGIN'
  | 'ERR_ORIGIN_TIMEOUT'
  | 'ERR_CACHE_FILE'
  | 'ERR_LISTEN'
  | 'ERR_SOCKET_IN_USE'
  | 'ERR_UNKNOWN_CACHE'
  | 'ERR_UNKNOWN_MESSAGE'
  | 'ERR_BAD_ARGUMENT'
  | 'ERR_CONTROL'
  | 'ERR_NOT_RUNNING'
  | 'ERR_PROTOCOL'
  | 'ERR_SHUTDOWN'
  | 'ERR_COORDINATOR'
  | 'ERR_CACHE_BLANK'
  | 'ERR_BAD_SUPERBLOCK'
  | 'ERR_FORMAT_VERSION'
  | 'ERR_CACHE_MISMATCH'
  | 'ERR_BAD_METADATA'
  | 'ERR_BAD_KEY'
  | 'ERR_BAD_KSET'
  | 'ERR_LOG_FULL'
  /** A cache file or origin another process holds (flock, O_EXCL, lock file). */
  | 'ERR_IN_USE'
  /** --format refused: the cache holds data that was flushed but never written back. */
  | 'ERR_CACHE_DIRTY';

export class PcachedError extends Error {
  readonly code: PcachedErrorCode;
  constructor(code: PcachedErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PcachedError';
    this.code = code;
  }
}

export function isPcachedError(err: unknown, code?: PcachedErrorCode): err is PcachedError {
  return err instanceof PcachedError && (code === undefined || err.code === code);
}
