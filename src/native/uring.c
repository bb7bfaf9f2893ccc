// io_uring through the raw syscalls (no liburing on the build hosts). One ring per JS thread:
// completions are signalled on an eventfd that a uv_poll_t watches in that thread's loop, so the
// JS callback always runs on the thread that issued the I/O.

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <linux/io_uring.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

#include "uring.h"

typedef struct ring {
  int fd, efd;
  unsigned entries;
  void *sq_map, *cq_map;
  size_t sq_len, cq_len, sqes_len;
  struct io_uring_sqe *sqes;
  unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
  unsigned *cq_head, *cq_tail, *cq_mask;
  struct io_uring_cqe *cqes;
  unsigned pending;   // prepared, not yet handed to the kernel
  unsigned inflight;  // prepared and not yet reaped
  bool closed, finalized, poll_closed, delivering;
  uv_poll_t poll;
  napi_env env;
  napi_ref on_complete, ids_ref, res_ref, resource_ref;
  double *ids;
  int32_t *res;
  napi_async_context actx;
  napi_async_cleanup_hook_handle hook;
} ring_t;

static int sys_setup(unsigned entries, struct io_uring_params *p) {
  return (int)syscall(__NR_io_uring_setup, entries, p);
}
static int sys_enter(int fd, unsigned submit, unsigned min_complete, unsigned flags) {
  return (int)syscall(__NR_io_uring_enter, fd, submit, min_complete, flags, NULL, 0);
}

static napi_value num(napi_env env, double v) {
  napi_value out;
  napi_create_double(env, v, &out);
  return out;
}

static void maybe_free(ring_t *r) {
  if (r->finalized && r->poll_closed) free(r);
}

static void on_poll_closed(uv_handle_t *h) {
  ring_t *r = h->data;
  r->poll_closed = true;
  if (r->hook) napi_remove_async_cleanup_hook(r->hook);
  r->hook = NULL;
  maybe_free(r);
}

// Copies up to `cap` completions out of the CQ; returns how many.
static unsigned reap(ring_t *r, double *ids, int32_t *res, unsigned cap) {
  unsigned head = *r->cq_head, n = 0;
  unsigned tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
  while (head != tail && n < cap) {
    struct io_uring_cqe *c = &r->cqes[head & *r->cq_mask];
    if (ids) {
      ids[n] = (double)c->user_data;
      res[n] = c->res;
    }
    n++;
    head++;
  }
  __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
  r->inflight -= n;
  return n;
}

static void set_idle(ring_t *r) {
  if (r->inflight == 0) uv_unref((uv_handle_t *)&r->poll);
}

// The kernel must never write into memory JS may free, so closing waits for every request.
static void teardown(ring_t *r, napi_value pairs) {
  if (r->closed) return;
  r->closed = true;
  if (r->pending) {
    int s;
    do s = sys_enter(r->fd, r->pending, 0, 0);
    while (s < 0 && errno == EINTR);
    if (s > 0) r->pending -= (unsigned)s;
    // Prepared but never accepted: the kernel will not touch them, so they just vanish.
    r->inflight -= r->pending;
    r->pending = 0;
  }
  uint32_t k = 0;
  while (r->inflight > 0) {
    double id;
    int32_t res;
    if (reap(r, &id, &res, 1) == 1) {
      if (pairs) {
        napi_set_element(r->env, pairs, k++, num(r->env, id));
        napi_set_element(r->env, pairs, k++, num(r->env, res));
      }
      continue;
    }
    if (sys_enter(r->fd, 0, 1, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR) break;
  }
  uv_poll_stop(&r->poll);
  uv_close((uv_handle_t *)&r->poll, on_poll_closed);
  munmap(r->sqes, r->sqes_len);
  if (r->cq_map != r->sq_map) munmap(r->cq_map, r->cq_len);
  munmap(r->sq_map, r->sq_len);
  close(r->fd);
  close(r->efd);
  napi_delete_reference(r->env, r->on_complete);
  napi_delete_reference(r->env, r->ids_ref);
  napi_delete_reference(r->env, r->res_ref);
  napi_delete_reference(r->env, r->resource_ref);
  napi_async_destroy(r->env, r->actx);
}

static void on_cleanup(napi_async_cleanup_hook_handle h, void *arg) {
  ring_t *r = arg;
  if (r->closed) return;
  teardown(r, NULL);  // on_poll_closed removes the hook once the loop has closed the handle
}

static void on_readable(uv_poll_t *p, int status, int events) {
  ring_t *r = p->data;
  if (r->closed) return;
  uint64_t v;
  while (read(r->efd, &v, sizeof v) > 0) {}
  napi_handle_scope scope;
  napi_open_handle_scope(r->env, &scope);
  napi_value cb, ids, res, resource;
  napi_get_reference_value(r->env, r->on_complete, &cb);
  napi_get_reference_value(r->env, r->ids_ref, &ids);
  napi_get_reference_value(r->env, r->res_ref, &res);
  napi_get_reference_value(r->env, r->resource_ref, &resource);
  r->delivering = true;
  unsigned n;
  while (!r->closed && (n = reap(r, r->ids, r->res, r->entries)) > 0) {
    napi_value argv[3] = {num(r->env, n), ids, res}, ret;
    if (r->inflight == 0) set_idle(r);
    if (napi_make_callback(r->env, r->actx, resource, cb, 3, argv, &ret) == napi_pending_exception) {
      napi_value e;
      napi_get_and_clear_last_exception(r->env, &e);
      napi_fatal_exception(r->env, e);
    }
  }
  r->delivering = false;
  napi_close_handle_scope(r->env, scope);
}

static void finalize_handle(napi_env env, void *data, void *hint) {
  ring_t *r = data;
  r->finalized = true;
  if (!r->closed) return;  // the cleanup hook tears it down at thread exit
  maybe_free(r);
}

static bool get_ring(napi_env env, napi_value v, ring_t **out) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok || !p) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "pcached_native: expected a uring handle");
    return false;
  }
  *out = p;
  return true;
}

