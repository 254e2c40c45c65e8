#include "handshake.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "devices.hpp"
#include "log.hpp"
#include "socket.hpp"

namespace kvsock {
namespace {

// Sockets waiting for their hello, and comms waiting for their sockets; at
// the limit the oldest gives way (a real hello follows its connect within
// milliseconds, so the oldest is the likeliest stranger). With the hello
// timeout (Config::hello_timeout_ms) this bounds what strangers cost a
// listener: kMaxPending sockets and 32-byte hellos, nothing sized by them.
constexpr size_t kMaxPending = 256;
constexpr size_t kMaxGroups = 64;
constexpr size_t kRxBuffer = 64 << 10; // control-socket receive buffer

// One in-progress connect(), kept in the caller's copy of the handle.
struct ConnectSocket {
  int fd = -1;
  bool connected = false;
  size_t hello_sent = 0;
};

} // namespace

struct ConnectState {
  Config config;
  sockaddr_in peer{};
  Hello hello{};
  std::vector<ConnectSocket> sockets;
  int64_t deadline_ns = 0;

  ~ConnectState() {
    for (auto& s : sockets) {
      if (s.fd >= 0)
        ::close(s.fd);
    }
  }
};

namespace {

void close_fds(std::vector<int>& fds) {
  for (int& fd : fds) {
    if (fd >= 0)
      ::close(fd);
    fd = -1;
  }
}

// Socket `index` of a connecting comm, one step. Returns 1 when its hello is
// fully written, 0 for "call again", -1 on error (errno-style code in *err).
int advance_connect(ConnectState& state, int index, int* err) {
  ConnectSocket& s = state.sockets[index];
  if (s.fd < 0) {
    s.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s.fd < 0) {
      *err = errno;
      return -1;
    }
    tune_socket(s.fd, state.config);
    if (connect(s.fd, reinterpret_cast<const sockaddr*>(&state.peer),
                sizeof state.peer) == 0) {
      s.connected = true;
    } else if (errno != EINPROGRESS) {
      *err = errno;
      return -1;
    }
  }
  if (!s.connected) {
    pollfd p{s.fd, POLLOUT, 0};
    if (poll(&p, 1, 0) <= 0)
      return 0;
    int so_error = 0;
    socklen_t len = sizeof so_error;
    getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
    if (so_error != 0) {
      *err = so_error;
      return -1;
    }
    s.connected = true;
  }
  Hello hello = state.hello;
  hello.index = static_cast<uint16_t>(index);
  while (s.hello_sent < sizeof hello) {
    ssize_t n = send(s.fd, reinterpret_cast<char*>(&hello) + s.hello_sent,
                     sizeof hello - s.hello_sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return 0;
      *err = errno;
      return -1;
    }
    s.hello_sent += static_cast<size_t>(n);
  }
  return 1;
}

bool valid_handle(const Handle* handle) {
  return handle != nullptr && handle->magic == kHandleMagic &&
         handle->version == kWireVersion && handle->family == AF_INET;
}

// Builds the comm both ends share once its sockets exist: socket 0 stays
// non-blocking (driven by the caller's thread), data sockets block (each has
// a thread).
template<typename Comm>
Comm* build_comm(const Config& config, std::vector<int>& fds,
                 const std::string& peer) {
  auto comm = std::make_unique<Comm>();
  comm->config = config;
  comm->peer = peer;
  comm->ctrl_fd = fds[0];
  fds[0] = -1;
  std::vector<int> data(fds.begin() + 1, fds.end());
  for (int& fd : fds)
    fd = -1;
  for (int fd : data)
    set_nonblocking(fd, false);
  if (!comm->start_lanes(data)) {
    comm->close_all();
    return nullptr;
  }
  return comm.release();
}

} // namespace

void RejectLog::note(const std::string& listener, const sockaddr_in& from,
                     const char* why, int period_ms, int64_t now) {
  ++total;
  latest = "from " + format_address(from) + ": " + why;
  KVSOCK_INFO("listener %s rejected a connection %s", listener.c_str(),
              latest.c_str());
  if (total == 1) {
    KVSOCK_WARN("listener %s rejected a connection %s (further rejections "
                "are summed up at most every %d ms; details at INFO)",
                listener.c_str(), latest.c_str(), period_ms);
    next_warning_ns = now + int64_t{period_ms} * 1000000;
    return;
  }
  ++unreported;
  flush(listener, period_ms, now);
}

