// The state behind a channel (channel.hpp), private to the transport
// library: comms and their chunk FIFOs, op slots, registrations and the
// staging ring. channel.cpp registers, posts and polls; channel_staging.cpp
// moves CUDA memory through pinned bounce slots for plugins without
// NCCL_PTR_CUDA; channel_setup.cpp opens comms (listener and connector).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kvferry/transport/channel.hpp"
#include "kvferry/transport/staging.hpp"

namespace kvferry::transport::detail {

// Most buffers one grouped irecv takes (NCCL groups at most 8).
constexpr int max_group = 8;
// Registrations above INT_MAX bytes: 1 GiB windows every 512 MiB.
constexpr size_t window_step = max_chunk_bytes;
constexpr size_t window_bytes = 2 * window_step;

// A FIFO on a vector that grows by doubling and never shrinks.
template<class T>
class fifo {
public:
  bool empty() const { return count_ == 0; }
  size_t size() const { return count_; }
  T& front() { return items_[head_]; }
  T& at(size_t i) { return items_[(head_ + i) % items_.size()]; }
  void pop() {
    head_ = (head_ + 1) % items_.size();
    --count_;
  }
  void push(const T& item) {
    if (count_ == items_.size())
      grow();
    items_[(head_ + count_) % items_.size()] = item;
    ++count_;
  }
  void clear() { head_ = count_ = 0; }
  void reserve(size_t n) {
    while (items_.size() < n)
      grow();
  }

private:
  void grow() {
    std::vector<T> bigger(items_.empty() ? 16 : items_.size() * 2);
    for (size_t i = 0; i < count_; ++i)
      bigger[i] = items_[(head_ + i) % items_.size()];
    items_.swap(bigger);
    head_ = 0;
  }
  std::vector<T> items_;
  size_t head_ = 0, count_ = 0;
};

// One plugin call: an isend, or an irecv of n grouped buffers.
struct chunk {
  uint32_t op = 0;
  int n = 1;
  void* data[max_group] = {};
  int sizes[max_group] = {};
  int tags[max_group] = {};
  void* mhandles[max_group] = {};
  bool cuda = false;     // a receive into CUDA memory: iflush before done
  bool flushing = false; // `request` is the iflush request
  size_t received = 0;
  void* request = nullptr;
  // Staging: buffer k stands for the caller's user_data[k] and travels
  // through bounce slot staged_slot[k] (-1: not staged, or no slot yet).
  bool staged = false;
  unsigned copying = 0; // bit k: a copy of buffer k is in flight
  int staged_slot[max_group] = {-1, -1, -1, -1, -1, -1, -1, -1};
  void* user_data[max_group] = {};
};
static_assert(max_group == 8,
              "chunk::staged_slot lists one -1 per group buffer");

struct comm_slot {
  void* comm = nullptr;
  std::unique_ptr<ncclNetDeviceHandle_v7_t> device_storage;
  ncclNetDeviceHandle_v7_t* device = nullptr;
  fifo<chunk> waiting;    // not posted yet, in posting order
  size_t prepared = 0;    // head chunks of `waiting` holding their bounce slots
  std::vector<chunk> out; // posted, request outstanding (<= max_inflight)
  std::vector<chunk> unstaging; // received, host-to-device copies in flight
  std::vector<int> free_slots;  // this comm's free bounce slots
  std::string failure;          // set once; ops point into it
};

// The pinned bounce slots of a staging channel: comm c owns slots
// c*slots_per_comm .. (c+1)*slots_per_comm-1, each registered on comm c only.
struct staging_ring {
  std::unique_ptr<staging_copier> copier;
  char* memory = nullptr;
  size_t slot_bytes = 0;
  std::vector<void*> mhandles; // [slot]
  char* slot_memory(int slot) const {
    return memory + static_cast<size_t>(slot) * slot_bytes;
  }
};

struct op_slot {
  op_id id = 0;
  bool in_use = false;
  bool failed = false;
  size_t chunks_left = 0;
  size_t bytes = 0;
  const char* error = nullptr;
  std::string own_error; // a failure of this op alone (a staged copy)
  struct kept_request {
    int comm, n;
    void* request;
  };
  std::vector<kept_request> unpack_requests; // UNPACK receives until consumed
};

struct registration_slot {
  bool live = false;
  char* data = nullptr;
  size_t size = 0;
  int type = NCCL_PTR_HOST;
  bool staged = false; // nothing registered: travels through bounce slots
  size_t windows = 0;
  std::vector<void*> handles; // [comm * windows + window]
};

enum class direction { send, recv };

struct channel_state : std::enable_shared_from_this<channel_state> {
  std::shared_ptr<plugin> net;
  std::vector<int> devs; // comm c is on devs[c % devs.size()]
  int max_recvs = 1;     // the smallest maxRecvs of `devs`
  direction dir = direction::send;
  channel_options options;
  bool unpack = false;
  bool stage_cuda = false; // the plugin lacks NCCL_PTR_CUDA
  staging_ring staging;    // empty until the first staged registration
  std::vector<comm_slot> comms;
  std::vector<op_slot> ops;
  std::vector<uint32_t> free_ops;
  fifo<uint32_t> finished;
  std::vector<registration_slot> regs;
  std::vector<int> free_regs;
  uint64_t next_comm = 0;
  uint64_t generation = 0;
  size_t in_flight = 0;
  // options.caller_polls: each comm's wait descriptor (plugin::wait_fd), or
  // none when a comm has none (tell_caller_polls).
  std::vector<int> wait_fds;

