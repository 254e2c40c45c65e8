// Drives libnccl-net-kvsock.so through its v7 table, in one process and one
// thread: both ends of a comm are polled alternately, every wait has a
// deadline.
#pragma once

#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <mutex>
#include <string>
#include <sys/socket.h>
#include <vector>

#include <doctest/doctest.h>

#include "kvferry/transport/net_ext.h"
#include "kvferry/transport/net_v7.h"

namespace kvsock_test {

using Clock = std::chrono::steady_clock;
constexpr auto kDeadline = std::chrono::seconds(10);

inline std::mutex& log_mutex() {
  static std::mutex mu;
  return mu;
}
inline std::vector<std::string>& warnings() {
  static std::vector<std::string> list;
  return list;
}

inline void test_logger(ncclDebugLogLevel level, unsigned long, const char*,
                        int, const char* fmt, ...) {
  if (level != NCCL_LOG_WARN)
    return;
  char text[1024];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(text, sizeof text, fmt, args);
  va_end(args);
  std::lock_guard<std::mutex> lock(log_mutex());
  warnings().push_back(text);
}

inline bool warned(const char* fragment) {
  std::lock_guard<std::mutex> lock(log_mutex());
  for (const auto& w : warnings()) {
    if (w.find(fragment) != std::string::npos)
      return true;
  }
  return false;
}

// The plugin, loaded once per process the way NCCL loads it.
inline ncclNet_v7_t* plugin() {
  static ncclNet_v7_t* net = [] {
    const char* dir = std::getenv("KVFERRY_PLUGIN_PATH");
    std::string path =
        std::string(dir != nullptr ? dir : KVFERRY_BINARY_DIR "/lib") +
        "/libnccl-net-kvsock.so";
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      std::fprintf(stderr, "cannot load %s: %s\n", path.c_str(), dlerror());
      return static_cast<ncclNet_v7_t*>(nullptr);
    }
    auto* table = static_cast<ncclNet_v7_t*>(dlsym(lib, "ncclNetPlugin_v7"));
    if (table != nullptr && table->init(test_logger) != ncclSuccess)
      table = nullptr;
    return table;
  }();
  REQUIRE_MESSAGE(net != nullptr,
                  "libnccl-net-kvsock.so must load (KVFERRY_PLUGIN_PATH)");
  return net;
}

// kvferry's extension table (net_ext.h), looked up as kvferry's loader
// does: beside the v7 table. `Table` names the version of `symbol`.
template<class Table = kvferryNetExt_v1_t>
inline const Table* extension(const char* symbol = KVFERRY_NET_EXT_V1_SYMBOL) {
  plugin(); // loaded
  const char* dir = std::getenv("KVFERRY_PLUGIN_PATH");
  std::string path =
      std::string(dir != nullptr ? dir : KVFERRY_BINARY_DIR "/lib") +
      "/libnccl-net-kvsock.so";
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (lib == nullptr)
    return nullptr;
  auto* ext = static_cast<const Table*>(dlsym(lib, symbol));
  dlclose(lib); // the reference NOLOAD took; the plugin stays loaded
  return ext;
}

// Scoped environment switch: kvsock reads its env when a comm is created.
struct EnvGuard {
  std::string name;
  EnvGuard(const char* n, const char* value) : name(n) { setenv(n, value, 1); }
  ~EnvGuard() { unsetenv(name.c_str()); }
};

struct Pair {
  ncclNet_v7_t* net = plugin();
  void* listen = nullptr;
  void* send = nullptr;
  void* recv = nullptr;
  ncclNetDeviceHandle_v7_t dev{};
  char handle[NCCL_NET_HANDLE_MAXSIZE] = {};
  int connect_polls = 0;

  explicit Pair(bool unpack_device_handle = false, int device = 0) {
    REQUIRE(net->listen(device, handle, &listen) == ncclSuccess);
    REQUIRE(listen != nullptr);
    char peer_copy[NCCL_NET_HANDLE_MAXSIZE];
    std::memcpy(peer_copy, handle, sizeof peer_copy); // travels out of band
    dev.netDeviceType = NCCL_NET_DEVICE_UNPACK;
    dev.netDeviceVersion = NCCL_NET_DEVICE_UNPACK_VERSION;
    ncclNetDeviceHandle_v7_t* dev_ptr = unpack_device_handle ? &dev : nullptr;
    ncclNetDeviceHandle_v7_t* send_dev = nullptr;
    auto deadline = Clock::now() + kDeadline;
    while ((send == nullptr || recv == nullptr) && Clock::now() < deadline) {
      if (send == nullptr) {
        REQUIRE(net->connect(device, peer_copy, &send, &send_dev) ==
                ncclSuccess);
        ++connect_polls;
      }
      if (recv == nullptr)
        REQUIRE(net->accept(listen, &recv, &dev_ptr) == ncclSuccess);
    }
    REQUIRE_MESSAGE(send != nullptr, "connect completes within 10 s");
    REQUIRE_MESSAGE(recv != nullptr, "accept completes within 10 s");
    CHECK(send_dev == nullptr);
  }
  ~Pair() {
    if (send != nullptr)
      net->closeSend(send);
    if (recv != nullptr)
      net->closeRecv(recv);
    if (listen != nullptr)
      net->closeListen(listen);
  }
};

