// kvferry's extension to the NCCL net v7 ABI: calls a plugin may offer
// beside its v7 table, for callers that are not NCCL.
//
// A plugin offers it by exporting the symbol `kvferryNetExt_v1` (a constant
// kvferryNetExt_v1_t); the loader looks it up with dlsym beside
// `ncclNetPlugin_v7` (transport::plugin::ext()). A plugin without it is
// used as before: every entry is optional, and so is the whole table.
// kvsock exports it (docs/kvsock.md, "test() and idle waiting").
#pragma once

#include "kvferry/transport/net_v7.h"

extern "C" {

#define KVFERRY_NET_EXT_V1_SYMBOL "kvferryNetExt_v1"

typedef struct {
  // The plugin's name, as in its v7 table.
  const char* name;
  // The caller polls test() on the requests of `comm` (a send or receive
  // comm) from a loop with an idle policy of its own (kvferry's transfer
  // actor, which must stay free to take its messages): test() on them must
  // return at once and never sleep waiting for news. Called once, before
  // the first request on the comm, from the thread that will test it. A
  // plugin whose test() never sleeps may leave this NULL.
  ncclResult_t (*setCallerPolls)(void* comm);
} kvferryNetExt_v1_t;

} // extern "C"
