#ifndef PCACHED_SD_NOTIFY_H
#define PCACHED_SD_NOTIFY_H
#include <node_api.h>
napi_value pcached_js_sd_notify(napi_env env, napi_callback_info info);
#endif
