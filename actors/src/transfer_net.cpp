// The transfer actor's plugin path (transfer_state.hpp): channels to peers
// on other hosts, or whenever CUDA IPC does not apply.
//
// Channels. A channel (transport/channel.hpp) is `comms_per_peer` comm pairs
// in one direction. The sender opens one lazily, the first time it sends to a
// peer: it asks the peer's transfer actor to listen (`open`), gets the 128-B
// listen handles back, and connects; both sides poll connect/accept from the
// progress loop, never blocking. Both ends name the channel by a hash of
// those handles (channel_id_of).
// Channels are cached per peer name and torn down when the peer dies (a
// down message), when the directory reports it left, when a transfer on
// them times out, or when the plugin fails a request on them. Whichever end
// drops a channel tells the other (tell_closed: `closed` with the channel's
// id), which drops its end at once: a plugin may not notice a peer's closed end
// until its next write, and a receiver paused past its lease (SIGSTOP)
// otherwise kept ends its senders had long dropped.
//
// Ordering. The plugin matches the k-th send with the k-th receive of a comm
// pair. The sender announces every transfer (its chunks, in posting order)
// to the receiver over the same CAF connection that carries every other
// message between the two actors; CAF keeps messages between two actors in
// order, so the receiver posts its receives in exactly the order the sender
// posts its sends. Announcements pile up per peer (peer_out::unannounced)
// and leave as one announce_batch when the flush message this actor sends
// itself comes up, i.e. after the orders already in its mailbox: at depth
// 16 one remote message announces many transfers instead of one each (a
// remote message's system calls and wake-ups cost more CPU than a 64 KiB
// transfer's bytes; issue #16). At depth 1 the flush is the next message.
// A transfer's sends are posted right after its batch left, as they were
// right after its own announcement before batching: the announcement's
// trip overlaps the posting (posted first, a burst's gathered write in
// kvsock would delay the announcement). Anything else this actor sends the
// peer's (`closed`) sends the pile first, so nothing overtakes an
// announcement or is overtaken by one. Offered pulls skip the announcement
// on a channel of their own (a pull lane, transfer_lane.cpp).
//
// Memory. One registration of each whole region of the table per channel,
// made when the channel opens (extent offsets are virtual: plan.hpp); a
// transfer in steady state registers and allocates nothing but its table
// entries. Bounds per channel: the wrapper's max_inflight requests per comm,
// plus the chunks callers posted faster than the plugin drains (bounded by the
// producer's and consumer's block pools). A GPU region goes to the plugin as
// NCCL_PTR_CUDA when the plugin takes it.
#include <cstring>
#include <exception>

#include <caf/all.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kvferry/actors/plan.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/transport/extent_lists.hpp"
#include "transfer_state.hpp"

