// The state of kvsock's comms and requests.
//
// A comm is one control socket plus `data_sockets` data sockets ("lanes").
// The control socket carries, in posting order, one MessageHeader per send
// and the payload of small sends; it is driven from the caller's thread
// (isend/irecv/test), so a small message costs one writev and one recv.
// Larger payloads are split across the lanes, each served by its own thread
// that does blocking reads/writes; both ends derive the split from the header.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <sys/socket.h>
#include <sys/uio.h>
#include <thread>
#include <vector>

#include "config.hpp"
#include "kvferry/transport/net_v7.h"
#include "wire.hpp"

namespace kvsock {

constexpr uint32_t kRegionMagic = 0x4b56524du;  // "KVRM"
constexpr uint32_t kRequestMagic = 0x4b565251u; // "KVRQ"
constexpr uint32_t kSendCommMagic = 0x4b565343u;
constexpr uint32_t kRecvCommMagic = 0x4b565243u;
constexpr uint32_t kListenCommMagic = 0x4b56534cu;

struct CommBase;
struct Request;

struct Region { // what regMr returns
  uint32_t magic = kRegionMagic;
  const CommBase* comm = nullptr;
  char* base = nullptr;
  size_t size = 0;
  int type = NCCL_PTR_HOST;
  int device = -1; // CUDA device of the memory, -1 for host memory
};

// Where the bytes of one received message go.
struct Destination {
  char* base = nullptr; // host buffer; in UNPACK mode the slot's bounce area
  bool scattered =
      false;            // UNPACK: page p lives at base + scatter_page(p) * 4096
  bool discard = false; // truncated receive: read and drop the bytes
  int device = -1;      // >= 0: base is device memory, stage through host

  // iovecs covering [offset, offset+len) of the message, at most `max`;
  // returns how many and sets *covered to the bytes they span.
  int iovecs(size_t offset, size_t len, iovec* iov, int max,
             size_t* covered) const;
  // Copy host bytes in (not for device or discard destinations).
  void copy_in(size_t offset, const char* src, size_t len) const;
};

// Pages of an UNPACK slot are stored out of order so that the receiver's
// unpack kernel really has to gather: an odd multiplier permutes 1024 pages.
inline size_t scatter_page(size_t page) {
  return (page * 389u) % (kUnpackMaxRecvBytes / kUnpackPage);
}

struct Message { // one isend, or one buffer of a grouped irecv
  MessageHeader header{};
  size_t size = 0; // payload bytes
  // sender side
  const char* src = nullptr;
  int src_device = -1;
  size_t ctrl_sent = 0; // header (+ inline payload) bytes written
  size_t ctrl_total = 0;
  int64_t not_before_ns = 0; // KVSOCK_FAULT_DELAY_US
  int64_t corrupt_at = -1;   // KVSOCK_FAULT_CORRUPT: payload byte to flip
  // receiver side
  Destination dest;
  size_t capacity = 0;
  int tag = 0;
  bool matched = false;
  bool truncated = false;
  size_t inline_done = 0;
  // both: pieces still owned by lane threads
  std::atomic<int> parts_left{0};
};

struct Request {
  uint32_t magic = kRequestMagic;
  CommBase* comm = nullptr;
  bool in_use = false;
  int n = 0;
  int matched = 0;
  uint64_t seq = 0;
  int unpack_slot = -1;
  bool awaiting_consume = false; // UNPACK: done, slot held until irecvConsumed
  std::atomic<int> error{ncclSuccess};
  Message* msgs = nullptr; // n entries (in the comm's message array)
};

struct LaneJob {
  Request* request;
  Message* msg;
  size_t offset;
  size_t len;
};

// One data socket and the thread that serves it. Jobs arrive in message
// order, which is the order both ends use on this socket.
class Lane {
public:
  Lane(CommBase* comm, int fd, int index);
  ~Lane();
  bool start();
  void push(const LaneJob& job);
  void stop(); // wakes and joins the thread; the socket is shut down
  int fd() const { return fd_; }

private:
  void run();
  void serve(const LaneJob& job);
  int send_piece(const LaneJob& job);
  int recv_piece(const LaneJob& job);
  int send_host(const LaneJob& job, size_t offset, size_t len);
  bool wait_until(int64_t deadline_ns);

  CommBase* comm_;
  int fd_;
  int index_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  // Fixed ring: a comm never has more pieces queued than messages in flight.
  std::vector<LaneJob> ring_;
  size_t head_ = 0, count_ = 0;
  char* staging_ =
      nullptr; // pinned bounce for CUDA memory, allocated on first use
  std::vector<char> scratch_; // discarding a truncated receive
};

struct CommBase {
  explicit CommBase(uint32_t magic_value, bool is_sender)
      : magic(magic_value), sender(is_sender) {}
  virtual ~CommBase();

  uint32_t magic;
  bool sender;
  Config config;
  std::string peer; // "address:port", for messages
  int ctrl_fd = -1;
  std::vector<std::unique_ptr<Lane>> lanes;
  std::mutex mu;
  std::atomic<int> error{ncclSuccess}; // fatal: every incomplete request fails
  std::vector<Region*> regions;

  std::unique_ptr<Request[]> requests;
  std::unique_ptr<Message[]> messages;
  std::vector<int> free_requests;
  int request_count = 0;

