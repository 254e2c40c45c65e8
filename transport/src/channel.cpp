// Channels of plugin comms with a completion-based post/poll API. See
// channel.hpp for the contract, channel_state.hpp for the state; this file
// keeps steady-state operation free of allocation: op slots, chunk FIFOs and
// request lists are reused and only grow when a caller goes past their
// high-water mark.
#include <cstring>

#include <climits>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "channel_state.hpp"

namespace kvferry::transport {
namespace detail {

channel_state::channel_state(std::shared_ptr<plugin> plugin_,
                             std::vector<int> devs_, direction dir_,
                             channel_options options_)
    : net(std::move(plugin_)), devs(std::move(devs_)), dir(dir_),
      options(std::move(options_)) {
  // check_devices made sure every device agrees on these.
  const auto& first = net->device(devs.front());
  unpack = dir == direction::recv && first.is_unpack();
  stage_cuda = !first.supports_cuda();
  max_recvs = first.max_recvs;
  for (int d : devs)
    max_recvs = std::min(max_recvs, net->device(d).max_recvs);
  ops.resize(std::max<size_t>(options.initial_ops, 1));
  for (size_t i = ops.size(); i-- > 0;)
    free_ops.push_back(static_cast<uint32_t>(i));
  finished.reserve(ops.size());
}

channel_state::~channel_state() {
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
                   dir == direction::send ? "closeSend" : "closeRecv", where(c),
                   result_name(rc));
  }
  // Only now: the plugin may write into bounce slots until its comm closed.
  free_staging();
}

const char* channel_state::dir_name() const {
  return dir == direction::send ? "send" : "recv";
}

std::string channel_state::where(size_t c) const {
  if (devs.size() == 1)
    return fmt::format("comm {} to {}", c, options.peer);
  return fmt::format("comm {} (dev {}) to {}", c, dev_of(c), options.peer);
}

