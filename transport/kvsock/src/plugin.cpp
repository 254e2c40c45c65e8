// The exported v7 table. Every entry point validates its arguments, catches
// every exception (nothing may cross the C boundary) and returns a result code.
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>
#include <sched.h>
#include <string>

#include "comm.hpp"
#include "config.hpp"
#include "cuda.hpp"
#include "devices.hpp"
#include "handshake.hpp"
#include "kvferry/transport/net_ext.h"
#include "log.hpp"

namespace kvsock {
namespace {

template<typename Fn>
ncclResult_t guarded(const char* call, Fn&& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    KVSOCK_WARN("%s: out of memory", call);
    return ncclSystemError;
  } catch (const std::exception& e) {
    KVSOCK_WARN("%s: %s", call, e.what());
    return ncclInternalError;
  } catch (...) {
    KVSOCK_WARN("%s: unknown exception", call);
    return ncclInternalError;
  }
}

CommBase* as_comm(void* comm) {
  auto* base = static_cast<CommBase*>(comm);
  if (base == nullptr ||
      (base->magic != kSendCommMagic && base->magic != kRecvCommMagic))
    return nullptr;
  return base;
}
SendComm* as_send(void* comm) {
  CommBase* base = as_comm(comm);
  return base != nullptr && base->sender ? static_cast<SendComm*>(base)
                                         : nullptr;
}
RecvComm* as_recv(void* comm) {
  CommBase* base = as_comm(comm);
  return base != nullptr && !base->sender ? static_cast<RecvComm*>(base)
                                          : nullptr;
}

const char* ptr_support_name(int bits) {
  return (bits & NCCL_PTR_CUDA) ? "HOST|CUDA" : "HOST";
}

// A registered region of `comm` that holds [data, data+size).
const Region* region_for(const CommBase* comm, void* mhandle, const void* data,
                         size_t size) {
  auto* region = static_cast<const Region*>(mhandle);
  if (region == nullptr || region->magic != kRegionMagic ||
      region->comm != comm)
    return nullptr;
  const char* p = static_cast<const char*>(data);
  if (p < region->base || p + size > region->base + region->size)
    return nullptr;
  return region;
}

ncclResult_t kvsock_init(ncclDebugLogger_t logger) {
  set_logger(logger);
  return guarded("init", [] {
    cuda::probe();
    KVSOCK_INFO("kvsock ready: ptrSupport=%s",
                ptr_support_name(Config::from_env().ptr_support()));
    return ncclSuccess;
  });
}

// Devices are read from the environment at each call (devices.hpp); a
// device index is checked against the list as it is now.
bool device_at(int dev, Device* out) {
  auto devices = list_devices();
  if (dev < 0 || static_cast<size_t>(dev) >= devices.size())
    return false;
  if (out != nullptr)
    *out = std::move(devices[static_cast<size_t>(dev)]);
  return true;
}

ncclResult_t kvsock_devices(int* ndev) {
  if (ndev == nullptr)
    return ncclInvalidArgument;
  return guarded("devices", [&] {
    *ndev = static_cast<int>(list_devices().size()); // one per interface
    return ncclSuccess;
  });
}

// A device's name and PCI path, owned here: v7 properties carry bare
// pointers that must outlive the call. One slot per device index, written
// under a lock and kept for the process (kMaxDevices small strings).
struct PropertyStrings {
  std::mutex mu;
  std::string names[kMaxDevices];
  std::string paths[kMaxDevices];
};
PropertyStrings& property_strings() {
  static auto* strings = new PropertyStrings; // never destroyed: callers may
                                              // hold the pointers to the end
  return *strings;
}

ncclResult_t kvsock_get_properties(int dev, ncclNetProperties_v7_t* props) {
  if (props == nullptr)
    return ncclInvalidArgument;
  return guarded("getProperties", [&] {
    Device device;
    if (!device_at(dev, &device))
      return ncclInvalidArgument;
    Config config = Config::from_env();
    auto& strings = property_strings();
    std::lock_guard<std::mutex> lock(strings.mu);
    auto& name = strings.names[dev];
    auto& path = strings.paths[dev];
    // Rewritten only when it changed: a pointer handed out earlier stays
    // valid while the device stays what it was.
    if (name != device.name)
      name = device.name;
    if (path != device.pci_path)
      path = device.pci_path;
    std::memset(props, 0, sizeof *props);
    props->name = const_cast<char*>(name.c_str());
    props->pciPath = path.empty() ? nullptr : const_cast<char*>(path.c_str());
    // "kvsock" plus the device index: distinct ports have distinct guids.
    props->guid = 0x6b76736f636b0000ull + static_cast<uint64_t>(dev);
    props->ptrSupport = config.ptr_support();
    props->speed = 100000; // Mbit/s: a loopback-class virtual NIC
    props->port = 0;
    props->latency = 0;
    props->maxComms = 65536;
    props->maxRecvs = config.unpack ? 1 : kMaxRecvs;
    props->netDeviceType =
        config.unpack ? NCCL_NET_DEVICE_UNPACK : NCCL_NET_DEVICE_HOST;
    props->netDeviceVersion =
        config.unpack ? NCCL_NET_DEVICE_UNPACK_VERSION : 0;
    return ncclSuccess;
  });
}

ncclResult_t kvsock_listen(int dev, void* handle, void** listen_comm) {
  if (handle == nullptr || listen_comm == nullptr)
    return ncclInvalidArgument;
  return guarded("listen", [&] {
    Device device;
    if (!device_at(dev, &device)) {
      KVSOCK_WARN("listen: no device %d; kvsock has %zu (KVSOCK_IFADDR, "
                  "NCCL_SOCKET_IFNAME)",
                  dev, list_devices().size());
      return ncclInvalidArgument;
    }
    return do_listen(device, handle, listen_comm);
  });
}

// TCP needs nothing of the local device to connect: the kernel routes by the
// peer's address (the listener chose its NIC); the index is only checked.
ncclResult_t kvsock_connect(int dev, void* handle, void** send_comm,
                            ncclNetDeviceHandle_v7_t** send_dev) {
  if (handle == nullptr || send_comm == nullptr)
    return ncclInvalidArgument;
  if (send_dev != nullptr)
    *send_dev = nullptr; // only an UNPACK receiver has a device handle
  return guarded("connect", [&] {
    if (!device_at(dev, nullptr))
      return ncclInvalidArgument;
    return do_connect(handle, send_comm);
  });
}

ncclResult_t kvsock_accept(void* listen_comm, void** recv_comm,
                           ncclNetDeviceHandle_v7_t** recv_dev) {
  auto* listen = static_cast<ListenComm*>(listen_comm);
  if (listen == nullptr || listen->magic != kListenCommMagic ||
      recv_comm == nullptr)
    return ncclInvalidArgument;
  return guarded("accept",
                 [&] { return do_accept(listen, recv_comm, recv_dev); });
}

ncclResult_t kvsock_reg_mr(void* comm_ptr, void* data, int size, int type,
                           void** mhandle) {
  CommBase* comm = as_comm(comm_ptr);
  if (comm == nullptr || mhandle == nullptr || size < 0 ||
      (data == nullptr && size > 0)) {
    KVSOCK_WARN("regMr: invalid arguments (comm %p, data %p, size %d)",
                comm_ptr, data, size);
    return ncclInvalidArgument;
  }
  const int supported = comm->config.ptr_support();
  if ((type != NCCL_PTR_HOST && type != NCCL_PTR_CUDA) || !(type & supported)) {
    KVSOCK_WARN("regMr: memory type %d is not supported (ptrSupport is %s)",
                type, ptr_support_name(supported));
    return ncclInvalidArgument;
  }
  return guarded("regMr", [&] {
    auto* region = new Region;
    region->comm = comm;
    region->base = static_cast<char*>(data);
    region->size = static_cast<size_t>(size);
    region->type = type;
    region->device = type == NCCL_PTR_CUDA ? cuda::device_of(data) : -1;
    if (type == NCCL_PTR_CUDA && region->device < 0) {
      KVSOCK_WARN("regMr: %p is registered as CUDA memory but CUDA does not "
                  "know it as device memory",
                  data);
      delete region;
      return ncclInvalidArgument;
    }
    std::lock_guard<std::mutex> lock(comm->mu);
    comm->regions.push_back(region);
    *mhandle = region;
    return ncclSuccess;
  });
}

ncclResult_t kvsock_dereg_mr(void* comm_ptr, void* mhandle) {
  CommBase* comm = as_comm(comm_ptr);
  auto* region = static_cast<Region*>(mhandle);
  if (comm == nullptr || region == nullptr || region->magic != kRegionMagic ||
      region->comm != comm) {
    KVSOCK_WARN("deregMr: %p is not a registration of comm %p", mhandle,
                comm_ptr);
    return ncclInvalidArgument;
  }
  std::lock_guard<std::mutex> lock(comm->mu);
  for (auto it = comm->regions.begin(); it != comm->regions.end(); ++it) {
    if (*it == region) {
      comm->regions.erase(it);
      region->magic = 0;
      delete region;
      return ncclSuccess;
    }
  }
  return ncclInvalidArgument;
}

ncclResult_t kvsock_isend(void* comm_ptr, void* data, int size, int tag,
                          void* mhandle, void** request) {
  SendComm* comm = as_send(comm_ptr);
  if (comm == nullptr || request == nullptr || size < 0)
    return ncclInvalidArgument;
  *request = nullptr;
  const Region* region =
      region_for(comm, mhandle, data, static_cast<size_t>(size));
  if (region == nullptr && size > 0) {
    KVSOCK_WARN("isend to %s: %d bytes at %p are not inside a region "
                "registered on this comm",
                comm->peer.c_str(), size, data);
    return ncclInvalidArgument;
  }
  return guarded("isend", [&] {
    std::lock_guard<std::mutex> lock(comm->mu);
    if (int err = comm->error.load(); err != ncclSuccess)
      return static_cast<ncclResult_t>(err);
    Request* r = comm->acquire_request();
    if (r == nullptr)
      return ncclSuccess; // flow control: all requests in flight, call again
    ncclResult_t result =
        comm->post(r, static_cast<const char*>(data), size, tag, region);
    *request = r;
    return result;
  });
}

ncclResult_t kvsock_irecv(void* comm_ptr, int n, void** data, int* sizes,
                          int* tags, void** mhandles, void** request) {
  RecvComm* comm = as_recv(comm_ptr);
  if (comm == nullptr || request == nullptr || data == nullptr ||
      sizes == nullptr || n < 1 || n > kMaxRecvs) {
    KVSOCK_WARN("irecv: invalid arguments (comm %p, n %d; at most %d buffers)",
                comm_ptr, n, kMaxRecvs);
    return ncclInvalidArgument;
  }
  *request = nullptr;
  for (int i = 0; i < n; ++i) {
    if (sizes[i] < 0 ||
        (sizes[i] > 0 &&
         region_for(comm, mhandles != nullptr ? mhandles[i] : nullptr, data[i],
                    static_cast<size_t>(sizes[i])) == nullptr)) {
      KVSOCK_WARN("irecv from %s: buffer %d (%d bytes at %p) is not inside a "
                  "region registered on this comm",
                  comm->peer.c_str(), i, sizes[i], data[i]);
      return ncclInvalidArgument;
    }
  }
  if (comm->unpack &&
      (n != 1 || static_cast<size_t>(sizes[0]) > kUnpackMaxRecvBytes)) {
    KVSOCK_WARN("irecv in UNPACK mode takes one buffer of at most 4 MiB (got "
                "n=%d, %d bytes)",
                n, sizes[0]);
    return ncclInvalidUsage;
  }
  return guarded("irecv", [&] {
    std::lock_guard<std::mutex> lock(comm->mu);
    if (int err = comm->error.load(); err != ncclSuccess)
      return static_cast<ncclResult_t>(err);
    if (comm->unpack &&
        comm->unpack->slot_busy[comm->next_seq % kUnpackSlots]) {
      return ncclSuccess; // its slot is not consumed yet: call again
    }
    Request* r = comm->acquire_request();
    if (r == nullptr)
      return ncclSuccess; // flow control
    ncclResult_t result = comm->post(r, n, data, sizes, tags, mhandles);
    *request = r;
    return result;
  });
}

// Receives are copied to their destination (staged CUDA copies are
// synchronous) before test() reports them done, so nothing is left to flush:
// a NULL request means "already done".
ncclResult_t kvsock_iflush(void* comm, int, void**, int*, void**,
                           void** request) {
  if (as_recv(comm) == nullptr || request == nullptr)
    return ncclInvalidArgument;
  *request = nullptr;
  return ncclSuccess;
}

ncclResult_t kvsock_test(void* request_ptr, int* done, int* sizes) {
  auto* request = static_cast<Request*>(request_ptr);
  if (request == nullptr || done == nullptr ||
      request->magic != kRequestMagic || !request->in_use) {
    KVSOCK_WARN("test: %p is not a request in flight", request_ptr);
    return ncclInvalidArgument;
  }
  // Callers poll test() in a loop. Once a comm has been idle for
  // KVSOCK_SPIN_US, sleep until its socket or a lane has news (at most
  // KVSOCK_WAIT_US): a spinning poller on a busy machine steals the time
  // slices that the transfer (our lanes, the peer, the kernel) needs. Woken
  // by news, look again at once, so one call usually sees the completion.
  ncclResult_t result = ncclSuccess;
  for (int attempt = 0; attempt < 2; ++attempt) {
    WaitHint hint;
    result = guarded("test",
                     [&] { return test_request(request, done, sizes, &hint); });
    if (result != ncclSuccess || *done != 0 || !hint.wait)
      break;
    if (!idle_wait(hint))
      break; // timed out: return to the caller
  }
  return result;
}

ncclResult_t close_comm(CommBase* comm) {
  if (comm == nullptr)
    return ncclInvalidArgument;
  return guarded("close", [&] {
    comm->close_all();
    comm->magic = 0;
    delete comm;
    return ncclSuccess;
  });
}

ncclResult_t kvsock_close_send(void* comm) {
  return close_comm(as_send(comm));
}
ncclResult_t kvsock_close_recv(void* comm) {
  return close_comm(as_recv(comm));
}

ncclResult_t kvsock_close_listen(void* listen_comm) {
  auto* listen = static_cast<ListenComm*>(listen_comm);
  if (listen == nullptr || listen->magic != kListenCommMagic)
    return ncclInvalidArgument;
  listen->magic = 0;
  return close_listen(listen);
}

ncclResult_t kvsock_irecv_consumed(void* comm_ptr, int, void* request_ptr) {
  RecvComm* comm = as_recv(comm_ptr);
  auto* request = static_cast<Request*>(request_ptr);
  if (comm == nullptr || !comm->unpack || request == nullptr ||
      request->magic != kRequestMagic || request->comm != comm ||
      !request->awaiting_consume) {
    KVSOCK_WARN(
        "irecvConsumed: %p is not a completed UNPACK receive of comm %p",
        request_ptr, comm_ptr);
    return ncclInvalidUsage;
  }
  std::lock_guard<std::mutex> lock(comm->mu);
  comm->unpack->slot_busy[request->unpack_slot] = false;
  comm->release_request(request);
  return ncclSuccess;
}

// kvferry's extension (net_ext.h). The caller's loop has its own idle
// policy: test() on this comm never sleeps, as with KVSOCK_WAIT_US=0 for
// this comm alone (its control socket is then only read with MSG_DONTWAIT).
ncclResult_t kvsock_set_caller_polls(void* comm_ptr) {
  CommBase* comm = as_comm(comm_ptr);
  if (comm == nullptr) {
    KVSOCK_WARN("setCallerPolls: %p is not a comm", comm_ptr);
    return ncclInvalidArgument;
  }
  std::lock_guard<std::mutex> lock(comm->mu);
  comm->config.wait_us = 0;
  return ncclSuccess;
}

// kvferry's extension v2 (net_ext.h): the comm's wait descriptor
// (CommBase::wait_fd), made at the first call.
ncclResult_t kvsock_get_wait_fd(void* comm_ptr, int* fd) {
  CommBase* comm = as_comm(comm_ptr);
  if (comm == nullptr || fd == nullptr) {
    KVSOCK_WARN("getWaitFd: %p is not a comm (or no place for the fd)",
                comm_ptr);
    return ncclInvalidArgument;
  }
  std::lock_guard<std::mutex> lock(comm->mu);
  if (comm->wait_fd < 0 && !comm->open_wait_fd())
    return ncclSystemError;
  *fd = comm->wait_fd;
  return ncclSuccess;
}

// The export table, each slot named (as NCCL's example plugin names them with
// designated initializers, which C++17 lacks). constexpr: the table is
// constant-initialised, so it is complete before any loader's dlsym.
constexpr ncclNet_v7_t export_table() {
  ncclNet_v7_t t{};
  t.name = "kvsock";
  t.init = kvsock_init;
  t.devices = kvsock_devices;
  t.getProperties = kvsock_get_properties;
  t.listen = kvsock_listen;
  t.connect = kvsock_connect;
  t.accept = kvsock_accept;
  t.regMr = kvsock_reg_mr;
  t.regMrDmaBuf = nullptr; // no DMA-BUF support (ptrSupport has no DMABUF bit)
  t.deregMr = kvsock_dereg_mr;
  t.isend = kvsock_isend;
  t.irecv = kvsock_irecv;
  t.iflush = kvsock_iflush;
  t.test = kvsock_test;
  t.closeSend = kvsock_close_send;
  t.closeRecv = kvsock_close_recv;
  t.closeListen = kvsock_close_listen;
  t.getDeviceMr = nullptr; // no device-side memory handles
  t.irecvConsumed = kvsock_irecv_consumed;
  return t;
}

} // namespace
} // namespace kvsock

extern "C" __attribute__((visibility("default")))
const ncclNet_v7_t ncclNetPlugin_v7 = kvsock::export_table();

// Looked up beside the v7 table by kvferry's loader; NCCL never sees it.
extern "C" __attribute__((visibility("default")))
const kvferryNetExt_v1_t kvferryNetExt_v1 = {"kvsock",
                                             kvsock::kvsock_set_caller_polls};
extern "C" __attribute__((visibility("default")))
const kvferryNetExt_v2_t kvferryNetExt_v2 = {
    "kvsock", kvsock::kvsock_set_caller_polls, kvsock::kvsock_get_wait_fd};