namespace kvferry::transfer_detail {

using namespace std::chrono;
using transport::channel_options;

channel_options options_for(const transfer_state& st, const std::string& peer,
                            std::uint32_t comms, std::uint64_t chunk) {
  channel_options o;
  o.comms = static_cast<int>(comms);
  o.chunk_bytes = chunk;
  o.peer = peer;
  o.staging_slots = static_cast<int>(st.cfg.staging_slots);
  // Where this actor polls its comms itself (polls_itself: pull lanes, or a
  // plugin with wait descriptors), the progress loop is its idle policy
  // (transfer.cpp, schedule_caller_polls): a plugin that slept in test()
  // would hold the messages to this actor. Otherwise the plugin's own wait
  // (woken by its socket) stays: it noticed completions sooner than the
  // loop's delayed polls on the measured hosts (docs/embedding.md).
  o.caller_polls = polls_itself(st);
  return o;
}

// A channel's id, the same at both ends without a message saying it: FNV-1a
// of the listener's handles (their addresses and ports), which the receiver
// made and the sender got back from `open`. It tells a channel from the
// next one between the same two actors; 0 means "no channel".
std::uint64_t channel_id_of(const std::vector<char>& flat_handles) {
  std::uint64_t h = 14695981039346656037ull;
  for (char c : flat_handles) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h == 0 ? 1 : h;
}

namespace {

// ---- sending

void post_sends(self_ptr self, peer_out& p, std::uint64_t id,
                const std::vector<extent>& chunks) {
  auto& t = p.transfers[id];
  for (const auto& c : chunks) {
    const auto at = locate(c.src_offset); // checked by handle_send
    auto op =
        p.channel->post_send(region_data(self->state, at.region, at.offset),
                             c.length, p.regs[at.region]);
    self->state.op_nodes.emplace(p.ops, op) = id;
    ++t.ops_left;
  }
  t.posted = true;
  if (t.ops_left == 0)
    finish(t, self->state, false, p.ep.name);
}

// The announcement of transfer `id` (entry `t`) joins the peer's pile (sent
// at the next flush); a flush message goes to this actor's mailbox unless
// one is on its way.
proto::announcement& queue_announcement(self_ptr self, peer_out& p,
                                        std::uint64_t id,
                                        const transfer_entry& t,
                                        std::vector<extent> chunks) {
  auto& st = self->state;
  if (!st.announce_flush_scheduled) {
    st.announce_flush_scheduled = true;
    self->send(self, proto::announce_flush_atom::value);
  }
  auto& a = p.unannounced.announcements.emplace_back();
  a.transfer_id = id;
  a.sender = st.cfg.name;
  a.comms = st.cfg.comms_per_peer;
  a.chunks = std::move(chunks);
  a.answer_to = t.answer_to;
  return a;
}

// Announces (at the next flush), then posts (right after the flush). From
// here the transfer holds its place in the channel's order: `posted`, so
// that its deadline drops the channel rather than this transfer alone.
void start_send(self_ptr self, peer_out& p, std::uint64_t id,
                std::vector<extent> chunks) {
  auto& t = p.transfers[id];
  queue_announcement(self, p, id, t, chunks);
  t.posted = true;
  p.unposted.push_back({id, std::move(chunks)});
}

void open_channel(self_ptr self, const std::string& name) {
  auto& p = self->state.out[name];
  p.opening = true;
  auto& cfg = self->state.cfg;
  self->request(caf::actor_cast<transfer_actor>(p.ep.transfer),
                milliseconds(cfg.open_timeout_ms), proto::open_atom::value,
                cfg.name, cfg.comms_per_peer, cfg.chunk_bytes)
      .then(
          [self, name](std::vector<char>& flat) {
            auto i = self->state.out.find(name);
            if (i == self->state.out.end())
              return;
            i->second.channel_id = channel_id_of(flat);
            auto& cfg = self->state.cfg;
            std::vector<transport::net_handle> handles(flat.size() /
                                                       NCCL_NET_HANDLE_MAXSIZE);
            for (std::size_t k = 0; k < handles.size(); ++k)
              std::memcpy(handles[k].data(),
                          flat.data() + k * NCCL_NET_HANDLE_MAXSIZE,
                          NCCL_NET_HANDLE_MAXSIZE);
            try {
              i->second.connector = std::make_unique<channel_connector>(
                  cfg.net, cfg.devices, std::move(handles),
                  options_for(self->state, name, cfg.comms_per_peer,
                              cfg.chunk_bytes));
            } catch (const std::exception& e) {
              drop_peer_out(self, name,
                            make_error(ec::plugin_error,
                                       fmt::format("connect to '{}': {}", name,
                                                   e.what())));
              return;
            }
            i->second.connect_deadline =
                steady_clock::now() + milliseconds(cfg.open_timeout_ms);
            ensure_progress(self);
          },
          [self, name](caf::error& err) {
            drop_peer_out(self, name,
                          lost(name, fmt::format("opening a channel failed: {}",
                                                 render(err))));
          });
}

} // namespace

void send_announcements(self_ptr self, peer_out& p) {
  auto& batch = p.unannounced;
  if (batch.announcements.empty())
    return;
  ++self->state.stats.announce_batches;
  const auto size = batch.announcements.size();
  self->send(caf::actor_cast<transfer_actor>(p.ep.transfer),
             proto::announce_atom::value, std::move(batch));
  batch = proto::announce_batch{};
  batch.announcements.reserve(size); // one allocation for a batch as large
}

namespace {

// The sends of the transfers whose batch just left, in announced order;
// the progress loop (which may have stopped: nothing was posted) polls them.
// Throws what the plugin throws.
void post_announced(self_ptr self, peer_out& p) {
  if (p.unposted.empty())
    return;
  for (auto& w : p.unposted) {
    post_sends(self, p, w.id, w.chunks);
    // The order's own list, coalesced (start_plugin_send): back for reuse.
    transport::extent_lists::give(std::move(w.chunks));
  }
  p.unposted.clear();
  ensure_progress(self);
}

} // namespace

void on_announce_flush(self_ptr self) {
  self->state.announce_flush_scheduled = false;
  std::vector<std::pair<std::string, caf::error>> failed;
  for (auto& [name, p] : self->state.out) {
    try {
      send_announcements(self, p);
      post_announced(self, p);
    } catch (const std::exception& e) {
      failed.emplace_back(
          name, make_error(ec::plugin_error,
                           fmt::format("send to '{}': {}", name, e.what())));
    }
  }
  for (auto& [name, err] : failed)
    drop_peer_out(self, name, err);
}

void start_plugin_send(self_ptr self, const std::string& peer, peer_out& p,
                       std::uint64_t id, std::vector<extent> extents) {
  auto chunks = coalesce(std::move(extents)); // in place: no list of its own
  try {
    if (p.channel) {
      start_send(self, p, id, std::move(chunks));
    } else {
      p.waiting.push_back({id, std::move(chunks)});
      if (!p.opening)
        open_channel(self, peer);
    }
  } catch (const std::exception& e) {
    drop_peer_out(self, peer,
                  make_error(ec::plugin_error,
                             fmt::format("send to '{}': {}", peer, e.what())));
  }
}

// ---- receiving

namespace {

void post_recvs(self_ptr self, peer_in& p, const proto::announcement& a) {
  auto& st = self->state;
  auto& t = p.transfers[a.transfer_id];
  for (const auto& c : a.chunks) {
    const auto at = locate(c.dst_offset); // checked by handle_announce
    auto op = p.channel->post_recv(region_data(st, at.region, at.offset),
                                   c.length, p.regs[at.region]);
    st.op_nodes.emplace(p.ops, op) = a.transfer_id;
    ++t.ops_left;
  }
  t.posted = true;
  if (t.ops_left == 0)
    finish(t, st, true, a.sender);
}

// An announced transfer its receiver gave up (its caller was told, so its
// blocks may be in use again) before its receives were posted: its bytes
// come all the same, and the next receives posted on the channel would
// take them, so the channel goes (the sender fails, the pair opens a new
// one). True when `t` was given up.
bool refuse_given_up(self_ptr self, const std::string& sender,
                     std::uint64_t transfer_id, const transfer_entry& t) {
  if (!t.cancelled && !t.failure)
    return false;
  drop_peer_in(
      self, sender,
      make_error(ec::timeout, fmt::format("transfer {} from '{}' arrived after "
                                          "the receiver gave up on it",
                                          transfer_id, sender)));
  self->state.in[sender].transfers.erase(transfer_id);
  return true;
}

void handle_announce(self_ptr self, proto::announcement& a) {
  auto& st = self->state;
  auto& p = st.in[a.sender];
  auto& t = st.entry_nodes.emplace(p.transfers, a.transfer_id);
  if (refuse_given_up(self, a.sender, a.transfer_id, t))
    return;
  if (a.answer_to && !t.waiter) // a write: its writer hears how it ends
    t.waiter = peer_answer{std::move(a.answer_to), a.transfer_id};
  if (auto bad = check_table_extents(a.chunks, extent_side::destination,
                                     st.region_sizes)) {
    drop_peer_in(self, a.sender,
                 make_error(ec::invalid_extent,
                            fmt::format("transfer {} from '{}': {}",
                                        a.transfer_id, a.sender, *bad)));
    return;
  }
  t.expected = total_bytes(a.chunks);
  t.announced = steady_clock::now();
  // Unclaimed transfers (answered writes too) still get a deadline.
  if (!t.waiter || std::holds_alternative<peer_answer>(*t.waiter))
    arm_deadline(self, milliseconds(30000), t.deadline);
  try {
    if (p.channel)
      post_recvs(self, p, a);
    else
      p.waiting.push_back(std::move(a));
  } catch (const std::exception& e) {
    drop_peer_in(
        self, a.sender,
        make_error(ec::plugin_error,
                   fmt::format("receive from '{}': {}", a.sender, e.what())));
  }
  ensure_progress(self);
}

} // namespace

void handle_announce_batch(self_ptr self, proto::announce_batch& b) {
  for (auto& a : b.announcements)
    handle_announce(self, a);
}

namespace {

// Announcements that wait for a channel while none is open or accepting
// belong to the sender's previous channel (it announces only on an open
// one, and CAF keeps order per pair): their bytes went there and will never
// come on the next. Posted on the next channel, they would take its bytes
// out of order, and each one's deadline would later tear that channel down
// too, failing the next run's transfers in turn (the soak found this
// cascade). They fail instead, naming why; recv orders not yet announced
// are untouched (they may be for the new channel).
void fail_stale_announcements(self_ptr self, peer_in& p,
                              const std::string& sender) {
  if (p.waiting.empty())
    return;
  auto err = lost(sender, "its transfer was announced on a channel that is "
                          "gone (its bytes will not come)");
  for (const auto& a : p.waiting)
    if (auto t = p.transfers.find(a.transfer_id);
        t != p.transfers.end() && !t->second.done && !t->second.failure)
      fail(t->second, self->state, err, sender);
  spdlog::warn("transfer {}: {} transfer(s) from '{}' announced on its "
               "previous channel failed: {}",
               self->state.cfg.name, p.waiting.size(), sender, render(err));
  p.waiting.clear();
}

// Recv orders with no announcement yet wait for the sender's next channel
// (it announces only on an open one): dropping the previous channel must
// not fail them. The soak found this: a decode worker stopped past its
// lease kept its ends of the producers' channels; after its return, a
// producer's new channel dropped them, failing the recv order its consumer
// had just made for that very channel, whose announcement then tore the new
// channel down too.
bool awaits_announcement(const transfer_entry& t) {
  return t.waiter && !t.done && !t.failure && !t.posted && t.expected == 0;
}

} // namespace

// Its pull lane and the transfers on it are kept too: the lane is a
// channel of its own.
void drop_previous_channel(self_ptr self, const std::string& sender,
                           const caf::error& err) {
  auto& in = self->state.in[sender];
  std::vector<std::pair<std::uint64_t, transfer_entry>> kept;
  for (auto it = in.transfers.begin(); it != in.transfers.end();)
    if (awaits_announcement(it->second) || it->second.on_lane) {
      kept.emplace_back(it->first, std::move(it->second));
      it = in.transfers.erase(it);
    } else {
      ++it;
    }
  auto lane = std::move(in.lane);
  in.lane = {};
  drop_peer_in(self, sender, err);
  auto& again = self->state.in[sender];
  again.lane = std::move(lane);
  for (auto& [id, t] : kept)
    again.transfers.emplace(id, std::move(t));
}

// Named by its sender, as every transfer-actor-to-transfer-actor message is
// (peers know each other by name).
void tell_closed(self_ptr self, const caf::actor& other,
                 std::uint64_t channel_id, const caf::error& why) {
  if (!other || channel_id == 0)
    return;
  for (auto& [name, p] : self->state.out) // none may overtake it
    if (p.ep.transfer == other)
      send_announcements(self, p);
  self->send(caf::actor_cast<transfer_actor>(other), proto::closed_atom::value,
             self->state.cfg.name, channel_id, why);
}

void handle_closed(self_ptr self, const std::string& peer,
                   std::uint64_t channel_id, const caf::error& why) {
  auto& st = self->state;
  auto err = lost(
      peer, fmt::format("it dropped its end of our channel ({})", render(why)));
  // channel_id = 0 before each drop: the peer knows, nothing to tell it.
  if (auto o = st.out.find(peer);
      o != st.out.end() && o->second.channel_id == channel_id) {
    o->second.channel_id = 0;
    drop_peer_out(self, peer, err);
  }
  if (auto i = st.in.find(peer);
      i != st.in.end() && i->second.channel_id == channel_id) {
    i->second.channel_id = 0;
    drop_previous_channel(self, peer, err);
  }
  // A pull lane's end (transfer_lane.cpp).
  if (auto o = st.out.find(peer);
      o != st.out.end() && o->second.lane.id == channel_id) {
    o->second.lane.id = 0;
    drop_lane_out(self, peer, err);
  }
  if (auto i = st.in.find(peer);
      i != st.in.end() && i->second.lane.id == channel_id) {
    i->second.lane.id = 0;
    drop_lane_in(self, peer, err);
  }
}

std::vector<char> handle_open(self_ptr self, const std::string& sender,
                              std::uint32_t comms, std::uint64_t chunk) {
  auto& st = self->state;
  auto& p = st.in[sender];
  if (p.channel || p.listener) {
    p.channel_id = 0; // the sender has dropped its end: nobody to tell
    drop_previous_channel(self, sender,
                          lost(sender, "it opened a new channel"));
  } else {
    fail_stale_announcements(self, p, sender);
  }
  auto& q = st.in[sender];
  q.sender = self->current_sender()
                 ? caf::actor_cast<caf::actor_addr>(self->current_sender())
                 : caf::actor_addr{};
  if (q.sender)
    self->monitor(caf::actor_cast<caf::actor>(q.sender));
  q.listener = std::make_unique<channel_listener>(
      st.cfg.net, st.cfg.devices, options_for(st, sender, comms, chunk));
  q.accept_deadline =
      steady_clock::now() + milliseconds(st.cfg.open_timeout_ms);
  std::vector<char> flat;
  for (const auto& h : q.listener->handles())
    flat.insert(flat.end(), h.begin(), h.end());
  q.channel_id = channel_id_of(flat);
  ensure_progress(self);
  return flat;
}

// ---- polling (transfer.cpp's progress loop calls these)

// Every region of the table, whole, once per channel. GPU memory goes to the
// plugin as NCCL_PTR_CUDA where its ptrSupport has it; otherwise the channel
// stages it through pinned bounce buffers (docs/gpu.md, "Staging"): nothing
// to decide here.
registration register_region(transfer_state& st, transport::channel& channel,
                             const memory_region* region) {
  if (!region) // removed (transfer_table.cpp): keeps its index
    return {};
  ++st.stats.registrations;
  return channel.register_memory(region->data(), region->size(),
                                 region->nccl_ptr_type());
}

std::vector<registration> register_regions(transfer_state& st,
                                           transport::channel& channel) {
  std::vector<registration> regs;
  regs.reserve(st.regions.size());
  for (const auto& region : st.regions)
    regs.push_back(register_region(st, channel, region.get()));
  return regs;
}

namespace {

template<class Peer>
bool poll_peer(self_ptr self, const std::string& name, Peer& p, bool incoming,
               std::optional<caf::error>& failure) {
  auto& st = self->state;
  bool progressed = false;
  p.channel->poll([&](const transport::completion& c) {
    progressed = true;
    auto op = p.ops.find(c.id);
    if (op == p.ops.end())
      return;
    auto id = op->second;
    st.op_nodes.erase(p.ops, op);
    if (!c.ok) {
      if (!failure)
        failure = lost(name, fmt::format("{} of transfer {} failed: {}",
                                         incoming ? "receive" : "send", id,
                                         c.error ? c.error : "?"));
      return;
    }
    auto t = p.transfers.find(id);
    if (t == p.transfers.end())
      return;
    t->second.bytes += c.bytes;
    if (--t->second.ops_left == 0) {
      // A receiver's entry outlives completion until a recv order claims it.
      bool claimed = t->second.waiter.has_value();
      finish(t->second, st, incoming, name);
      if (!incoming || claimed)
        st.entry_nodes.erase(p.transfers, t);
    }
  });
  return progressed;
}

} // namespace

bool progress_send_channel(self_ptr self, const std::string& name, peer_out& p,
                           std::optional<caf::error>& failure) {
  auto& st = self->state;
  bool progressed = false;
  if (p.connector) {
    if (p.connector->try_connect()) {
      p.channel.emplace(p.connector->take());
      p.connector.reset();
      p.regs = register_regions(st, *p.channel);
      st.stats.comms_opened += st.cfg.comms_per_peer;
      st.metrics.peer(name).comms->set(st.cfg.comms_per_peer);
      p.opening = false;
      progressed = true;
      while (!p.waiting.empty()) {
        auto w = std::move(p.waiting.front());
        p.waiting.pop_front();
        if (p.transfers.count(w.id) != 0)
          start_send(self, p, w.id, std::move(w.chunks));
      }
    } else if (steady_clock::now() > p.connect_deadline) {
      failure = make_error(
          ec::timeout, fmt::format("connecting to '{}' took more than {} ms",
                                   name, st.cfg.open_timeout_ms));
      return progressed;
    }
  }
  if (p.channel)
    progressed |= poll_peer(self, name, p, false, failure);
  return progressed;
}

bool progress_recv_channel(self_ptr self, const std::string& name, peer_in& p,
                           std::optional<caf::error>& failure) {
  auto& st = self->state;
  bool progressed = false;
  if (p.listener) {
    if (p.listener->try_accept()) {
      p.channel.emplace(p.listener->take());
      p.listener.reset();
      st.metrics.peer(name).comms->set(p.channel->comm_count());
      p.regs = register_regions(st, *p.channel);
      progressed = true;
      // Announced while the channel opened; one given up meanwhile (its
      // deadline, its caller's withdrawal) drops the channel, and the rest
      // with it (drop_peer_in clears the queue).
      while (!p.waiting.empty()) {
        auto a = std::move(p.waiting.front());
        p.waiting.pop_front();
        if (auto t = p.transfers.find(a.transfer_id);
            t != p.transfers.end() &&
            refuse_given_up(self, name, a.transfer_id, t->second))
          break;
        post_recvs(self, p, a);
      }
    } else if (steady_clock::now() > p.accept_deadline) {
      failure = make_error(ec::timeout,
                           fmt::format("'{}' did not connect within {} ms",
                                       name, st.cfg.open_timeout_ms));
      return progressed;
    }
  }
  if (p.channel)
    progressed |= poll_peer(self, name, p, true, failure);
  return progressed;
}

} // namespace kvferry::transfer_detail