void RejectLog::flush(const std::string& listener, int period_ms, int64_t now,
                      bool force) {
  if (unreported == 0 || (!force && now < next_warning_ns))
    return;
  KVSOCK_WARN("listener %s rejected %llu more connection(s) (%llu in all); "
              "latest %s",
              listener.c_str(), static_cast<unsigned long long>(unreported),
              static_cast<unsigned long long>(total), latest.c_str());
  unreported = 0;
  next_warning_ns = now + int64_t{period_ms} * 1000000;
}

void ListenComm::reject(const sockaddr_in& from, const char* why, int64_t now) {
  rejects.note(format_address(address), from, why, config.reject_log_ms, now);
}

ListenComm::~ListenComm() {
  rejects.flush(format_address(address), config.reject_log_ms, now_ns(),
                /*force=*/true);
  if (fd >= 0)
    ::close(fd);
  for (auto& p : pending)
    ::close(p.fd);
  for (auto& g : groups)
    close_fds(g.fds);
}

ncclResult_t do_listen(const Device& device, void* handle_out,
                       void** listen_comm) {
  auto listen = std::make_unique<ListenComm>();
  listen->config = Config::from_env();
  listen->listened_ns = now_ns();
  listen->address = device.address;
  listen->address.sin_port = 0;
  const std::string why = device.name + ", " + device.why;
  listen->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen->fd < 0) {
    KVSOCK_WARN("listen: socket() failed: %s", strerror(errno));
    return ncclSystemError;
  }
  int one = 1;
  setsockopt(listen->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  tune_socket(listen->fd,
              listen->config); // accepted sockets inherit the buffer sizes
  socklen_t len = sizeof listen->address;
  if (bind(listen->fd, reinterpret_cast<sockaddr*>(&listen->address),
           sizeof listen->address) != 0 ||
      ::listen(listen->fd, 128) != 0 ||
      getsockname(listen->fd, reinterpret_cast<sockaddr*>(&listen->address),
                  &len) != 0) {
    KVSOCK_WARN("listen on %s (%s) failed: %s",
                format_address(listen->address).c_str(), why.c_str(),
                strerror(errno));
    return ncclSystemError;
  }
  listen->nonce = random_u64();
  Handle handle{};
  handle.magic = kHandleMagic;
  handle.version = kWireVersion;
  handle.family = AF_INET;
  handle.address = listen->address;
  handle.nonce = listen->nonce;
  std::memset(handle_out, 0, NCCL_NET_HANDLE_MAXSIZE);
  std::memcpy(handle_out, &handle, sizeof handle);
  KVSOCK_INFO("listening on %s (%s)", format_address(listen->address).c_str(),
              why.c_str());
  *listen_comm = listen.release();
  return ncclSuccess;
}