registration channel_state::register_memory(void* data, size_t bytes,
                                            int type) {
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
int channel_state::take_registration_slot(void* data, size_t bytes, int type,
                                          bool staged) {
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

registration channel_state::handle_of(int slot) {
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

void channel_state::deregister(int slot) {
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
        spdlog::warn("plugin {}: deregMr({}) failed: {}", net->name(), where(c),
                     result_name(rc));
    }
  reg.live = false;
  free_regs.push_back(slot);
}

const registration_slot&
channel_state::checked_registration(const registration& mr, const void* data,
                                    size_t bytes, const char* call) {
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
void channel_state::describe_buffer(chunk& ch, int k,
                                    const registration_slot& reg, size_t comm,
                                    char* at) const {
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

void* channel_state::handle_for(const registration_slot& reg, size_t comm,
                                const char* at) const {
  size_t window = 0;
  if (reg.windows > 1)
    window = std::min<size_t>(static_cast<size_t>(at - reg.data) / window_step,
                              reg.windows - 1);
  return reg.handles[comm * reg.windows + window];
}

uint32_t channel_state::allocate_op(size_t chunks) {
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

size_t channel_state::take_comm() {
  return static_cast<size_t>(next_comm++ % comms.size());
}

void channel_state::check_open(const char* call) const {
  if (comms.empty())
    throw transport_error(
        fmt::format("{}: the channel was moved from or never made", call));
}

op_id channel_state::post_contiguous(char* data, size_t bytes,
                                     const registration& mr, int tag,
                                     const char* call) {
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
op_id channel_state::post_group(const Buffer* buffers, int count,
                                const char* call) {
  check_open(call);
  int limit = std::min(max_group, std::max(1, max_recvs));
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
    auto* data =
        static_cast<char*>(const_cast<void*>(static_cast<const void*>(b.data)));
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

size_t channel_state::byte_count(const send_channel::send_buffer& b) {
  return b.bytes;
}

size_t channel_state::byte_count(const recv_channel::recv_buffer& b) {
  return b.capacity;
}

void channel_state::finish_chunk(size_t c, const chunk& ch, size_t bytes) {
  auto& op = ops[ch.op];
  op.bytes += bytes;
  if (unpack)
    op.unpack_requests.push_back({static_cast<int>(c), ch.n, ch.request});
  if (--op.chunks_left == 0)
    finished.push(ch.op);
}

void channel_state::fail_chunk(const comm_slot& comm, const chunk& ch) {
  auto& op = ops[ch.op];
  op.failed = true;
  if (!op.error)
    op.error = comm.failure.c_str();
  if (--op.chunks_left == 0)
    finished.push(ch.op);
}

// One operation failed on its own (a host-to-device copy): the comm and
// its matching are intact. The first error wins.
void channel_state::fail_op(uint32_t slot, std::string why) {
  auto& op = ops[slot];
  op.failed = true;
  if (op.error)
    return;
  op.own_error = std::move(why);
  op.error = op.own_error.c_str();
  spdlog::error("{}", op.own_error);
}

void channel_state::fail_comm(size_t c, std::string why) {
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

// Posts waiting chunks in order until the plugin says "not now" (NULL
// request) or max_inflight requests are out.
void channel_state::pump(size_t c) {
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
      return fail_comm(c,
                       staging_failure(c, "device-to-host copy of a send", e));
    }
    ch.request = nullptr;
    ncclResult_t rc;
    if (dir == direction::send)
      rc = table.isend(comm.comm, ch.data[0], ch.sizes[0], ch.tags[0],
                       ch.mhandles[0], &ch.request);
    else
      rc = table.irecv(comm.comm, ch.n, ch.data, ch.sizes, ch.tags, ch.mhandles,
                       &ch.request);
    if (rc != ncclSuccess)
      return fail_comm(c,
                       plugin_error(net->name(),
                                    dir == direction::send ? "isend" : "irecv",
                                    rc, where(c))
                           .what());
    if (!ch.request)
      return; // flow control: try again from the next poll
    comm.out.push_back(ch);
    comm.waiting.pop();
    --comm.prepared;
  }
}

void channel_state::pump_all() {
  for (size_t c = 0; c < comms.size(); ++c)
    pump(c);
}

// Tests a comm's requests in posting order and stops at the first that is
// not done, as NCCL's proxy does: the plugin matches a comm's operations in
// that order, so a later one rarely finishes first (it is then reported a
// poll later), and a poll costs one test() per comm, not one per request
// out (each of kvsock's tests of an unfinished receive reads its socket).
void channel_state::test_outstanding(size_t c) {
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
    if (!done)
      return;
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

size_t channel_state::poll(completion_fn on_done, void* context) {
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

void channel_state::release_op(uint32_t slot) {
  ops[slot].in_use = false;
  free_ops.push_back(slot);
}

void channel_state::irecv_consumed(op_id id) {
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
        throw plugin_error(net->name(), "irecvConsumed", rc, where(kept.comm));
    }
  release_op(slot);
}

std::vector<int> check_devices(const plugin& net, std::vector<int> devs,
                               const std::string& peer) {
  if (devs.empty())
    throw transport_error(
        fmt::format("channel to {}: no plugin device given", peer));
  // Throws for a bad index or an unusable device.
  const auto& first = net.usable_device(devs.front());
  for (int d : devs) {
    const auto& dev = net.usable_device(d);
    if (dev.supports_cuda() != first.supports_cuda() ||
        dev.is_unpack() != first.is_unpack())
      throw transport_error(fmt::format(
          "plugin {}: channel to {} over devices {} and {}: they differ in "
          "ptrSupport (CUDA) or device type (HOST/UNPACK), which one channel "
          "treats alike; use devices of one kind",
          net.name(), peer, describe(first), describe(dev)));
  }
  return devs;
}

std::shared_ptr<channel_state> make_state(std::shared_ptr<plugin> net,
                                          std::vector<int> devs, direction dir,
                                          channel_options options,
                                          size_t comm_count) {
  if (!net)
    throw transport_error("channel: no plugin given");
  devs = check_devices(*net, std::move(devs), options.peer);
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
  auto state = std::make_shared<channel_state>(std::move(net), std::move(devs),
                                               dir, std::move(options));
  state->comms.resize(comm_count);
  for (auto& comm : state->comms)
    comm.out.reserve(state->options.max_inflight);
  return state;
}

void tell_caller_polls(channel_state& state) {
  if (!state.options.caller_polls)
    return;
  for (size_t c = 0; c < state.comms.size(); ++c) {
    state.net->set_caller_polls(state.comms[c].comm, state.where(c));
    if (int fd = state.net->wait_fd(state.comms[c].comm); fd >= 0)
      state.wait_fds.push_back(fd);
  }
  if (state.wait_fds.size() != state.comms.size())
    state.wait_fds.clear(); // all or nothing: the caller polls them all
}

} // namespace detail

// ---- registration -----------------------------------------------------------

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

// ---- channel ----------------------------------------------------------------

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
const std::vector<int>& channel::wait_fds() const noexcept {
  static const std::vector<int> none;
  return state_ ? state_->wait_fds : none;
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

} // namespace kvferry::transport