  // Adaptive waiting in test(): after spin_us without progress the caller's
  // thread sleeps in ppoll on the control socket and wake_fd (an eventfd the
  // lanes signal when a piece completes) instead of burning the CPU that the
  // transfer itself needs.
  int wake_fd = -1;
  std::atomic<uint64_t> progress{0};
  std::atomic<bool> sleeping{false};
  std::atomic<uint64_t> seen_progress{0}; // written under mu, read by idle_wait
  int64_t idle_since_ns = 0;              // start of the current idle period
  int64_t idle_avg_ns = 0;                // moving average of idle periods
  bool idle_slept = false;                // the current idle period slept
  bool idle_sleepy = false;               // sleep at once (see test_request)
  uint64_t idle_periods = 0;
  void note_progress();

  // kvferry's wait descriptor (net_ext.h, getWaitFd), for a caller that
  // polls: an epoll set of wake_fd and the control socket (a receive comm's
  // for POLLIN; a send comm's for POLLOUT while control bytes wait for
  // room), so it is readable exactly when test() may find news. -1 until
  // asked for. Once it exists the lanes signal wake_fd after every piece
  // (not only while a test() sleeps: signal_wait_fd) and each test() drains
  // it before it looks (drain_wait_fd); a send comm's control socket joins
  // the set while control bytes wait for room (watch_tx, after the test).
  int wait_fd = -1;
  std::atomic<bool> signal_always{false};
  std::atomic<bool> wake_pending{false}; // set after each such signal
  bool wait_watches_tx = false;          // a send comm's ctrl_fd is in wait_fd
  void signal_wait_fd();                 // a lane's piece ended
  bool open_wait_fd();                   // under mu
  void drain_wait_fd();                  // under mu, before test() looks
  void watch_tx();                       // under mu, after test() drove it

  // fault injection
  std::atomic<int64_t> payload_sent{0};
  int64_t sends_posted = 0;

  void init_pool(int request_count, int msgs_per_request);
  Request* acquire_request();
  void release_request(Request* request);
  bool start_lanes(const std::vector<int>& fds);
  // Sets the fatal error once, logs why, and shuts the sockets so that lane
  // threads and the peer notice promptly.
  void fail(ncclResult_t code, const char* fmt, ...)
      __attribute__((format(printf, 3, 4)));
  void shutdown_sockets();
  void close_all(); // stop lanes, close sockets, free regions
  // KVSOCK_FAULT_DROP_AFTER: how many of `len` payload bytes may still go out.
  size_t drop_allowance(size_t len) const;
  void account_sent(size_t len);
};

struct SendComm : CommBase {
  SendComm() : CommBase(kSendCommMagic, true) {}
  std::vector<Message*> tx; // ring of messages with control bytes to write
  size_t tx_head = 0, tx_count = 0;
  // The wait descriptor was signalled for control bytes left waiting by an
  // isend since the last test() (see post); under mu.
  bool tx_signalled = false;
  uint64_t next_seq = 0;
  int next_lane = 0;
  char corrupt_byte = 0;

  ncclResult_t post(Request* request, const char* data, int size, int tag,
                    const Region* region);
  void pump(); // write what the control socket takes now
  int ctrl_iovecs(Message& msg, iovec* iov, int max, size_t* bytes);
};

struct UnpackState {
  ncclNetUnpackMeta* meta = nullptr;     // host address
  char* bounce = nullptr;                // host address, kUnpackSlots * 4 MiB
  ncclNetUnpackHandle* handle = nullptr; // host address
  ncclNetUnpackHandle* handle_device = nullptr;
  bool slot_busy[kUnpackSlots] = {};
  ~UnpackState();
  bool allocate();
};

struct RecvComm : CommBase {
  RecvComm() : CommBase(kRecvCommMagic, false) {}
  std::vector<Request*> match; // ring of posted receives with unmatched buffers
  size_t match_head = 0, match_count = 0;
  uint64_t next_seq = 0;
  bool peer_closed = false;
  // control socket receive buffer
  std::vector<char> rx;
  size_t rx_begin = 0, rx_end = 0;
  Request* inline_request = nullptr;
  Message* inline_msg = nullptr;
  std::unique_ptr<UnpackState> unpack;

  ncclResult_t post(Request* request, int n, void** data, const int* sizes,
                    const int* tags, void** mhandles);
  // may_block: the first read may wait (SO_RCVTIMEO, about wait_us rounded
  // up to a clock tick) for data, like a blocking recv; see test_request.
  void pump(bool may_block = false);
  int recv_flags = MSG_DONTWAIT;
  bool deliver_from_rx();
  bool read_inline_direct();
  bool fill_rx();
  bool on_failed_ctrl_read(ssize_t n);
  bool handle_header();
  void on_peer_closed();
  void publish_unpack(Request* request);
};

struct ListenComm;

// Poll-style completion of one request; also advances its comm.
// What an unfinished test() may sleep on, once the comm has been idle for
// longer than its spin time.
struct WaitHint {
  bool wait = false;
  int ctrl_fd = -1;
  short ctrl_events = 0;
  CommBase* comm = nullptr;
};

ncclResult_t test_request(Request* request, int* done, int* sizes,
                          WaitHint* hint);
// Sleeps as the hint says, at most config.wait_us; true when woken by news.
bool idle_wait(const WaitHint& hint);

ncclResult_t errno_result(int err); // peer-caused errnos -> ncclRemoteError

} // namespace kvsock