ncclResult_t do_connect(void* handle_ptr, void** send_comm) {
  *send_comm = nullptr;
  Handle* handle = static_cast<Handle*>(handle_ptr);
  if (!valid_handle(handle)) {
    KVSOCK_WARN("connect: the handle was not written by kvsock's listen() (bad "
                "magic or version)");
    return ncclInvalidArgument;
  }
  if (handle->stage_magic != kStageMagic || handle->stage == nullptr) {
    auto state = std::make_unique<ConnectState>();
    state->config = Config::from_env();
    state->peer = handle->address;
    state->hello = Hello{kHelloMagic,
                         kWireVersion,
                         0,
                         static_cast<uint16_t>(1 + state->config.data_sockets),
                         0,
                         0,
                         random_u64(),
                         handle->nonce};
    state->sockets.resize(1 + state->config.data_sockets);
    state->deadline_ns =
        now_ns() +
        static_cast<int64_t>(state->config.connect_timeout_ms) * 1000000;
    handle->stage = state.release();
    handle->stage_magic = kStageMagic;
  }
  ConnectState& state = *handle->stage;
  std::string peer = format_address(state.peer);
  bool all_ready = true;
  for (size_t i = 0; i < state.sockets.size(); ++i) {
    int err = 0;
    int step = advance_connect(state, static_cast<int>(i), &err);
    if (step < 0 && (err == ECONNREFUSED || err == EAGAIN) &&
        now_ns() < state.deadline_ns) {
      ::close(state.sockets[i].fd); // the listener's backlog may be full: retry
      state.sockets[i] = ConnectSocket{};
      step = 0;
    }
    if (step < 0 || (step == 0 && now_ns() >= state.deadline_ns)) {
      KVSOCK_WARN("connect to %s (socket %zu of %zu) failed: %s", peer.c_str(),
                  i, state.sockets.size(),
                  step < 0 ? strerror(err)
                           : "timed out (KVSOCK_CONNECT_TIMEOUT_MS)");
      delete handle->stage;
      handle->stage = nullptr;
      handle->stage_magic = 0;
      return step < 0 ? errno_result(err) : ncclRemoteError;
    }
    all_ready = all_ready && step == 1;
  }
  if (!all_ready)
    return ncclSuccess;

  std::vector<int> fds;
  for (auto& s : state.sockets) {
    fds.push_back(s.fd);
    s.fd = -1;
  }
  Config config = state.config;
  delete handle->stage; // `state` is gone from here on
  handle->stage = nullptr;
  handle->stage_magic = 0;
  auto* comm = build_comm<SendComm>(config, fds, peer);
  if (comm == nullptr)
    return ncclSystemError;
  comm->init_pool(kSendRequests, 1);
  comm->tx.resize(kSendRequests);
  *send_comm = comm;
  return ncclSuccess;
}

namespace {

// Reads the hello of pending sockets; valid ones join their comm's group.
void read_hellos(ListenComm& listen, int64_t now) {
  for (size_t i = 0; i < listen.pending.size();) {
    ListenComm::Pending& p = listen.pending[i];
    bool drop = false;
    const char* why = nullptr;
    ssize_t n = recv(p.fd, reinterpret_cast<char*>(&p.hello) + p.got,
                     sizeof p.hello - p.got, MSG_DONTWAIT);
    if (n > 0)
      p.got += static_cast<size_t>(n);
    if (n == 0 ||
        (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      drop = true;
      why = "closed before its hello";
    } else if (p.got == sizeof p.hello) {
      const Hello& h = p.hello;
      if (h.magic != kHelloMagic || h.version != kWireVersion) {
        drop = true;
        why = "not a kvsock hello";
      } else if (h.nonce != listen.nonce) {
        drop = true;
        why = "wrong nonce (not for this listener)";
      } else if (h.sockets < 2 || h.sockets > 1 + kMaxLanes ||
                 h.index >= h.sockets) {
        drop = true;
        why = "bad socket count";
      }
    } else if (now >= p.deadline_ns) {
      drop = true;
      why = "no hello within KVSOCK_HELLO_TIMEOUT_MS";
    }
    if (drop) {
      listen.reject(p.from, why, now);
      ::close(p.fd);
      listen.pending.erase(listen.pending.begin() + static_cast<long>(i));
      continue;
    }
    if (p.got < sizeof p.hello) {
      ++i;
      continue;
    }
    auto group = std::find_if(listen.groups.begin(), listen.groups.end(),
                              [&](const ListenComm::Group& g) {
                                return g.comm_id == p.hello.comm_id;
                              });
    if (group == listen.groups.end()) {
      if (listen.groups.size() >= kMaxGroups) {
        auto& oldest = listen.groups.front();
        listen.reject(oldest.from, "comm still missing sockets, evicted", now);
        close_fds(oldest.fds);
        listen.groups.erase(listen.groups.begin());
      }
      listen.groups.push_back(ListenComm::Group{
          p.hello.comm_id, std::vector<int>(p.hello.sockets, -1), 0,
          p.deadline_ns, p.from});
      group = listen.groups.end() - 1;
    }
    if (group->fds.size() != p.hello.sockets ||
        group->fds[p.hello.index] >= 0) {
      listen.reject(p.from, "inconsistent socket index or count", now);
      ::close(p.fd);
    } else {
      group->fds[p.hello.index] = p.fd;
      ++group->have;
    }
    listen.pending.erase(listen.pending.begin() + static_cast<long>(i));
  }
}

} // namespace

ncclResult_t do_accept(ListenComm* listen, void** recv_comm,
                       ncclNetDeviceHandle_v7_t** dev_handle) {
  *recv_comm = nullptr;
  int64_t now = now_ns();
  for (;;) {
    sockaddr_in from{};
    socklen_t len = sizeof from;
    int fd = accept4(listen->fd, reinterpret_cast<sockaddr*>(&from), &len,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
          errno == ECONNABORTED)
        break;
      KVSOCK_WARN("accept on %s failed: %s",
                  format_address(listen->address).c_str(), strerror(errno));
      return ncclSystemError;
    }
    if (listen->pending.size() >= kMaxPending) {
      auto& oldest = listen->pending.front();
      listen->reject(oldest.from, "no hello yet, evicted by a newer connection",
                     now);
      ::close(oldest.fd);
      listen->pending.erase(listen->pending.begin());
    }
    tune_socket(fd, listen->config);
    auto timeout_ns = int64_t{listen->config.hello_timeout_ms} * 1000000;
    listen->pending.push_back(
        ListenComm::Pending{fd, Hello{}, 0, now + timeout_ns, from});
  }
  read_hellos(*listen, now);
  listen->rejects.flush(format_address(listen->address),
                        listen->config.reject_log_ms, now);
  const bool held = // a test's slow accept (config.fault_accept_delay_us)
      now < listen->listened_ns + listen->config.fault_accept_delay_us * 1000;