// A registered buffer filled with a pattern that depends on `seed`.
struct Buffer {
  std::vector<unsigned char> bytes;
  void* mhandle = nullptr;
  ncclNet_v7_t* net;
  void* comm;
  Buffer(ncclNet_v7_t* n, void* c, size_t size, int seed = -1)
      : bytes(size), net(n), comm(c) {
    if (seed >= 0)
      fill(seed);
    REQUIRE(net->regMr(comm, bytes.data(), static_cast<int>(size),
                       NCCL_PTR_HOST, &mhandle) == ncclSuccess);
  }
  ~Buffer() {
    if (mhandle != nullptr)
      net->deregMr(comm, mhandle);
  }
  void fill(int seed) {
    uint32_t x = static_cast<uint32_t>(seed) * 2654435761u + 12345u;
    for (auto& b : bytes) {
      x = x * 1664525u + 1013904223u;
      b = static_cast<unsigned char>(x >> 24);
    }
  }
  bool matches(int seed, size_t size) const {
    Buffer* self = const_cast<Buffer*>(this);
    std::vector<unsigned char> saved(bytes.begin(),
                                     bytes.begin() + static_cast<long>(size));
    self->fill(seed);
    bool same = std::memcmp(saved.data(), bytes.data(), size) == 0;
    std::memcpy(self->bytes.data(), saved.data(), size);
    return same;
  }
  void* data() { return bytes.data(); }
};

// Posts one receive (n = 1, tag 0) of `size` bytes into the start of `dst`;
// returns the request, nullptr while the comm has all its receives out.
inline void* post_recv(ncclNet_v7_t* net, void* comm, Buffer& dst, int size) {
  void* request = nullptr;
  void* data[1] = {dst.data()};
  int sizes[1] = {size}, tags[1] = {0};
  void* handles[1] = {dst.mhandle};
  REQUIRE(net->irecv(comm, 1, data, sizes, tags, handles, &request) ==
          ncclSuccess);
  return request;
}

// True once a peer has closed `fd` (EOF or reset), without blocking.
inline bool recv_nonblocking_eof(int fd, char* byte) {
  ssize_t n = ::recv(fd, byte, 1, MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

// Polls `request` (and, to keep one thread from deadlocking, `other` too)
// until done or an error; returns the result, *done tells which.
inline ncclResult_t
wait(ncclNet_v7_t* net, void* request, int* sizes, int* done,
     std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  auto deadline = Clock::now() + limit;
  *done = 0;
  while (Clock::now() < deadline) {
    ncclResult_t result = net->test(request, done, sizes);
    if (result != ncclSuccess || *done)
      return result;
  }
  return ncclSuccess;
}

// Sends one buffer and receives it into another, polling both in turn.
inline void transfer(Pair& p, Buffer& src, int send_size, Buffer& dst,
                     int recv_size, int* received, ncclResult_t* send_result,
                     ncclResult_t* recv_result, int tag = 0) {
  void* sreq = nullptr;
  void* rreq = nullptr;
  void* rdata = dst.data();
  REQUIRE(p.net->isend(p.send, src.data(), send_size, tag, src.mhandle,
                       &sreq) == ncclSuccess);
  REQUIRE(p.net->irecv(p.recv, 1, &rdata, &recv_size, &tag, &dst.mhandle,
                       &rreq) == ncclSuccess);
  REQUIRE(sreq != nullptr);
  REQUIRE(rreq != nullptr);
  int sdone = 0, rdone = 0;
  *send_result = *recv_result = ncclSuccess;
  auto deadline = Clock::now() + kDeadline;
  while ((!sdone || !rdone) && Clock::now() < deadline) {
    if (!sdone && *send_result == ncclSuccess) {
      *send_result = p.net->test(sreq, &sdone, nullptr);
      if (*send_result != ncclSuccess)
        sdone = 1;
    }
    if (!rdone && *recv_result == ncclSuccess) {
      *recv_result = p.net->test(rreq, &rdone, received);
      if (*recv_result != ncclSuccess)
        rdone = 1;
    }
  }
  REQUIRE_MESSAGE((sdone && rdone), "transfer finishes (or fails) within 10 s");
}

} // namespace kvsock_test
