// Channels of plugin comms with a completion-based post/poll API. See
// channel.hpp for the contract; this file keeps steady-state operation free
// of allocation: op slots, chunk FIFOs and request lists are reused and only
// grow when a caller goes past their high-water mark.
#include "kvferry/transport/channel.hpp"

#include <cstring>
#include <thread>

#include <climits>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace kvferry::transport {
namespace detail {
namespace {

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

} // namespace

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
  int dev = 0;
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

  channel_state(std::shared_ptr<plugin> plugin_, int dev_, direction dir_,
                channel_options options_)
      : net(std::move(plugin_)), dev(dev_), dir(dir_),
        options(std::move(options_)) {
    unpack = dir == direction::recv && net->device(dev).is_unpack();
    stage_cuda = !net->device(dev).supports_cuda();
    ops.resize(std::max<size_t>(options.initial_ops, 1));
    for (size_t i = ops.size(); i-- > 0;)
      free_ops.push_back(static_cast<uint32_t>(i));
    finished.reserve(ops.size());
  }

  ~channel_state() {
    if (in_flight)
      spdlog::warn("plugin {}: closing the {} channel to {} with {} operations "
                   "in flight",
                   net->name(), dir_name(), options.peer, in_flight);
    for (size_t r = 0; r < regs.size(); ++r)
      if (regs[r].live) {
        spdlog::warn("plugin {}: {} channel to {} closed before a registration "
                     "of {} bytes; "
                     "deregistering it now",
                     net->name(), dir_name(), options.peer, regs[r].size);
        deregister(static_cast<int>(r));
      }
    deregister_staging();
    auto& table = net->net();
    for (size_t c = 0; c < comms.size(); ++c) {
      if (!comms[c].comm)
        continue;
      auto rc = dir == direction::send ? table.closeSend(comms[c].comm)
                                       : table.closeRecv(comms[c].comm);
      if (rc != ncclSuccess)
        spdlog::warn("plugin {}: {}({}) failed: {}", net->name(),
                     dir == direction::send ? "closeSend" : "closeRecv",
                     where(c), result_name(rc));
    }
    // Only now: the plugin may write into bounce slots until its comm closed.
    free_staging();
  }

  const char* dir_name() const {
    return dir == direction::send ? "send" : "recv";
  }
  std::string where(size_t c) const {
    return fmt::format("comm {} to {}", c, options.peer);
  }

  // ---- registrations --------------------------------------------------------

  registration register_memory(void* data, size_t bytes, int type) {
    if (!data || bytes == 0)
      throw transport_error(
          fmt::format("plugin {}: register_memory on the channel to {}: "
                      "empty buffer ({} bytes at {})",
                      net->name(), options.peer, bytes, data));
    if (type == NCCL_PTR_CUDA && stage_cuda)
      return register_staged(data, bytes);
    int slot = take_registration_slot(data, bytes, type, false);
    auto& reg = regs[slot];
    reg.windows = bytes <= size_t(INT_MAX) ? 1 : 0;
    if (!reg.windows)
      for (size_t start = 0;; start += window_step) {
        ++reg.windows;
        if (start + window_bytes >= bytes)
          break;
      }
    reg.handles.assign(comms.size() * reg.windows, nullptr);
    auto& table = net->net();
    for (size_t c = 0; c < comms.size(); ++c)
      for (size_t w = 0; w < reg.windows; ++w) {
        size_t start = reg.windows == 1 ? 0 : w * window_step;
        size_t len =
            reg.windows == 1 ? bytes : std::min(window_bytes, bytes - start);
        auto rc =
            table.regMr(comms[c].comm, reg.data + start, static_cast<int>(len),
                        type, &reg.handles[c * reg.windows + w]);
        if (rc != ncclSuccess) {
          reg.live = true;
          deregister(slot);
          throw plugin_error(
              net->name(), "regMr", rc,
              fmt::format("{}, {} bytes at {}, type {}", where(c), len,
                          static_cast<void*>(reg.data + start), type));
        }
      }
    reg.live = true;
    return handle_of(slot);
  }

  // A free slot (reused or new) describing `bytes` at `data`; the caller
  // adds the plugin handles and marks it live.
  int take_registration_slot(void* data, size_t bytes, int type, bool staged) {
    int slot;
    if (free_regs.empty()) {
      regs.emplace_back();
      slot = static_cast<int>(regs.size() - 1);
    } else {
      slot = free_regs.back();
      free_regs.pop_back();
    }
    auto& reg = regs[slot];
    reg.data = static_cast<char*>(data);
    reg.size = bytes;
    reg.type = type;
    reg.staged = staged;
    return slot;
  }

  registration handle_of(int slot) {
    auto& reg = regs[slot];
    registration out;
    out.state_ = weak_from_this();
    out.slot_ = slot;
    out.data_ = reg.data;
    out.size_ = reg.size;
    out.type_ = reg.type;
    out.staged_ = reg.staged;
    return out;
  }

