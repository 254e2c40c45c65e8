// kvferry's extension to the NCCL net v7 ABI: calls a plugin may offer
// beside its v7 table, for callers that are not NCCL.
//
// A plugin offers it by exporting the symbol `kvferryNetExt_v2` (a constant
// kvferryNetExt_v2_t), or the older `kvferryNetExt_v1`; the loader looks
// them up with dlsym beside `ncclNetPlugin_v7` (transport::plugin::ext()).
// A plugin without either is used as before: every entry is optional, and
// so is the whole table. kvsock exports both (docs/kvsock.md, "test() and
// idle waiting").
#pragma once

#include "kvferry/transport/net_v7.h"

extern "C" {

#define KVFERRY_NET_EXT_V1_SYMBOL "kvferryNetExt_v1"
#define KVFERRY_NET_EXT_V2_SYMBOL "kvferryNetExt_v2"

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

// v1, and a descriptor to sleep on instead of polling.
typedef struct {
  const char* name;
  ncclResult_t (*setCallerPolls)(void* comm);
  // For a comm in caller-polls mode: sets *fd to a file descriptor that
  // polls readable (POLLIN) whenever a test() on the comm's requests may
  // find news (bytes arrived, a send's socket drained, a data socket's
  // piece finished), and stays readable until such a test() runs (it may
  // turn readable once more for news that test() had already seen). A caller
  // with requests out may then sleep in poll/epoll on it (with a timeout of
  // its own as a backstop) instead of polling. The descriptor belongs to
  // the comm: valid until the comm closes, never closed by the caller.
  // NULL, or an error, when the plugin cannot tell.
  ncclResult_t (*getWaitFd)(void* comm, int* fd);
} kvferryNetExt_v2_t;

} // extern "C"
