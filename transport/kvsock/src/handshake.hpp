// listen / connect / accept: non-blocking establishment of a comm's sockets.
#pragma once

#include <cstdint>
#include <netinet/in.h>
#include <string>
#include <vector>

#include "comm.hpp"
#include "config.hpp"
#include "wire.hpp"

namespace kvsock {

// Connections a listener turned away, logged so that a stranger cannot flood
// the log: the first one as a warning naming the peer and the reason, the
// next ones counted into one summary warning at most every reject_log_ms,
// each one in detail at INFO (kvferry's debug level).
struct RejectLog {
  uint64_t total = 0;
  uint64_t unreported = 0; // since the last warning
  int64_t next_warning_ns = 0;
  std::string latest; // "from ADDR: why" of the latest one

  void note(const std::string& listener, const sockaddr_in& from,
            const char* why, int period_ms, int64_t now);
  // The summary warning, once the period has passed (or `force`).
  void flush(const std::string& listener, int period_ms, int64_t now,
             bool force = false);
};

struct ListenComm {
  uint32_t magic = kListenCommMagic;
  Config config;
  int fd = -1;
  sockaddr_in address{};
  uint64_t nonce = 0;
  int64_t listened_ns = 0; // for config.fault_accept_delay_us

  struct Pending { // an accepted socket whose hello is not complete yet
    int fd;
    Hello hello;
    size_t got;
    int64_t deadline_ns;
    sockaddr_in from;
  };
  struct Group { // the sockets of one connecting comm, by index
    uint64_t comm_id;
    std::vector<int> fds;
    int have;
    int64_t deadline_ns;
    sockaddr_in from;
  };
  std::vector<Pending> pending;
  std::vector<Group> groups;
  RejectLog rejects;

  void reject(const sockaddr_in& from, const char* why, int64_t now);

  ~ListenComm();
};

// Listens on `device`'s address (devices.hpp).
struct Device;
ncclResult_t do_listen(const Device& device, void* handle, void** listen_comm);
ncclResult_t do_connect(void* handle, void** send_comm);
ncclResult_t do_accept(ListenComm* listen, void** recv_comm,
                       ncclNetDeviceHandle_v7_t** dev_handle);
ncclResult_t close_listen(ListenComm* listen);

} // namespace kvsock
