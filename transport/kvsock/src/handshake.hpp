// listen / connect / accept: non-blocking establishment of a comm's sockets.
#pragma once

#include <cstdint>
#include <netinet/in.h>
#include <vector>

#include "comm.hpp"
#include "config.hpp"
#include "wire.hpp"

namespace kvsock {

struct ListenComm {
  uint32_t magic = kListenCommMagic;
  Config config;
  int fd = -1;
  sockaddr_in address{};
  uint64_t nonce = 0;

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

  ~ListenComm();
};

ncclResult_t do_listen(void* handle, void** listen_comm);
ncclResult_t do_connect(void* handle, void** send_comm);
ncclResult_t do_accept(ListenComm* listen, void** recv_comm,
                       ncclNetDeviceHandle_v7_t** dev_handle);
ncclResult_t close_listen(ListenComm* listen);

} // namespace kvsock