static int map_ring(ring_t *r, struct io_uring_params *p) {
  r->sq_len = p->sq_off.array + p->sq_entries * sizeof(unsigned);
  r->cq_len = p->cq_off.cqes + p->cq_entries * sizeof(struct io_uring_cqe);
  bool single = p->features & IORING_FEAT_SINGLE_MMAP;
  if (single && r->cq_len > r->sq_len) r->sq_len = r->cq_len;
  r->sq_map = mmap(NULL, r->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
  if (r->sq_map == MAP_FAILED) return -errno;
  r->cq_map = single ? r->sq_map
                     : mmap(NULL, r->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
  if (r->cq_map == MAP_FAILED) return -errno;
  r->sqes_len = p->sq_entries * sizeof(struct io_uring_sqe);
  r->sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
  if (r->sqes == MAP_FAILED) return -errno;
  char *sq = r->sq_map, *cq = r->cq_map;
  r->sq_head = (unsigned *)(sq + p->sq_off.head);
  r->sq_tail = (unsigned *)(sq + p->sq_off.tail);
  r->sq_mask = (unsigned *)(sq + p->sq_off.ring_mask);
  r->sq_array = (unsigned *)(sq + p->sq_off.array);
  r->cq_head = (unsigned *)(cq + p->cq_off.head);
  r->cq_tail = (unsigned *)(cq + p->cq_off.tail);
  r->cq_mask = (unsigned *)(cq + p->cq_off.ring_mask);
  r->cqes = (struct io_uring_cqe *)(cq + p->cq_off.cqes);
  return 0;
}

// uringOpen(entries, onComplete(count, ids: Float64Array, res: Int32Array)) -> handle | -errno
static napi_value js_open(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  size_t argc = 2;
  double entries;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 2 || napi_get_value_double(env, argv[0], &entries) != napi_ok || entries < 1 || entries > 4096) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "uringOpen(entries 1..4096, onComplete)");
    return NULL;
  }
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  p.flags = IORING_SETUP_CLAMP;
  int fd = sys_setup((unsigned)entries, &p);
  if (fd < 0) return num(env, -errno);
  ring_t *r = calloc(1, sizeof *r);
  if (!r) { close(fd); return num(env, -ENOMEM); }
  r->fd = fd;
  r->efd = -1;
  r->env = env;
  r->entries = p.sq_entries;
  int err = map_ring(r, &p);
  if (err == 0) {
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->efd < 0) err = -errno;
  }
  if (err == 0 && syscall(__NR_io_uring_register, fd, IORING_REGISTER_EVENTFD, &r->efd, 1) < 0) err = -errno;
  uv_loop_t *loop = NULL;
  if (err == 0 && (napi_get_uv_event_loop(env, &loop) != napi_ok || uv_poll_init(loop, &r->poll, r->efd) != 0)) err = -EIO;
  if (err) {
    if (r->sqes && r->sqes != MAP_FAILED) munmap(r->sqes, r->sqes_len);
    if (r->cq_map && r->cq_map != MAP_FAILED && r->cq_map != r->sq_map) munmap(r->cq_map, r->cq_len);
    if (r->sq_map && r->sq_map != MAP_FAILED) munmap(r->sq_map, r->sq_len);
    if (r->efd >= 0) close(r->efd);
    close(fd);
    free(r);
    return num(env, err);
  }
  r->poll.data = r;
  uv_poll_start(&r->poll, UV_READABLE, on_readable);
  uv_unref((uv_handle_t *)&r->poll);

  // One pair of result arrays, reused for every batch: no allocation per completion.
  napi_value ab_ids, ab_res, ids, res, resource, name, handle;
  napi_create_arraybuffer(env, r->entries * sizeof(double), (void **)&r->ids, &ab_ids);
  napi_create_typedarray(env, napi_float64_array, r->entries, ab_ids, 0, &ids);
  napi_create_arraybuffer(env, r->entries * sizeof(int32_t), (void **)&r->res, &ab_res);
  napi_create_typedarray(env, napi_int32_array, r->entries, ab_res, 0, &res);
  napi_create_reference(env, ids, 1, &r->ids_ref);
  napi_create_reference(env, res, 1, &r->res_ref);
  napi_create_reference(env, argv[1], 1, &r->on_complete);
  napi_create_object(env, &resource);
  napi_create_reference(env, resource, 1, &r->resource_ref);
  napi_create_string_utf8(env, "pcached:io_uring", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, resource, name, &r->actx);
  napi_add_async_cleanup_hook(env, on_cleanup, r, &r->hook);
  napi_create_external(env, r, finalize_handle, NULL, &handle);
  return handle;
}

