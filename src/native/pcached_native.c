// The few Linux file calls Node 20 does not expose: fallocate, lseek(SEEK_DATA/SEEK_HOLE), the
// block-device ioctls, flock, posix_fadvise and RWF_NOWAIT reads (and sd_notify, in sd_notify.c). Every function is synchronous (the callers are stripe worker threads
// doing positional I/O) and returns a non-negative result or -errno, so JS never sees an
// exception for an I/O failure. Only malformed arguments (a programming error) throw.
//
// No per-module state: NAPI_MODULE_INIT makes the addon context-aware, so each worker thread
// that requires it gets its own exports object.

#ifndef _GNU_SOURCE
#define _GNU_SOURCE  // fallocate, SEEK_DATA, SEEK_HOLE (binding.gyp defines it too)
#endif

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <node_api.h>

#include "sd_notify.h"
#include "uring.h"

// Offsets and lengths travel as JS numbers; past 2^53 they have already lost precision.
#define MAX_SAFE_INTEGER 9007199254740991.0
#define MAX_ARGS 4

static napi_value make_int64(napi_env env, int64_t v) {
  napi_value out;
  if (napi_create_int64(env, v, &out) != napi_ok) return NULL;
  return out;
}

static napi_value fail_errno(napi_env env, int err) { return make_int64(env, -(int64_t)err); }

static void throw_arg(napi_env env, const char *fn, size_t index, const char *what) {
  char msg[160];
  snprintf(msg, sizeof msg, "pcached_native.%s: argument %zu must be %s", fn, index + 1, what);
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
}

// Reads `count` integer arguments. Returns 0 after throwing a TypeError, 1 on success.
static int get_int_args(napi_env env, napi_callback_info info, const char *fn, size_t count, int64_t *out) {
  napi_value argv[MAX_ARGS];
  size_t argc = MAX_ARGS;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return 0;
  if (argc < count) {
    char msg[160];
    snprintf(msg, sizeof msg, "pcached_native.%s: expected %zu arguments, got %zu", fn, count, argc);
    napi_throw_type_error(env, "ERR_MISSING_ARGS", msg);
    return 0;
  }
  for (size_t i = 0; i < count; i++) {
    napi_valuetype type;
    double d;
    if (napi_typeof(env, argv[i], &type) != napi_ok) return 0;
    if (type != napi_number) {
      throw_arg(env, fn, i, "a number");
      return 0;
    }
    if (napi_get_value_double(env, argv[i], &d) != napi_ok) return 0;
    if (!isfinite(d) || d != trunc(d) || fabs(d) > MAX_SAFE_INTEGER) {
      throw_arg(env, fn, i, "a safe integer");
      return 0;
    }
    out[i] = (int64_t)d;
  }
  // An fd outside int range would be silently truncated by the cast below.
  if (out[0] < INT32_MIN || out[0] > INT32_MAX) {
    throw_arg(env, fn, 0, "a file descriptor");
    return 0;
  }
  return 1;
}

// Exactly `count` arguments into argv (extra ones ignored). Returns 0 after throwing a TypeError.
static int get_argv(napi_env env, napi_callback_info info, const char *fn, size_t count, napi_value *argv) {
  size_t argc = count;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return 0;
  if (argc < count) {
    char msg[160];
    snprintf(msg, sizeof msg, "pcached_native.%s: expected %zu arguments, got %zu", fn, count, argc);
    napi_throw_type_error(env, "ERR_MISSING_ARGS", msg);
    return 0;
  }
  return 1;
}

// The memory of a Uint8Array (or Buffer) argument. Returns 0 after throwing a TypeError.
static int get_bytes(napi_env env, napi_value v, const char *fn, size_t index, void **data, size_t *length) {
  bool is_ta = false;
  napi_typedarray_type type;
  size_t byte_offset;
  napi_value ab;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok) return 0;
  if (!is_ta || napi_get_typedarray_info(env, v, &type, length, data, &ab, &byte_offset) != napi_ok || type != napi_uint8_array) {
    throw_arg(env, fn, index, "a Uint8Array");
    return 0;
  }
  return 1;
}

// fallocate(fd, mode, offset, length) -> 0 | -errno
static napi_value js_fallocate(napi_env env, napi_callback_info info) {
  int64_t a[4];
  if (!get_int_args(env, info, "fallocate", 4, a)) return NULL;
  if (a[1] < 0 || a[1] > INT32_MAX) return fail_errno(env, EINVAL);
  int r;
  do r = fallocate((int)a[0], (int)a[1], (off_t)a[2], (off_t)a[3]);
  while (r < 0 && errno == EINTR);
  return r < 0 ? fail_errno(env, errno) : make_int64(env, 0);
}

static napi_value seek(napi_env env, napi_callback_info info, const char *fn, int whence) {
  int64_t a[2];
  if (!get_int_args(env, info, fn, 2, a)) return NULL;
  off_t r = lseek((int)a[0], (off_t)a[1], whence);
  return r < 0 ? fail_errno(env, errno) : make_int64(env, (int64_t)r);
}

