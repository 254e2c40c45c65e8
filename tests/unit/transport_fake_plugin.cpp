// A small in-process v7 plugin for deterministic tests of the loader, the
// channel wrapper and netcheck: both ends of a connection live in one process
// (the handle carries a pointer), bytes are copied on `test`.
//
// Its awkward habits are switched on by environment variables, read at init:
//   KVFERRY_FAKE_NULL_EVERY=k        every k-th isend/irecv returns a NULL
//   request KVFERRY_FAKE_NULL_RUN=r          only one post in r+1 is taken: r
//   NULLs in a row KVFERRY_FAKE_CONNECT_ROUNDS=r    connect and accept return a
//   NULL comm r times first KVFERRY_FAKE_MAX_RECVS=n         maxRecvs (default
//   4) KVFERRY_FAKE_MAX_REQUESTS=m      requests a comm takes before answering
//   NULL (default 64)
// Its ptrSupport is NCCL_PTR_HOST only: regMr of any other type fails, as a
// host-only TCP plugin's does (the channel must stage CUDA memory).
// Counters for tests: kvferry_fake_null_requests, kvferry_fake_live_mrs,
// kvferry_fake_open_comms, kvferry_fake_max_chunk (largest isend size),
// kvferry_fake_refused_mrs (regMr calls refused for their memory type),
// kvferry_fake_sends_posted (isends taken). A test that sets
// kvferry_fake_fail_send_at to n makes the isend that brings sends_posted to
// n complete with an error in test (never matched: the peer's receive waits).
//
// Third-party habits that NCCL tolerates (KVFERRY_FAKE_QUIRK=<n>, builds
// libnccl-net-quirk-<habit>.so): the plugin works, only what it declares or
// how long it takes is unusual. 1 speed0: speed 0, latency -1, maxRecvs 0
// (NCCL substitutes a default for each); 2 slow-listen: the first listen takes
// 1.5 s (lazy setup, as a real plugin's took 370 ms); 3 nocomms: maxComms 0
// (NCCL skips such a NIC: a property check fails, the data still moves).
//
// Misbehaving builds, for netcheck's own tests (tests/transport.cmake builds
// libnccl-net-broken-<rule>.so with KVFERRY_FAKE_BREAKS=<n>): each breaks
// one rule of the v7 contract that a netcheck check guards, and otherwise
// behaves, so that exactly that check is seen to fail.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "kvferry/transport/net_v7.h"

extern "C" {
__attribute__((visibility("default"))) long kvferry_fake_null_requests = 0;
__attribute__((visibility("default"))) long kvferry_fake_live_mrs = 0;
__attribute__((visibility("default"))) long kvferry_fake_open_comms = 0;
__attribute__((visibility("default"))) long kvferry_fake_max_chunk = 0;
__attribute__((visibility("default"))) long kvferry_fake_refused_mrs = 0;
__attribute__((visibility("default"))) long kvferry_fake_sends_posted = 0;
__attribute__((visibility("default"))) long kvferry_fake_fail_send_at = 0;
}

