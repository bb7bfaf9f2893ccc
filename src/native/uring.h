#ifndef PCACHED_URING_H
#define PCACHED_URING_H
#include <node_api.h>
napi_status pcached_uring_register(napi_env env, napi_value exports);
#endif