// seekData(fd, offset) -> offset of the next data at or after offset | -ENXIO past the last data
static napi_value js_seek_data(napi_env env, napi_callback_info info) {
  return seek(env, info, "seekData", SEEK_DATA);
}

// seekHole(fd, offset) -> offset of the next hole at or after offset (EOF counts as a hole)
static napi_value js_seek_hole(napi_env env, napi_callback_info info) {
  return seek(env, info, "seekHole", SEEK_HOLE);
}

// blkGetSize64(fd) -> device size in bytes | -errno (-ENOTTY on a regular file)
static napi_value js_blk_get_size64(napi_env env, napi_callback_info info) {
  int64_t a[1];
  if (!get_int_args(env, info, "blkGetSize64", 1, a)) return NULL;
  uint64_t size = 0;
  if (ioctl((int)a[0], BLKGETSIZE64, &size) < 0) return fail_errno(env, errno);
  if (size > (uint64_t)MAX_SAFE_INTEGER) return fail_errno(env, EOVERFLOW);
  return make_int64(env, (int64_t)size);
}

static napi_value blk_range(napi_env env, napi_callback_info info, const char *fn, unsigned long request) {
  int64_t a[3];
  if (!get_int_args(env, info, fn, 3, a)) return NULL;
  // The kernel takes u64s; a negative value would become a huge range instead of an error.
  if (a[1] < 0 || a[2] < 0) return fail_errno(env, EINVAL);
  uint64_t range[2] = {(uint64_t)a[1], (uint64_t)a[2]};
  int r;
  do r = ioctl((int)a[0], request, range);
  while (r < 0 && errno == EINTR);
  return r < 0 ? fail_errno(env, errno) : make_int64(env, 0);
}

// blkDiscard(fd, offset, length) -> 0 | -errno; offset and length must be sector aligned
static napi_value js_blk_discard(napi_env env, napi_callback_info info) {
  return blk_range(env, info, "blkDiscard", BLKDISCARD);
}

// blkZeroOut(fd, offset, length) -> 0 | -errno; offset and length must be sector aligned
static napi_value js_blk_zero_out(napi_env env, napi_callback_info info) {
  return blk_range(env, info, "blkZeroOut", BLKZEROOUT);
}

// flock(fd, op) -> 0 | -errno (-EWOULDBLOCK when LOCK_NB finds the lock taken). The lock belongs
// to the open file description: another open() of the same file, even in this process, conflicts.
static napi_value js_flock(napi_env env, napi_callback_info info) {
  int64_t a[2];
  if (!get_int_args(env, info, "flock", 2, a)) return NULL;
  if (a[1] < 0 || a[1] > INT32_MAX) return fail_errno(env, EINVAL);
  int r;
  do r = flock((int)a[0], (int)a[1]);
  while (r < 0 && errno == EINTR);
  return r < 0 ? fail_errno(env, errno) : make_int64(env, 0);
}

// fadvise(fd, offset, length, advice) -> 0 | -errno. posix_fadvise returns the error number
// itself rather than setting errno.
static napi_value js_fadvise(napi_env env, napi_callback_info info) {
  int64_t a[4];
  if (!get_int_args(env, info, "fadvise", 4, a)) return NULL;
  if (a[1] < 0 || a[2] < 0 || a[3] < 0 || a[3] > INT32_MAX) return fail_errno(env, EINVAL);
  int r = posix_fadvise((int)a[0], (off_t)a[1], (off_t)a[2], (int)a[3]);
  return r != 0 ? fail_errno(env, r) : make_int64(env, 0);
}

// preadNowait(fd, view, offset) -> bytes | -errno: one preadv2 with RWF_NOWAIT over the whole
// Uint8Array (or Buffer). -EAGAIN means it would have to wait for the device (not all in the page
// cache); the caller then issues it asynchronously. A short count is the part that was cached.
// (Buffered RWF_NOWAIT writes are refused by ext4 on kernel 6.18, so there is no write twin.)
static napi_value js_pread_nowait(napi_env env, napi_callback_info info) {
  const char *fn = "preadNowait";
  napi_value argv[3];
  if (!get_argv(env, info, fn, 3, argv)) return NULL;
  double fd, off;
  if (napi_get_value_double(env, argv[0], &fd) != napi_ok || fd < 0 || fd > INT32_MAX || fd != floor(fd)) {
    throw_arg(env, fn, 0, "a file descriptor");
    return NULL;
  }
  if (napi_get_value_double(env, argv[2], &off) != napi_ok || off < 0 || off > MAX_SAFE_INTEGER || off != floor(off)) {
    throw_arg(env, fn, 2, "a non-negative safe integer");
    return NULL;
  }
  void *data;
  size_t length;
  if (!get_bytes(env, argv[1], fn, 1, &data, &length)) return NULL;
#ifdef RWF_NOWAIT
  struct iovec iov = {data, length};
  ssize_t r;
  do r = preadv2((int)fd, &iov, 1, (off_t)off, RWF_NOWAIT);
  while (r < 0 && errno == EINTR);
  return r < 0 ? fail_errno(env, errno) : make_int64(env, r);
#else
  (void)data; (void)length;
  return fail_errno(env, EOPNOTSUPP);
#endif
}