namespace {

enum class rule {
  none,
  order,  // 1: matches the newest queued send first, not in posting order
  tags,   // 2: a grouped receive fills its buffers in arrival order,
          //    ignoring their tags
  sizes,  // 3: test reports a receive's capacity, not the bytes received
  close,  // 4: closeRecv fails while the send comm is still open
  iflush, // 5: iflush fails
  table,  // 6: the table's `test` slot is NULL
};
#ifndef KVFERRY_FAKE_BREAKS
#define KVFERRY_FAKE_BREAKS 0
#endif
constexpr rule breaks = static_cast<rule>(KVFERRY_FAKE_BREAKS);

enum class quirk { none, speed0, slow_listen, nocomms };
#ifndef KVFERRY_FAKE_QUIRK
#define KVFERRY_FAKE_QUIRK 0
#endif
constexpr quirk habit = static_cast<quirk>(KVFERRY_FAKE_QUIRK);

std::mutex mutex;
long null_every = 0, null_run = 0, connect_rounds = 0, max_recvs = 4,
     max_requests = 64, post_calls = 0;

enum class kind { send, recv, flush };
struct request {
  kind what;
  bool done = false;
  bool failed = false;
  int n = 1;
  void* data[8] = {};
  int sizes[8] = {}; // capacity (recv) or size (send)
  int tags[8] = {};
  int got[8] = {};
  int filled = 0;
  int* pending = nullptr; // the comm's count of outstanding requests
  struct pair_state* pair = nullptr;
};

struct pair_state {
  std::deque<request*> sends, recvs;
  std::vector<request*> live; // not yet reported by test: freed with the pair
  bool connected = false;
  bool send_open = false;
  int send_outstanding = 0, recv_outstanding = 0;
  int refs = 1; // the listen comm and both endpoints
};
void unref(pair_state* pair) {
  if (--pair->refs > 0)
    return;
  for (request* r : pair->live)
    delete r; // a failed channel drops its requests
  delete pair;
}
request* new_request(kind what, pair_state* pair, int* pending) {
  auto* r = new request{what};
  r->pair = pair;
  r->pending = pending;
  ++*pending;
  pair->live.push_back(r);
  return r;
}
struct listen_comm {
  pair_state* pair;
  long rounds;
};
struct endpoint {
  pair_state* pair;
  bool send;
};
struct handle_layout {
  uint64_t magic;
  pair_state* pair;
  long rounds_left;
};
constexpr uint64_t magic = 0x6b76666572727946ull;

long env_long(const char* name, long fallback) {
  const char* text = std::getenv(name);
  return text && *text ? std::atol(text) : fallback;
}

// Pairs queued sends with queued receives: the k-th send with the k-th
// receive, a grouped receive's buffers by tag.
void match(pair_state* pair) {
  while (!pair->sends.empty() && !pair->recvs.empty()) {
    request* r = pair->recvs.front();
    request* s =
        breaks == rule::order ? pair->sends.back() : pair->sends.front();
    int slot = -1;
    for (int i = 0; i < r->n; ++i)
      if (r->got[i] < 0 &&
          (r->n == 1 || breaks == rule::tags || r->tags[i] == s->tags[0])) {
        slot = i;
        break;
      }
    if (slot < 0 || s->sizes[0] > r->sizes[slot]) {
      s->failed = r->failed = true;
    } else {
      if (s->sizes[0] > 0)
        std::memcpy(r->data[slot], s->data[0], s->sizes[0]);
      r->got[slot] = s->sizes[0];
    }
    s->done = true;
    if (breaks == rule::order)
      pair->sends.pop_back();
    else
      pair->sends.pop_front();
    if (++r->filled == r->n || r->failed) {
      r->done = true;
      for (int i = 0; i < r->n; ++i)
        if (r->got[i] < 0)
          r->got[i] = 0;
      pair->recvs.pop_front();
    }
  }
}

bool refuse_post(int outstanding) {
  ++post_calls;
  if (outstanding >= max_requests ||
      (null_every > 0 && post_calls % null_every == 0) ||
      (null_run > 0 && post_calls % (null_run + 1) != 0)) {
    ++kvferry_fake_null_requests;
    return true;
  }
  return false;
}

ncclResult_t fake_init(ncclDebugLogger_t log) {
  null_every = env_long("KVFERRY_FAKE_NULL_EVERY", 0);
  null_run = env_long("KVFERRY_FAKE_NULL_RUN", 0);
  connect_rounds = env_long("KVFERRY_FAKE_CONNECT_ROUNDS", 0);
  max_recvs = env_long("KVFERRY_FAKE_MAX_RECVS", 4);
  max_requests = env_long("KVFERRY_FAKE_MAX_REQUESTS", 64);
  if (log)
    log(NCCL_LOG_INFO, 0, __FILE__, __LINE__,
        "fake plugin: init (%ld max recvs)", max_recvs);
  return ncclSuccess;
}
ncclResult_t fake_devices(int* n) {
  *n = 1;
  return ncclSuccess;
}
ncclResult_t fake_properties(int dev, ncclNetProperties_v7_t* p) {
  if (dev != 0)
    return ncclInvalidArgument;
  static char name[] = "fake0";
  std::memset(p, 0, sizeof *p);
  p->name = name;
  p->ptrSupport = NCCL_PTR_HOST;
  p->speed = 100000;
  p->latency = 1;
  p->maxComms = 1024;
  p->maxRecvs = static_cast<int>(max_recvs);
  if (habit == quirk::speed0) { // irecv still takes max_recvs buffers
    p->speed = 0;
    p->latency = -1;
    p->maxRecvs = 0;
  }
  if (habit == quirk::nocomms)
    p->maxComms = 0;
  p->netDeviceType = NCCL_NET_DEVICE_HOST;
  return ncclSuccess;
}
ncclResult_t fake_listen(int, void* handle, void** listen) {
  static bool first = true;
  if (habit == quirk::slow_listen && std::exchange(first, false))
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  std::lock_guard<std::mutex> lock(mutex);
  auto* pair = new pair_state;
  handle_layout h{magic, pair, connect_rounds};
  std::memset(handle, 0, NCCL_NET_HANDLE_MAXSIZE);
  std::memcpy(handle, &h, sizeof h);
  *listen = new listen_comm{pair, connect_rounds};
  ++kvferry_fake_open_comms;
  return ncclSuccess;
}
ncclResult_t fake_connect(int, void* handle, void** send,
                          ncclNetDeviceHandle_v7_t**) {
  std::lock_guard<std::mutex> lock(mutex);
  handle_layout h;
  std::memcpy(&h, handle, sizeof h);
  if (h.magic != magic)
    return ncclInvalidArgument;
  *send = nullptr;
  if (h.rounds_left > 0) { // state kept in the caller's handle between calls
    --h.rounds_left;
    std::memcpy(handle, &h, sizeof h);
    return ncclSuccess;
  }
  h.pair->connected = true;
  h.pair->send_open = true;
  ++h.pair->refs;
  *send = new endpoint{h.pair, true};
  ++kvferry_fake_open_comms;
  return ncclSuccess;
}
ncclResult_t fake_accept(void* listen, void** recv,
                         ncclNetDeviceHandle_v7_t**) {
  std::lock_guard<std::mutex> lock(mutex);
  auto* l = static_cast<listen_comm*>(listen);
  *recv = nullptr;
  if (l->rounds > 0) {
    --l->rounds;
    return ncclSuccess;
  }
  if (!l->pair->connected)
    return ncclSuccess;
  ++l->pair->refs;
  *recv = new endpoint{l->pair, false};
  ++kvferry_fake_open_comms;
  return ncclSuccess;
}
ncclResult_t fake_reg(void* comm, void* data, int size, int type, void** mh) {
  if (!comm || !data || size < 0)
    return ncclInvalidArgument;
  std::lock_guard<std::mutex> lock(mutex);
  if (type != NCCL_PTR_HOST) {
    ++kvferry_fake_refused_mrs;
    return ncclInvalidArgument;
  }
  *mh = std::malloc(1);
  ++kvferry_fake_live_mrs;
  return ncclSuccess;
}
ncclResult_t fake_dereg(void*, void* mh) {
  std::lock_guard<std::mutex> lock(mutex);
  std::free(mh);
  --kvferry_fake_live_mrs;
  return ncclSuccess;
}
ncclResult_t fake_isend(void* comm, void* data, int size, int tag, void* mh,
                        void** req) {
  std::lock_guard<std::mutex> lock(mutex);
  auto* e = static_cast<endpoint*>(comm);
  if (!e || !e->send || !mh || size < 0)
    return ncclInvalidUsage;
  *req = nullptr;
  if (refuse_post(e->pair->send_outstanding))
    return ncclSuccess;
  auto* r = new_request(kind::send, e->pair, &e->pair->send_outstanding);
  r->data[0] = data;
  r->sizes[0] = size;
  r->tags[0] = tag;
  if (++kvferry_fake_sends_posted == kvferry_fake_fail_send_at) {
    r->done = r->failed = true;
    *req = r;
    return ncclSuccess;
  }
  if (size > kvferry_fake_max_chunk)
    kvferry_fake_max_chunk = size;
  e->pair->sends.push_back(r);
  if (breaks != rule::order) // that build matches in test, newest first
    match(e->pair);
  *req = r;
  return ncclSuccess;
}
ncclResult_t fake_irecv(void* comm, int n, void** data, int* sizes, int* tags,
                        void** mh, void** req) {
  std::lock_guard<std::mutex> lock(mutex);
  auto* e = static_cast<endpoint*>(comm);
  if (!e || e->send || n < 1 || n > max_recvs)
    return ncclInvalidUsage;
  *req = nullptr;
  if (refuse_post(e->pair->recv_outstanding))
    return ncclSuccess;
  for (int i = 0; i < n; ++i)
    if (!mh[i])
      return ncclInvalidUsage;
  auto* r = new_request(kind::recv, e->pair, &e->pair->recv_outstanding);
  r->n = n;
  for (int i = 0; i < n; ++i) {
    r->data[i] = data[i];
    r->sizes[i] = sizes[i];
    r->tags[i] = tags[i];
    r->got[i] = -1;
  }
  e->pair->recvs.push_back(r);
  if (breaks != rule::order)
    match(e->pair);
  *req = r;
  return ncclSuccess;
}
ncclResult_t fake_iflush(void*, int, void**, int*, void**, void** req) {
  *req = nullptr; // host memory: nothing to flush
  return breaks == rule::iflush ? ncclSystemError : ncclSuccess;
}
ncclResult_t fake_test(void* req, int* done, int* sizes) {
  std::lock_guard<std::mutex> lock(mutex);
  auto* r = static_cast<request*>(req);
  if (!r)
    return ncclInvalidArgument;
  if (breaks == rule::order)
    match(r->pair);
  *done = r->done;
  if (!r->done)
    return ncclSuccess;
  bool failed = r->failed;
  if (sizes)
    for (int i = 0; i < r->n; ++i)
      sizes[i] = r->what == kind::send || breaks == rule::sizes ? r->sizes[i]
                                                                : r->got[i];
  --*r->pending;
  auto& live = r->pair->live;
  live.erase(std::find(live.begin(), live.end(), r));
  delete r;
  return failed ? ncclInvalidUsage : ncclSuccess;
}
ncclResult_t fake_close(void* comm) {
  std::lock_guard<std::mutex> lock(mutex);
  auto* e = static_cast<endpoint*>(comm);
  if (breaks == rule::close && !e->send && e->pair->send_open)
    return ncclInvalidUsage;
  if (e->send)
    e->pair->send_open = false;
  unref(e->pair);
  delete e;
  --kvferry_fake_open_comms;
  return ncclSuccess;
}
ncclResult_t fake_close_listen(void* listen) {
  std::lock_guard<std::mutex> lock(mutex);
  auto* l = static_cast<listen_comm*>(listen);
  unref(l->pair);
  delete l;
  --kvferry_fake_open_comms;
  return ncclSuccess;
}

} // namespace

extern "C" __attribute__((visibility("default")))
const ncclNet_v7_t ncclNetPlugin_v7 = {
    "fake",
    fake_init,
    fake_devices,
    fake_properties,
    fake_listen,
    fake_connect,
    fake_accept,
    fake_reg,
    nullptr,
    fake_dereg,
    fake_isend,
    fake_irecv,
    fake_iflush,
    breaks == rule::table ? nullptr : fake_test,
    fake_close,
    fake_close,
    fake_close_listen,
    nullptr,
    nullptr,
};