  channel_state(std::shared_ptr<plugin> plugin_, std::vector<int> devs_,
                direction dir_, channel_options options_);
  int dev_of(size_t c) const { return devs[c % devs.size()]; }
  ~channel_state();

  const char* dir_name() const;
  std::string where(size_t c) const;
  // Registrations: one plugin handle per comm (and per 1 GiB window above
  // INT_MAX bytes).
  registration register_memory(void* data, size_t bytes, int type);
  int take_registration_slot(void* data, size_t bytes, int type, bool staged);
  registration handle_of(int slot);
  void deregister(int slot);
  const registration_slot& checked_registration(const registration& mr,
                                                const void* data, size_t bytes,
                                                const char* call);
  void describe_buffer(chunk& ch, int k, const registration_slot& reg,
                       size_t comm, char* at) const;
  void* handle_for(const registration_slot& reg, size_t comm,
                   const char* at) const;

  // Posting: ops split into chunks, dealt round-robin over the comms.
  uint32_t allocate_op(size_t chunks);
  size_t take_comm();
  void check_open(const char* call) const;
  op_id post_contiguous(char* data, size_t bytes, const registration& mr,
                        int tag, const char* call);
  template<class Buffer>
  op_id post_group(const Buffer* buffers, int count, const char* call);
  static size_t byte_count(const send_channel::send_buffer& b);
  static size_t byte_count(const recv_channel::recv_buffer& b);

  // Progress: posting in order, testing, completing and failing.
  void finish_chunk(size_t c, const chunk& ch, size_t bytes);
  void fail_chunk(const comm_slot& comm, const chunk& ch);
  void fail_op(uint32_t slot, std::string why);
  void fail_comm(size_t c, std::string why);
  void pump(size_t c);
  void pump_all();
  void test_outstanding(size_t c);
  size_t poll(completion_fn on_done, void* context);
  void release_op(uint32_t slot);
  void irecv_consumed(op_id id);

  // Staging (channel_staging.cpp): CUDA memory on a plugin without
  // NCCL_PTR_CUDA travels through bounce slots of the staging ring.
  std::string staging_context() const;
  registration register_staged(void* data, size_t bytes);
  void open_staging(const void* device_memory);
  void deregister_staging();
  void free_staging() noexcept;
  std::string staging_failure(size_t c, const char* what,
                              const std::exception& e) const;
  static int staged_buffers(const chunk& ch);
  bool prepare(size_t c);
  bool take_slot(size_t c, chunk& ch, int k);
  bool copies_done(chunk& ch);
  void release_slots(size_t c, chunk& ch);
  void start_unstaging(size_t c, chunk& ch);
  void finish_unstaged(size_t c);
};

// The devices of one channel, checked: at least one, each usable
// (plugin::usable_device), and alike in what a channel treats as one thing
// for all its comms (ptrSupport's CUDA bit, HOST or UNPACK). Throws
// transport_error naming the peer and the devices.
std::vector<int> check_devices(const plugin& net, std::vector<int> devs,
                               const std::string& peer);

// options.caller_polls: tells the plugin so for every comm of `state`
// (plugin::set_caller_polls) and keeps their wait descriptors. The state
// owns the comms: a refusal throws, and the state closes them.
void tell_caller_polls(channel_state& state);

// A channel's state over `comm_count` comms, options checked (channel.cpp).
std::shared_ptr<channel_state> make_state(std::shared_ptr<plugin> net,
                                          std::vector<int> devs, direction dir,
                                          channel_options options,
                                          size_t comm_count);

} // namespace kvferry::transport::detail
