// Every environment switch of kvsock, read when a comm (or the properties) is
// created so that one process can run comms with different settings.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvsock {

// Fixed limits (see docs/kvsock.md, "Bounds").
constexpr int kMaxRecvs = 8;      // buffers in one grouped irecv
constexpr int kRecvRequests = 32; // irecvs in flight per recv comm
constexpr int kSendRequests =
    kRecvRequests * kMaxRecvs; // isends in flight per send comm
constexpr int kMaxLanes = 16;  // data sockets per comm
constexpr int kMaxGather = 16; // sends in one control-socket sendmsg
// Sends up to these sizes wait to be gathered (KVSOCK_GATHER); a larger one
// is written at once. Inline: written alone, a message ends in a short TCP
// segment; a 64 KiB one plus its header leaves as a full loopback segment and
// an 80-byte one, which made 64 KiB sends 4x slower than gathered ones on 2
// cores (1.5 against 6.5 GB/s). Larger ones go at once: a caller that posts
// 16 of 256 KiB would otherwise write 4 MiB in one test(), holding its thread
// (kvferry's endpoint at 256 KiB lost a third that way).
// With data parts (only the header is gathered): the receiver's data sockets
// wait for the header, so only small ones wait, as a burst of small GPU sends.
constexpr size_t kGatherMaxInline = 64 << 10;
constexpr size_t kGatherMaxWithParts = 16 << 10;
constexpr int kUnpackSlots = 16; // receives outstanding in UNPACK mode
constexpr size_t kUnpackMaxRecvBytes = 4u << 20; // one UNPACK irecv
constexpr size_t kUnpackPage = 4096;

/// Host sends up to this size go inline (the default of KVSOCK_INLINE_MAX):
/// 1 MiB on up to 4 usable cores, else 64 KiB.
size_t default_inline_max(int cores);

struct Config {
  int data_sockets = 2; // KVSOCK_NSOCKS: data sockets (+1 control socket)
  // KVSOCK_INLINE_MAX: host sends up to this go inline on the control
  // socket; default default_inline_max(the usable cores).
  size_t inline_max = 64 << 10;
  size_t min_part =
      256 << 10; // KVSOCK_MIN_PART: smallest piece a large send is split into
  int socket_buffer =
      4 << 20; // KVSOCK_SOCKBUF: SO_SNDBUF/SO_RCVBUF, 0 = kernel autotuning
  size_t cuda_staging =
      4 << 20; // KVSOCK_CUDA_STAGING: pinned bytes per data socket (CUDA only)
  int connect_timeout_ms = 20000; // KVSOCK_CONNECT_TIMEOUT_MS
  // KVSOCK_HELLO_TIMEOUT_MS: an accepted socket that has not sent its 32-byte
  // hello by then is closed (a stranger or a half-open connection).
  int hello_timeout_ms = 10000;
  // KVSOCK_REJECT_LOG_MS: rejected connections beyond a listener's first are
  // summed up in one warning at most this often (details at INFO).
  int reject_log_ms = 10000;
  bool unpack = false; // KVSOCK_UNPACK=1
  // KVSOCK_PTR_SUPPORT=host: declare and accept host memory only, even with a
  // CUDA device, so that a caller's staging path for host-only plugins can be
  // tested against a real plugin. "auto" (default): HOST, plus CUDA when
  // CUDA is available.
  bool host_only = false;
  int spin_us =
      10; // KVSOCK_SPIN_US: test() spins this long without progress...
  int wait_us = 200; // KVSOCK_WAIT_US: ...then sleeps up to this long per call
                     // (0 = never)
  // KVSOCK_GATHER: isend leaves its control bytes for the next test() until
  // this many sends wait, so that a burst goes out in one gathered sendmsg
  // (1 = write at each isend, as before session 15; at most kMaxGather).
  int gather = 16;
  // Fault injection (tests only).
  int64_t fault_delay_us = 0; // KVSOCK_FAULT_DELAY_US: delay every send
  int64_t fault_drop_after =
      -1; // KVSOCK_FAULT_DROP_AFTER: close after N payload bytes sent
  int64_t fault_corrupt =
      0; // KVSOCK_FAULT_CORRUPT: flip one byte of the Nth send (1-based)
  // KVSOCK_FAULT_ACCEPT_DELAY_US: accept hands out no comm until this long
  // after its listen (a slow peer or machine; the sender's connect does not
  // wait for it, so its sends and the caller's messages get ahead of it).
  int64_t fault_accept_delay_us = 0;

  static Config from_env();

  // The NCCL_PTR_* bits getProperties declares and regMr accepts.
  int ptr_support() const;
};

} // namespace kvsock