// addressMod(view, align) -> (address of the view's first byte) % align. O_DIRECT needs buffers
// aligned in memory, and JS cannot see addresses: callers find an aligned window inside a larger
// buffer with it.
static napi_value js_address_mod(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  size_t argc = 2;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  bool is_ta = false;
  if (argc < 2 || napi_is_typedarray(env, argv[0], &is_ta) != napi_ok || !is_ta) {
    throw_arg(env, "addressMod", 0, "a typed array");
    return NULL;
  }
  int64_t align;
  if (napi_get_value_int64(env, argv[1], &align) != napi_ok || align <= 0 || (align & (align - 1)) != 0) {
    throw_arg(env, "addressMod", 1, "a power of two");
    return NULL;
  }
  napi_typedarray_type type;
  size_t length, byte_offset;
  void *data;
  napi_value ab;
  if (napi_get_typedarray_info(env, argv[0], &type, &length, &data, &ab, &byte_offset) != napi_ok) return NULL;
  return make_int64(env, (int64_t)((uintptr_t)data & (uintptr_t)(align - 1)));
}

// copyBytes(dst, dstOffset, src) -> bytes copied: memmove of all of src into dst at dstOffset.
// V8 copies between typed arrays over a SharedArrayBuffer (the slabs) with relaxed atomic
// accesses, a byte at a time unless both ends are 8-byte aligned: 2.3 µs for 4 KiB here, against
// 0.42 µs for this (src/util/copy-bytes.ts).
static napi_value js_copy_bytes(napi_env env, napi_callback_info info) {
  const char *fn = "copyBytes";
  napi_value argv[3];
  if (!get_argv(env, info, fn, 3, argv)) return NULL;
  void *dst, *src;
  size_t dst_len, src_len;
  if (!get_bytes(env, argv[0], fn, 0, &dst, &dst_len) || !get_bytes(env, argv[2], fn, 2, &src, &src_len)) return NULL;
  double at;
  if (napi_get_value_double(env, argv[1], &at) != napi_ok || at < 0 || at != floor(at) || at > (double)dst_len || (double)src_len > (double)dst_len - at) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "pcached_native: copyBytes: source does not fit at that offset");
    return NULL;
  }
  if (src_len > 0) memmove((char *)dst + (size_t)at, src, src_len);
  return make_int64(env, (int64_t)src_len);
}

static napi_status set_int(napi_env env, napi_value obj, const char *name, int32_t value) {
  napi_value v;
  napi_status s = napi_create_int32(env, value, &v);
  if (s != napi_ok) return s;
  return napi_set_named_property(env, obj, name, v);
}

NAPI_MODULE_INIT() {
  napi_property_descriptor fns[] = {
      {"fallocate", NULL, js_fallocate, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekData", NULL, js_seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekHole", NULL, js_seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
      {"blkGetSize64", NULL, js_blk_get_size64, NULL, NULL, NULL, napi_enumerable, NULL},
      {"blkDiscard", NULL, js_blk_discard, NULL, NULL, NULL, napi_enumerable, NULL},
      {"blkZeroOut", NULL, js_blk_zero_out, NULL, NULL, NULL, napi_enumerable, NULL},
      {"flock", NULL, js_flock, NULL, NULL, NULL, napi_enumerable, NULL},
      {"fadvise", NULL, js_fadvise, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sdNotify", NULL, pcached_js_sd_notify, NULL, NULL, NULL, napi_enumerable, NULL},
      {"preadNowait", NULL, js_pread_nowait, NULL, NULL, NULL, napi_enumerable, NULL},
      {"addressMod", NULL, js_address_mod, NULL, NULL, NULL, napi_enumerable, NULL},
      {"copyBytes", NULL, js_copy_bytes, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns) != napi_ok) return NULL;
  if (pcached_uring_register(env, exports) != napi_ok) return NULL;
  if (set_int(env, exports, "FALLOC_FL_KEEP_SIZE", FALLOC_FL_KEEP_SIZE) != napi_ok) return NULL;
  if (set_int(env, exports, "FALLOC_FL_PUNCH_HOLE", FALLOC_FL_PUNCH_HOLE) != napi_ok) return NULL;
  if (set_int(env, exports, "FALLOC_FL_ZERO_RANGE", FALLOC_FL_ZERO_RANGE) != napi_ok) return NULL;
  if (set_int(env, exports, "LOCK_SH", LOCK_SH) != napi_ok) return NULL;
  if (set_int(env, exports, "LOCK_EX", LOCK_EX) != napi_ok) return NULL;
  if (set_int(env, exports, "LOCK_NB", LOCK_NB) != napi_ok) return NULL;
  if (set_int(env, exports, "LOCK_UN", LOCK_UN) != napi_ok) return NULL;
  if (set_int(env, exports, "POSIX_FADV_DONTNEED", POSIX_FADV_DONTNEED) != napi_ok) return NULL;
  return exports;
}