  for (size_t i = 0; i < listen->groups.size(); ++i) {
    ListenComm::Group& group = listen->groups[i];
    if (group.have < static_cast<int>(group.fds.size())) {
      if (now >= group.deadline_ns) {
        listen->reject(group.from,
                       "comm still missing sockets at its hello deadline", now);
        close_fds(group.fds);
        listen->groups.erase(listen->groups.begin() + static_cast<long>(i));
        --i;
      }
      continue;
    }
    if (held)
      continue;
    std::vector<int> fds = std::move(group.fds);
    std::string peer = format_address(group.from);
    listen->groups.erase(listen->groups.begin() + static_cast<long>(i));
    auto* comm = build_comm<RecvComm>(listen->config, fds, peer);
    close_fds(fds);
    if (comm == nullptr)
      return ncclSystemError;
    comm->config.unpack = Config::from_env().unpack;
    if (comm->config.wait_us > 0) {
      // Every control-socket read passes MSG_DONTWAIT except the one that
      // test() lets wait; that one is bounded by this timeout.
      timeval timeout{0, comm->config.wait_us};
      setsockopt(comm->ctrl_fd, SOL_SOCKET, SO_RCVTIMEO, &timeout,
                 sizeof timeout);
      set_nonblocking(comm->ctrl_fd, false);
    }
    comm->init_pool(kRecvRequests, kMaxRecvs);
    comm->match.resize(kRecvRequests);
    comm->rx.resize(kRxBuffer);
    if (comm->config.unpack) {
      comm->unpack = std::make_unique<UnpackState>();
      if (!comm->unpack->allocate()) {
        comm->close_all();
        delete comm;
        return ncclSystemError;
      }
      if (dev_handle != nullptr && *dev_handle != nullptr) {
        ncclNetDeviceHandle_v7_t* dev = *dev_handle;
        dev->netDeviceType = NCCL_NET_DEVICE_UNPACK;
        dev->netDeviceVersion = NCCL_NET_DEVICE_UNPACK_VERSION;
        dev->handle = comm->unpack->handle_device;
        dev->size = sizeof(ncclNetUnpackHandle);
        dev->needsProxyProgress = 1;
      }
    }
    *recv_comm = comm;
    return ncclSuccess;
  }
  return ncclSuccess;
}

ncclResult_t close_listen(ListenComm* listen) {
  delete listen;
  return ncclSuccess;
}

} // namespace kvsock