  // ---- staging (CUDA memory on a plugin without NCCL_PTR_CUDA)

  std::string staging_context() const {
    return fmt::format("plugin {}: staging CUDA memory on the {} channel to {}",
                       net->name(), dir_name(), options.peer);
  }

  registration register_staged(void* data, size_t bytes) {
    if (unpack)
      throw transport_error(
          fmt::format("{}: an UNPACK receiver can't stage (its unpack kernel "
                      "writes the destination); "
                      "this plugin must declare NCCL_PTR_CUDA",
                      staging_context()));
    if (options.staging_slots == 0)
      throw transport_error(
          fmt::format("{}: the plugin lacks NCCL_PTR_CUDA and staging is "
                      "off (channel_options::staging_slots is 0)",
                      staging_context()));
    if (!staging.memory)
      open_staging(data);
    int slot = take_registration_slot(data, bytes, NCCL_PTR_CUDA, true);
    auto& reg = regs[slot];
    reg.windows = 0;
    reg.handles.clear();
    reg.live = true;
    return handle_of(slot);
  }

  // Once per channel: the copier, comms x staging_slots bounce slots of
  // chunk_bytes, each registered as host memory on its comm.
  void open_staging(const void* device_memory) {
    const int per_comm = options.staging_slots;
    const int total = per_comm * static_cast<int>(comms.size());
    staging.slot_bytes = options.chunk_bytes;
    try {
      staging.copier = options.staging_copier ? options.staging_copier()
                                              : make_cuda_staging_copier();
      staging.copier->open(total, device_memory);
      staging.memory = static_cast<char*>(staging.copier->allocate_host(
          static_cast<size_t>(total) * staging.slot_bytes));
    } catch (const std::exception& e) {
      free_staging();
      throw transport_error(
          fmt::format("{}: setting up {} bounce slots of {} bytes: {}",
                      staging_context(), total, staging.slot_bytes, e.what()));
    }
    staging.mhandles.assign(static_cast<size_t>(total), nullptr);
    auto& table = net->net();
    for (int slot = 0; slot < total; ++slot) {
      size_t c = static_cast<size_t>(slot / per_comm);
      auto rc = table.regMr(comms[c].comm, staging.slot_memory(slot),
                            static_cast<int>(staging.slot_bytes), NCCL_PTR_HOST,
                            &staging.mhandles[static_cast<size_t>(slot)]);
      if (rc != ncclSuccess) {
        deregister_staging();
        free_staging();
        throw plugin_error(
            net->name(), "regMr", rc,
            fmt::format("{}, bounce slot {} ({} bytes of pinned memory)",
                        where(c), slot, staging.slot_bytes));
      }
    }
    for (size_t c = 0; c < comms.size(); ++c) {
      auto& free = comms[c].free_slots;
      free.clear();
      for (int i = per_comm; i-- > 0;)
        free.push_back(static_cast<int>(c) * per_comm + i);
      comms[c].unstaging.reserve(
          static_cast<size_t>(per_comm)); // one slot each at least
    }
    spdlog::info("plugin {} lacks NCCL_PTR_CUDA: the {} channel to {} stages "
                 "CUDA memory "
                 "through {} pinned bounce slots of {} bytes",
                 net->name(), dir_name(), options.peer, total,
                 staging.slot_bytes);
  }

  void deregister_staging() {
    if (staging.mhandles.empty())
      return;
    auto& table = net->net();
    const size_t per_comm = static_cast<size_t>(options.staging_slots);
    for (size_t slot = 0; slot < staging.mhandles.size(); ++slot) {
      if (!staging.mhandles[slot])
        continue;
      size_t c = slot / per_comm;
      if (auto rc = table.deregMr(comms[c].comm, staging.mhandles[slot]);
          rc != ncclSuccess)
        spdlog::warn("plugin {}: deregMr({}, bounce slot {}) failed: {}",
                     net->name(), where(c), slot, result_name(rc));
    }
    staging.mhandles.clear();
  }

  // Waits for copies still in flight, then frees the bounce memory.
  void free_staging() noexcept {
    if (!staging.copier)
      return;
    staging.copier->wait_all();
    if (staging.memory)
      staging.copier->free_host(staging.memory);
    staging.memory = nullptr;
    staging.copier.reset();
  }

  void deregister(int slot) {
    auto& reg = regs[slot];
    if (!reg.live)
      return;
    auto& table = net->net();
    for (size_t c = 0; c < comms.size(); ++c)
      for (size_t w = 0; w < reg.windows; ++w) {
        void* handle = reg.handles[c * reg.windows + w];
        if (!handle)
          continue;
        if (auto rc = table.deregMr(comms[c].comm, handle); rc != ncclSuccess)
          spdlog::warn("plugin {}: deregMr({}) failed: {}", net->name(),
                       where(c), result_name(rc));
      }
    reg.live = false;
    free_regs.push_back(slot);
  }