// uringPrep(handle, op 0 read | 1 write | 2 fdatasync, fd, view | null, offset, id) -> 0 | -EBUSY
static napi_value js_prep(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  size_t argc = 6;
  ring_t *r;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 6 || !get_ring(env, argv[0], &r)) return NULL;
  if (r->closed) return num(env, -EBADF);
  double op, fd, off, id;
  napi_get_value_double(env, argv[1], &op);
  napi_get_value_double(env, argv[2], &fd);
  napi_get_value_double(env, argv[4], &off);
  napi_get_value_double(env, argv[5], &id);
  // A NaN or negative offset would become a huge u64 the kernel happily seeks to.
  if (!(op == 0 || op == 1 || op == 2) || !(fd >= INT32_MIN && fd <= INT32_MAX && fd == (int)fd) ||
      !(off >= 0 && off <= 9007199254740991.0 && off == (double)(uint64_t)off) || !(id >= 0 && id <= 4294967295.0)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "uringPrep: op 0..2, an int fd, a safe offset >= 0, an id");
    return NULL;
  }
  void *data = NULL;
  size_t len = 0;
  if (op != 2) {
    bool is_ta = false;
    napi_typedarray_type t;
    napi_value ab;
    size_t bo;
    if (napi_is_typedarray(env, argv[3], &is_ta) != napi_ok || !is_ta ||
        napi_get_typedarray_info(env, argv[3], &t, &len, &data, &ab, &bo) != napi_ok || t != napi_uint8_array) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "uringPrep: view must be a Uint8Array");
      return NULL;
    }
  }
  unsigned tail = *r->sq_tail;
  if (tail - __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE) >= r->entries) return num(env, -EBUSY);
  unsigned idx = tail & *r->sq_mask;
  struct io_uring_sqe *s = &r->sqes[idx];
  memset(s, 0, sizeof *s);
  s->opcode = op == 0 ? IORING_OP_READ : op == 1 ? IORING_OP_WRITE : IORING_OP_FSYNC;
  s->fd = (int)fd;
  s->user_data = (uint64_t)id;
  if (op == 2) {
    s->fsync_flags = IORING_FSYNC_DATASYNC;
  } else {
    s->addr = (uint64_t)(uintptr_t)data;
    s->len = (uint32_t)len;
    s->off = (uint64_t)off;
  }
  r->sq_array[idx] = idx;
  __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
  r->pending++;
  if (r->inflight++ == 0) uv_ref((uv_handle_t *)&r->poll);
  return num(env, 0);
}

// uringSubmit(handle) -> submitted | -errno: one io_uring_enter for everything prepared.
static napi_value js_submit(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t argc = 1;
  ring_t *r;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 1 || !get_ring(env, argv[0], &r)) return NULL;
  if (r->closed) return num(env, -EBADF);
  if (r->pending == 0) return num(env, 0);
  int s;
  do s = sys_enter(r->fd, r->pending, 0, 0);
  while (s < 0 && errno == EINTR);
  if (s < 0) return num(env, -errno);
  r->pending -= (unsigned)s;
  return num(env, s);
}

// uringClose(handle) -> [id, res, id, res, ...] of the requests that were still in flight.
static napi_value js_close(napi_env env, napi_callback_info info) {
  napi_value argv[1], pairs;
  size_t argc = 1;
  ring_t *r;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 1 || !get_ring(env, argv[0], &r)) return NULL;
  napi_create_array(env, &pairs);
  teardown(r, pairs);
  return pairs;
}

napi_status pcached_uring_register(napi_env env, napi_value exports) {
  napi_property_descriptor fns[] = {
      {"uringOpen", NULL, js_open, NULL, NULL, NULL, napi_enumerable, NULL},
      {"uringPrep", NULL, js_prep, NULL, NULL, NULL, napi_enumerable, NULL},
      {"uringSubmit", NULL, js_submit, NULL, NULL, NULL, napi_enumerable, NULL},
      {"uringClose", NULL, js_close, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns);
}
