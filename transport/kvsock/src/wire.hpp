// What travels between the two ends of a kvsock comm, and the 128-byte handle.
#pragma once

#include <cstddef>
#include <cstdint>
#include <netinet/in.h>

#include "kvferry/transport/net_v7.h"

namespace kvsock {

constexpr uint32_t kHandleMagic = 0x4b56534bu; // "KVSK"
constexpr uint32_t kHelloMagic = 0x4b564831u;  // "KVH1"
constexpr uint32_t kHeaderMagic = 0x4b564d31u; // "KVM1"
constexpr uint16_t kWireVersion = 1;

struct ConnectState; // connect() in progress, parked in the caller's handle

// listen() writes this into the caller's 128-byte handle. The peer copies the
// handle and calls connect() with it repeatedly; the connect state pointer is
// kept inside the peer's copy (NCCL's socket plugin does the same), so a
// handle fresh from listen() has it zeroed.
struct Handle {
  uint32_t magic;
  uint16_t version;
  uint16_t family;      // AF_INET
  sockaddr_in address;  // address and port of the listening socket
  uint64_t nonce;       // random; accept() drops connections without it
  uint64_t stage_magic; // kStageMagic when `stage` is valid
  ConnectState* stage;
};
static_assert(sizeof(Handle) <= NCCL_NET_HANDLE_MAXSIZE,
              "handle must fit 128 bytes");
constexpr uint64_t kStageMagic = 0x6b76736f636b7374ull;

// First bytes on every socket of a comm, connector to acceptor.
struct Hello {
  uint32_t magic;
  uint16_t version;
  uint16_t index;   // 0 = control socket, 1.. = data sockets
  uint16_t sockets; // control + data sockets of this comm
  uint16_t reserved;
  uint32_t reserved2;
  uint64_t comm_id; // random, groups the sockets of one comm
  uint64_t nonce;   // must equal the listener's
};
static_assert(sizeof(Hello) == 32);

// One per isend, in posting order, on the control socket. Inline sends are
// followed by their payload on the control socket; larger ones are split into
// `parts` pieces of `part_size` bytes (the last one shorter) sent on data
// sockets first_lane, first_lane+1, ... (mod the number of data sockets).
struct MessageHeader {
  uint32_t magic;
  int32_t tag;
  uint32_t size;
  uint32_t seq; // low bits of the send's sequence number, a sanity check
  uint32_t part_size;
  uint16_t parts; // 0 = payload inline
  uint16_t first_lane;
};
static_assert(sizeof(MessageHeader) == 24);

} // namespace kvsock