  const registration_slot& checked_registration(const registration& mr,
                                                const void* data, size_t bytes,
                                                const char* call) {
    auto owner = mr.state_.lock();
    if (owner.get() != this || mr.slot_ < 0 || !regs[mr.slot_].live)
      throw transport_error(
          fmt::format("plugin {}: {} on the channel to {}: the registration "
                      "is not one of this channel's",
                      net->name(), call, options.peer));
    auto& reg = regs[mr.slot_];
    auto* begin = static_cast<const char*>(data);
    if (begin < reg.data || begin + bytes > reg.data + reg.size)
      throw transport_error(
          fmt::format("plugin {}: {} on the channel to {}: {} bytes at {} lie "
                      "outside the registered {} "
                      "bytes at {}",
                      net->name(), call, options.peer, bytes, data, reg.size,
                      static_cast<void*>(reg.data)));
    return reg;
  }

  // Buffer k of a chunk: the caller's memory, or (staged) a bounce slot
  // that prepare() assigns later.
  void describe_buffer(chunk& ch, int k, const registration_slot& reg,
                       size_t comm, char* at) const {
    if (reg.staged) {
      ch.staged = true;
      ch.user_data[k] = at;
      ch.data[k] = nullptr;
      ch.mhandles[k] = nullptr;
      return;
    }
    ch.data[k] = at;
    ch.mhandles[k] = handle_for(reg, comm, at);
    ch.cuda = ch.cuda || (dir == direction::recv && reg.type == NCCL_PTR_CUDA);
  }

  void* handle_for(const registration_slot& reg, size_t comm,
                   const char* at) const {
    size_t window = 0;
    if (reg.windows > 1)
      window = std::min<size_t>(
          static_cast<size_t>(at - reg.data) / window_step, reg.windows - 1);
    return reg.handles[comm * reg.windows + window];
  }

  // ---- ops

  uint32_t allocate_op(size_t chunks) {
    if (free_ops.empty()) {
      size_t old = ops.size();
      ops.resize(old * 2);
      for (size_t i = ops.size(); i-- > old;)
        free_ops.push_back(static_cast<uint32_t>(i));
      finished.reserve(ops.size());
    }
    uint32_t slot = free_ops.back();
    free_ops.pop_back();
    auto& op = ops[slot];
    op.id = (++generation << 32) | slot;
    op.in_use = true;
    op.failed = false;
    op.chunks_left = chunks;
    op.bytes = 0;
    op.error = nullptr;
    op.unpack_requests.clear();
    ++in_flight;
    return slot;
  }

  size_t take_comm() { return static_cast<size_t>(next_comm++ % comms.size()); }

  void check_open(const char* call) const {
    if (comms.empty())
      throw transport_error(
          fmt::format("{}: the channel was moved from or never made", call));
  }

  op_id post_contiguous(char* data, size_t bytes, const registration& mr,
                        int tag, const char* call) {
    check_open(call);
    auto& reg = checked_registration(mr, data, bytes, call);
    size_t step = options.chunk_bytes;
    size_t count = bytes == 0 ? 1 : (bytes + step - 1) / step;
    uint32_t slot = allocate_op(count);
    for (size_t i = 0; i < count; ++i) {
      size_t offset = i * step;
      size_t len = std::min(step, bytes - offset);
      size_t c = take_comm();
      chunk ch;
      ch.op = slot;
      ch.sizes[0] = static_cast<int>(len);
      ch.tags[0] = tag;
      describe_buffer(ch, 0, reg, c, data + offset);
      comms[c].waiting.push(ch);
    }
    pump_all();
    return ops[slot].id;
  }

