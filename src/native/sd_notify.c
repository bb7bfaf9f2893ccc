// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET. Node has no Unix datagram
// sockets, so this lives in the addon; src/daemon/sd-notify.ts falls back to systemd-notify(1)
// when the addon is absent.

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <node_api.h>

#include "sd_notify.h"

// Longer messages are refused (EMSGSIZE) rather than cut: a cut STATUS= line would mislead.
#define MAX_MESSAGE 16384

// Copies string argument `index` into buf (NUL-terminated). Returns its length, or -1 after throwing.
static ssize_t get_string_arg(napi_env env, napi_value v, size_t index, char *buf, size_t size) {
  napi_valuetype type;
  size_t len = 0;
  if (napi_typeof(env, v, &type) != napi_ok) return -1;
  if (type != napi_string) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", index == 0 ? "pcached_native.sdNotify: argument 1 must be a string (the socket)"
                                                                  : "pcached_native.sdNotify: argument 2 must be a string (the message)");
    return -1;
  }
  if (napi_get_value_string_utf8(env, v, buf, size, &len) != napi_ok) return -1;
  return (ssize_t)len;
}

// sdNotify(socket, message) -> bytes sent | -errno. socket is "/path" or "@abstract" as in
// $NOTIFY_SOCKET; anything else (vsock:...) is -EAFNOSUPPORT.
napi_value pcached_js_sd_notify(napi_env env, napi_callback_info info) {
  napi_value argv[2], out;
  size_t argc = 2;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 2) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", "pcached_native.sdNotify: expected 2 arguments");
    return NULL;
  }
  struct sockaddr_un addr;
  char path[sizeof addr.sun_path + 2];
  char message[MAX_MESSAGE + 1];
  ssize_t plen = get_string_arg(env, argv[0], 0, path, sizeof path);
  if (plen < 0) return NULL;
  ssize_t mlen = get_string_arg(env, argv[1], 1, message, sizeof message);
  if (mlen < 0) return NULL;

  int64_t result;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if ((path[0] != '/' && path[0] != '@') || plen < 2) {
    result = -EAFNOSUPPORT;
  } else if ((size_t)plen > sizeof addr.sun_path - (path[0] == '/' ? 1 : 0)) {
    result = -ENAMETOOLONG;
  } else if (mlen >= MAX_MESSAGE) {
    result = -EMSGSIZE;
  } else {
    memcpy(addr.sun_path, path, (size_t)plen);
    // An abstract name starts with a NUL byte and is exactly as long as given (no terminator).
    if (path[0] == '@') addr.sun_path[0] = '\0';
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)plen + (path[0] == '/' ? 1 : 0));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      result = -errno;
    } else {
      ssize_t n;
      do n = sendto(fd, message, (size_t)mlen, MSG_NOSIGNAL, (struct sockaddr *)&addr, alen);
      while (n < 0 && errno == EINTR);
      result = n < 0 ? -errno : n;
      close(fd);
    }
  }
  if (napi_create_int64(env, result, &out) != napi_ok) return NULL;
  return out;
}
