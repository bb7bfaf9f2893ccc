{
  "targets": [
    {
      "target_name": "pcached_native",
      "sources": ["pcached_native.c", "sd_notify.c", "uring.c"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