  template<class Buffer>
  op_id post_group(const Buffer* buffers, int count, const char* call) {
    check_open(call);
    int limit = std::min(max_group, std::max(1, net->device(dev).max_recvs));
    if (count < 1 || count > limit)
      throw transport_error(
          fmt::format("plugin {}: {} on the channel to {}: {} buffers, "
                      "this device groups 1 to {}",
                      net->name(), call, options.peer, count, limit));
    // Check every buffer before anything is queued: a bad one posts nothing.
    int staged_buffers = 0;
    for (int i = 0; i < count; ++i) {
      auto& b = buffers[i];
      size_t bytes = byte_count(b);
      if (!b.mr || bytes > options.chunk_bytes)
        throw transport_error(fmt::format(
            "plugin {}: {} on the channel to {}: buffer {} has "
            "{} bytes (at most {}) or no registration",
            net->name(), call, options.peer, i, bytes, options.chunk_bytes));
      staged_buffers += checked_registration(*b.mr, b.data, bytes, call).staged;
    }
    // A grouped receive holds a bounce slot per staged buffer at once.
    if (dir == direction::recv && staged_buffers > options.staging_slots)
      throw transport_error(fmt::format(
          "{}: {}: {} staged buffers in one group, but a comm "
          "has only {} bounce slots (staging_slots)",
          staging_context(), call, staged_buffers, options.staging_slots));
    size_t c = take_comm();
    bool send = dir == direction::send;
    uint32_t slot = allocate_op(send ? count : 1);
    chunk grouped;
    grouped.op = slot;
    grouped.n = count;
    for (int i = 0; i < count; ++i) {
      auto& b = buffers[i];
      size_t bytes = byte_count(b);
      auto* data = static_cast<char*>(
          const_cast<void*>(static_cast<const void*>(b.data)));
      auto& reg = regs[b.mr->slot_];
      if (send) {
        chunk ch;
        ch.op = slot;
        ch.sizes[0] = static_cast<int>(bytes);
        ch.tags[0] = b.tag;
        describe_buffer(ch, 0, reg, c, data);
        comms[c].waiting.push(ch);
      } else {
        grouped.sizes[i] = static_cast<int>(bytes);
        grouped.tags[i] = b.tag;
        describe_buffer(grouped, i, reg, c, data);
      }
    }
    if (!send)
      comms[c].waiting.push(grouped);
    pump_all();
    return ops[slot].id;
  }
  static size_t byte_count(const send_channel::send_buffer& b) {
    return b.bytes;
  }
  static size_t byte_count(const recv_channel::recv_buffer& b) {
    return b.capacity;
  }

  // ---- progress

  void finish_chunk(size_t c, const chunk& ch, size_t bytes) {
    auto& op = ops[ch.op];
    op.bytes += bytes;
    if (unpack)
      op.unpack_requests.push_back({static_cast<int>(c), ch.n, ch.request});
    if (--op.chunks_left == 0)
      finished.push(ch.op);
  }

  void fail_chunk(const comm_slot& comm, const chunk& ch) {
    auto& op = ops[ch.op];
    op.failed = true;
    if (!op.error)
      op.error = comm.failure.c_str();
    if (--op.chunks_left == 0)
      finished.push(ch.op);
  }

  // One operation failed on its own (a host-to-device copy): the comm and
  // its matching are intact. The first error wins.
  void fail_op(uint32_t slot, std::string why) {
    auto& op = ops[slot];
    op.failed = true;
    if (op.error)
      return;
    op.own_error = std::move(why);
    op.error = op.own_error.c_str();
    spdlog::error("{}", op.own_error);
  }

  void fail_comm(size_t c, std::string why) {
    auto& comm = comms[c];
    if (comm.failure.empty()) {
      comm.failure = std::move(why);
      spdlog::error("{}", comm.failure);
    }
    // Bounce slots of these chunks are never reused: the plugin may still
    // write into a receive's slot, a copy may still read a send's. Chunks in
    // `unstaging` finish on their own (their copies don't need the comm).
    for (auto& ch : comm.out)
      fail_chunk(comm, ch);
    comm.out.clear();
    while (!comm.waiting.empty()) {
      fail_chunk(comm, comm.waiting.front());
      comm.waiting.pop();
    }
    comm.prepared = 0;
  }

  std::string staging_failure(size_t c, const char* what,
                              const std::exception& e) const {
    return fmt::format("{}, comm {}: {}: {}", staging_context(), c, what,
                       e.what());
  }

  static int staged_buffers(const chunk& ch) {
    int count = 0;
    for (int k = 0; k < ch.n; ++k)
      count += ch.user_data[k] != nullptr;
    return count;
  }

  // Gives the chunks at the head of comm c's FIFO their bounce slots, in
  // posting order, and starts the device-to-host copies of staged sends. A
  // chunk that finds too few free slots stops it: nothing overtakes it.
  // False when the comm failed.
  bool prepare(size_t c) {
    auto& comm = comms[c];
    while (comm.prepared < comm.waiting.size()) {
      chunk& ch = comm.waiting.at(comm.prepared);
      if (ch.staged) {
        if (comm.free_slots.size() < static_cast<size_t>(staged_buffers(ch)))
          return true;
        for (int k = 0; k < ch.n; ++k)
          if (ch.user_data[k] && !take_slot(c, ch, k))
            return false;
      }
      ++comm.prepared;
    }
    return true;
  }

  bool take_slot(size_t c, chunk& ch, int k) {
    auto& comm = comms[c];
    int slot = comm.free_slots.back();
    comm.free_slots.pop_back();
    ch.staged_slot[k] = slot;
    ch.data[k] = staging.slot_memory(slot);
    ch.mhandles[k] = staging.mhandles[static_cast<size_t>(slot)];
    if (dir == direction::recv || ch.sizes[k] == 0)
      return true;
    try {
      staging.copier->start(slot, ch.data[k], ch.user_data[k],
                            static_cast<size_t>(ch.sizes[k]));
    } catch (const std::exception& e) {
      // Skipping this chunk would shift the peer's matching: the comm fails.
      fail_comm(c, staging_failure(c, "device-to-host copy of a send", e));
      return false;
    }
    ch.copying |= 1u << k;
    return true;
  }

  // Polls the copies of `ch` still in flight; true once none is left. A
  // failed copy throws (the caller decides what fails).
  bool copies_done(chunk& ch) {
    for (int k = 0; k < ch.n; ++k)
      if ((ch.copying & (1u << k)) && staging.copier->done(ch.staged_slot[k]))
        ch.copying &= ~(1u << k);
    return ch.copying == 0;
  }

  void release_slots(size_t c, chunk& ch) {
    for (int k = 0; k < ch.n; ++k)
      if (ch.staged_slot[k] >= 0) {
        comms[c].free_slots.push_back(ch.staged_slot[k]);
        ch.staged_slot[k] = -1;
      }
  }

  // A staged receive landed in its bounce slots: copy each buffer to the
  // caller's memory; the chunk finishes once the copies did.
  void start_unstaging(size_t c, chunk& ch) {
    for (int k = 0; k < ch.n; ++k) {
      if (ch.staged_slot[k] < 0 || ch.sizes[k] <= 0)
        continue;
      try {
        staging.copier->start(ch.staged_slot[k], ch.user_data[k], ch.data[k],
                              static_cast<size_t>(ch.sizes[k]));
        ch.copying |= 1u << k;
      } catch (const std::exception& e) {
        fail_op(ch.op,
                staging_failure(c, "host-to-device copy of a receive", e));
      }
    }
    if (ch.copying) {
      comms[c].unstaging.push_back(ch);
    } else {
      release_slots(c, ch);
      finish_chunk(c, ch, ch.received);
    }
  }

  void finish_unstaged(size_t c) {
    auto& list = comms[c].unstaging;
    for (size_t i = 0; i < list.size();) {
      chunk& ch = list[i];
      try {
        if (!copies_done(ch)) {
          ++i;
          continue;
        }
      } catch (const std::exception& e) {
        fail_op(ch.op,
                staging_failure(c, "host-to-device copy of a receive", e));
        ch.copying = 0; // a failed copy is over; CUDA errors are sticky anyway
      }
      release_slots(c, ch);
      finish_chunk(c, ch, ch.received);
      list.erase(list.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }

  // Posts waiting chunks in order until the plugin says "not now" (NULL
  // request) or max_inflight requests are out.
  void pump(size_t c) {
    auto& comm = comms[c];
    if (!comm.failure.empty())
      return fail_comm(c, comm.failure);
    if (!prepare(c))
      return;
    auto& table = net->net();
    while (comm.prepared > 0 &&
           comm.out.size() < static_cast<size_t>(options.max_inflight)) {
      chunk& ch = comm.waiting.front();
      try {
        if (!copies_done(ch))
          return; // a staged send's bytes aren't in its slot yet
      } catch (const std::exception& e) {
        return fail_comm(
            c, staging_failure(c, "device-to-host copy of a send", e));
      }
      ch.request = nullptr;
      ncclResult_t rc;
      if (dir == direction::send)
        rc = table.isend(comm.comm, ch.data[0], ch.sizes[0], ch.tags[0],
                         ch.mhandles[0], &ch.request);
      else
        rc = table.irecv(comm.comm, ch.n, ch.data, ch.sizes, ch.tags,
                         ch.mhandles, &ch.request);
      if (rc != ncclSuccess)
        return fail_comm(
            c, plugin_error(net->name(),
                            dir == direction::send ? "isend" : "irecv", rc,
                            where(c))
                   .what());
      if (!ch.request)
        return; // flow control: try again from the next poll
      comm.out.push_back(ch);
      comm.waiting.pop();
      --comm.prepared;
    }
  }

  void pump_all() {
    for (size_t c = 0; c < comms.size(); ++c)
      pump(c);
  }

  void test_outstanding(size_t c) {
    auto& comm = comms[c];
    auto& table = net->net();
    for (size_t i = 0; i < comm.out.size();) {
      chunk& ch = comm.out[i];
      int done = 0;
      int sizes[max_group] = {};
      auto rc = table.test(ch.request, &done, sizes);
      if (rc != ncclSuccess)
        return fail_comm(c, plugin_error(net->name(),
                                         ch.flushing ? "test(iflush)" : "test",
                                         rc, where(c))
                                .what());
      if (!done) {
        ++i;
        continue;
      }
      if (ch.flushing) {
        // the flush is done; ch.received was counted when the receive finished
      } else if (dir == direction::send) {
        ch.received = static_cast<size_t>(ch.sizes[0]);
      } else {
        ch.received = 0;
        for (int k = 0; k < ch.n; ++k) {
          ch.received += static_cast<size_t>(std::max(0, sizes[k]));
          ch.sizes[k] = sizes[k];
        }
        if (ch.cuda && ch.received > 0 && table.iflush) {
          void* flush = nullptr;
          rc = table.iflush(comm.comm, ch.n, ch.data, ch.sizes, ch.mhandles,
                            &flush);
          if (rc != ncclSuccess)
            return fail_comm(
                c, plugin_error(net->name(), "iflush", rc, where(c)).what());
          if (flush) {
            ch.flushing = true;
            ch.request = flush;
            ++i;
            continue;
          }
        }
      }
      if (ch.staged && dir == direction::recv) {
        start_unstaging(c, ch);
      } else {
        release_slots(c, ch);
        finish_chunk(c, ch, ch.received);
      }
      comm.out.erase(comm.out.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }

  size_t poll(completion_fn on_done, void* context) {
    for (size_t c = 0; c < comms.size(); ++c) {
      test_outstanding(c);
      if (staging.copier)
        finish_unstaged(c);
      pump(c);
    }
    size_t reported = 0;
    while (!finished.empty()) {
      uint32_t slot = finished.front();
      finished.pop();
      auto& op = ops[slot];
      completion done{op.id, !op.failed, op.bytes, op.error};
      --in_flight;
      if (!unpack || op.failed)
        release_op(slot);
      ++reported;
      on_done(context, done);
    }
    return reported;
  }

  void release_op(uint32_t slot) {
    ops[slot].in_use = false;
    free_ops.push_back(slot);
  }

  void irecv_consumed(op_id id) {
    if (!unpack)
      return;
    uint32_t slot = static_cast<uint32_t>(id & 0xffffffffu);
    if (slot >= ops.size() || !ops[slot].in_use || ops[slot].id != id)
      throw transport_error(
          fmt::format("plugin {}: irecv_consumed on the channel to {}: op {} "
                      "is not a finished receive waiting to be consumed",
                      net->name(), options.peer, id));
    auto& table = net->net();
    for (auto& kept : ops[slot].unpack_requests)
      if (table.irecvConsumed) {
        auto rc =
            table.irecvConsumed(comms[kept.comm].comm, kept.n, kept.request);
        if (rc != ncclSuccess)
          throw plugin_error(net->name(), "irecvConsumed", rc,
                             where(kept.comm));
      }
    release_op(slot);
  }
};

std::shared_ptr<channel_state> make_state(std::shared_ptr<plugin> net, int dev,
                                          direction dir,
                                          channel_options options,
                                          size_t comm_count) {
  if (!net)
    throw transport_error("channel: no plugin given");
  net->device(dev); // throws for a bad index
  if (options.chunk_bytes == 0 || options.chunk_bytes > max_chunk_bytes)
    throw transport_error(
        fmt::format("channel to {}: chunk_bytes {} outside 1..{}", options.peer,
                    options.chunk_bytes, max_chunk_bytes));
  if (options.max_inflight < 1)
    throw transport_error(
        fmt::format("channel to {}: max_inflight must be >= 1", options.peer));
  if (options.staging_slots < 0 || options.staging_slots > max_staging_slots)
    throw transport_error(
        fmt::format("channel to {}: staging_slots {} outside 0..{}",
                    options.peer, options.staging_slots, max_staging_slots));
  options.comms = static_cast<int>(comm_count);
  auto state = std::make_shared<channel_state>(std::move(net), dev, dir,
                                               std::move(options));
  state->comms.resize(comm_count);
  for (auto& comm : state->comms)
    comm.out.reserve(state->options.max_inflight);
  return state;
}

// Drives a non-blocking step function until it reports completion or the
// deadline passes; backs off from spinning to 1 ms sleeps.
template<class Step>
bool drive_until(std::chrono::milliseconds timeout, Step&& step) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (int round = 0;; ++round) {
    if (step())
      return true;
    if (std::chrono::steady_clock::now() >= deadline)
      return false;
    if (round > 100)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    else
      std::this_thread::yield();
  }
}

} // namespace detail

// ---- registration

registration::registration(registration&& other) noexcept {
  *this = std::move(other);
}

registration& registration::operator=(registration&& other) noexcept {
  if (this != &other) {
    reset();
    state_ = std::move(other.state_);
    slot_ = std::exchange(other.slot_, -1);
    data_ = other.data_;
    size_ = other.size_;
    type_ = other.type_;
    staged_ = other.staged_;
  }
  return *this;
}

registration::~registration() {
  reset();
}

void registration::reset() noexcept {
  if (slot_ >= 0)
    if (auto state = state_.lock())
      state->deregister(slot_);
  slot_ = -1;
  state_.reset();
}

// ---- channel

channel::channel(std::shared_ptr<detail::channel_state> state)
    : state_(std::move(state)) {
}
channel::channel(channel&&) noexcept = default;
channel& channel::operator=(channel&&) noexcept = default;
channel::~channel() = default;

registration channel::register_memory(void* data, size_t bytes, int type) {
  state_->check_open("register_memory");
  return state_->register_memory(data, bytes, type);
}

size_t channel::poll_raw(detail::completion_fn on_done, void* context) {
  if (!state_)
    return 0;
  return state_->poll(on_done, context);
}

bool channel::stages_cuda() const noexcept {
  return state_ && state_->stage_cuda;
}

size_t channel::staging_bytes() const noexcept {
  if (!state_ || !state_->staging.memory)
    return 0;
  return state_->staging.mhandles.size() * state_->staging.slot_bytes;
}

size_t channel::in_flight() const noexcept {
  return state_ ? state_->in_flight : 0;
}
int channel::comm_count() const noexcept {
  return state_ ? static_cast<int>(state_->comms.size()) : 0;
}
const channel_options& channel::options() const noexcept {
  return state_->options;
}
const std::shared_ptr<plugin>& channel::net() const noexcept {
  return state_->net;
}

op_id send_channel::post_send(const void* data, size_t bytes,
                              const registration& mr, int tag) {
  return state_->post_contiguous(static_cast<char*>(const_cast<void*>(data)),
                                 bytes, mr, tag, "post_send");
}

op_id send_channel::post_send_group(const send_buffer* buffers, int count) {
  return state_->post_group(buffers, count, "post_send_group");
}

op_id recv_channel::post_recv(void* data, size_t capacity,
                              const registration& mr, int tag) {
  return state_->post_contiguous(static_cast<char*>(data), capacity, mr, tag,
                                 "post_recv");
}

op_id recv_channel::post_recv_group(const recv_buffer* buffers, int count) {
  return state_->post_group(buffers, count, "post_recv_group");
}

ncclNetDeviceHandle_v7_t* recv_channel::device_handle(int comm) const noexcept {
  if (!state_ || comm < 0 || comm >= comm_count())
    return nullptr;
  return state_->comms[comm].device;
}

void recv_channel::irecv_consumed(op_id id) {
  state_->irecv_consumed(id);
}

// ---- listener (receiving side)

struct channel_listener::impl {
  std::shared_ptr<plugin> net;
  int dev;
  channel_options options;
  std::vector<net_handle> handles;
  std::vector<void*> listen_comms, recv_comms;
  std::vector<std::unique_ptr<ncclNetDeviceHandle_v7_t>> device_storage;
  std::vector<ncclNetDeviceHandle_v7_t*> device_ptrs;

  ~impl() {
    auto& table = net->net();
    for (auto* comm : recv_comms)
      if (comm)
        table.closeRecv(comm);
    close_listens();
  }
  void close_listens() {
    auto& table = net->net();
    for (auto*& comm : listen_comms)
      if (comm) {
        if (auto rc = table.closeListen(comm); rc != ncclSuccess)
          spdlog::warn("plugin {}: closeListen(peer {}) failed: {}",
                       net->name(), options.peer, result_name(rc));
        comm = nullptr;
      }
  }
};

channel_listener::channel_listener(std::shared_ptr<plugin> net, int dev,
                                   channel_options options)
    : impl_(std::make_unique<impl>()) {
  if (!net)
    throw transport_error("channel_listener: no plugin given");
  auto& props = net->device(dev);
  if (options.comms < 1)
    throw transport_error(
        fmt::format("channel to {}: comms must be >= 1", options.peer));
  impl_->net = net;
  impl_->dev = dev;
  impl_->options = options;
  size_t n = static_cast<size_t>(options.comms);
  impl_->handles.assign(n, net_handle{});
  impl_->listen_comms.assign(n, nullptr);
  impl_->recv_comms.assign(n, nullptr);
  for (size_t i = 0; i < n; ++i) {
    auto storage = std::make_unique<ncclNetDeviceHandle_v7_t>();
    storage->netDeviceType = props.device_type;
    storage->netDeviceVersion = props.device_version;
    impl_->device_ptrs.push_back(props.is_unpack() ? storage.get() : nullptr);
    impl_->device_storage.push_back(std::move(storage));
  }
  auto& table = net->net();
  for (size_t i = 0; i < n; ++i) {
    net->check(
        table.listen(dev, impl_->handles[i].data(), &impl_->listen_comms[i]),
        "listen", fmt::format("dev {}, comm {} for {}", dev, i, options.peer));
    if (!impl_->listen_comms[i])
      throw transport_error(
          fmt::format("plugin {}: listen(dev {}) returned success but no "
                      "listen comm",
                      net->name(), dev));
  }
}

channel_listener::~channel_listener() = default;
channel_listener::channel_listener(channel_listener&&) noexcept = default;

const std::vector<net_handle>& channel_listener::handles() const noexcept {
  return impl_->handles;
}

bool channel_listener::try_accept() {
  auto& table = impl_->net->net();
  bool all = true;
  for (size_t i = 0; i < impl_->recv_comms.size(); ++i) {
    if (impl_->recv_comms[i])
      continue;
    impl_->net->check(
        table.accept(impl_->listen_comms[i], &impl_->recv_comms[i],
                     &impl_->device_ptrs[i]),
        "accept", fmt::format("comm {} from {}", i, impl_->options.peer));
    all = all && impl_->recv_comms[i];
  }
  return all;
}

recv_channel channel_listener::take() {
  for (auto* comm : impl_->recv_comms)
    if (!comm)
      throw transport_error(
          fmt::format("channel from {}: take() before every comm was accepted",
                      impl_->options.peer));
  auto state =
      detail::make_state(impl_->net, impl_->dev, detail::direction::recv,
                         impl_->options, impl_->recv_comms.size());
  for (size_t i = 0; i < impl_->recv_comms.size(); ++i) {
    state->comms[i].comm = std::exchange(impl_->recv_comms[i], nullptr);
    state->comms[i].device = impl_->device_ptrs[i];
    state->comms[i].device_storage = std::move(impl_->device_storage[i]);
  }
  impl_->close_listens();
  return recv_channel(std::move(state));
}

recv_channel channel_listener::accept(std::chrono::milliseconds timeout) {
  if (!detail::drive_until(timeout, [&] { return try_accept(); })) {
    size_t pending = 0;
    for (auto* comm : impl_->recv_comms)
      pending += comm == nullptr;
    throw timeout_error(fmt::format(
        "plugin {}: accept from {} on dev {}: {} of {} comms not accepted "
        "within {:.1f} s",
        impl_->net->name(), impl_->options.peer, impl_->dev, pending,
        impl_->recv_comms.size(), timeout.count() / 1000.0));
  }
  return take();
}

// ---- connector (sending side)

struct channel_connector::impl {
  std::shared_ptr<plugin> net;
  int dev;
  channel_options options;
  std::vector<net_handle>
      handles; // the plugin may keep state in them between calls
  std::vector<void*> send_comms;

  ~impl() {
    for (auto* comm : send_comms)
      if (comm)
        net->net().closeSend(comm);
  }
};

channel_connector::channel_connector(std::shared_ptr<plugin> net, int dev,
                                     std::vector<net_handle> peer_handles,
                                     channel_options options)
    : impl_(std::make_unique<impl>()) {
  if (!net)
    throw transport_error("channel_connector: no plugin given");
  net->device(dev);
  if (peer_handles.empty())
    throw transport_error(fmt::format(
        "channel to {}: no peer handles to connect to", options.peer));
  impl_->net = std::move(net);
  impl_->dev = dev;
  impl_->options = std::move(options);
  impl_->handles = std::move(peer_handles);
  impl_->send_comms.assign(impl_->handles.size(), nullptr);
}

channel_connector::~channel_connector() = default;
channel_connector::channel_connector(channel_connector&&) noexcept = default;

bool channel_connector::try_connect() {
  auto& table = impl_->net->net();
  bool all = true;
  for (size_t i = 0; i < impl_->send_comms.size(); ++i) {
    if (impl_->send_comms[i])
      continue;
    ncclNetDeviceHandle_v7_t* device = nullptr;
    impl_->net->check(table.connect(impl_->dev, impl_->handles[i].data(),
                                    &impl_->send_comms[i], &device),
                      "connect",
                      fmt::format("comm {} to {}", i, impl_->options.peer));
    all = all && impl_->send_comms[i];
  }
  return all;
}

send_channel channel_connector::take() {
  for (auto* comm : impl_->send_comms)
    if (!comm)
      throw transport_error(
          fmt::format("channel to {}: take() before every comm connected",
                      impl_->options.peer));
  auto state =
      detail::make_state(impl_->net, impl_->dev, detail::direction::send,
                         impl_->options, impl_->send_comms.size());
  for (size_t i = 0; i < impl_->send_comms.size(); ++i)
    state->comms[i].comm = std::exchange(impl_->send_comms[i], nullptr);
  return send_channel(std::move(state));
}

send_channel channel_connector::connect(std::chrono::milliseconds timeout) {
  if (!detail::drive_until(timeout, [&] { return try_connect(); })) {
    size_t pending = 0;
    for (auto* comm : impl_->send_comms)
      pending += comm == nullptr;
    throw timeout_error(fmt::format(
        "plugin {}: connect to {} on dev {}: {} of {} comms not connected "
        "within {:.1f} s",
        impl_->net->name(), impl_->options.peer, impl_->dev, pending,
        impl_->send_comms.size(), timeout.count() / 1000.0));
  }
  return take();
}

} // namespace kvferry::transport
