// The transfer actor: one per device, detached, the only caller of the plugin
// for its device. This file: its behaviour, the progress loop and the
// transfer deadlines. The plugin path (channels, ordering, memory) is in
// transfer_net.cpp, the CUDA IPC path and its quarantine in transfer_ipc.cpp,
// the state they share in transfer_state.hpp.
#include "kvferry/actors/transfer.hpp"

#include <algorithm>
#include <chrono>
#include <exception>
#include <stdexcept>
#include <thread>
#include <utility>

#include <caf/all.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/plan.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/stage_stamps.hpp"
#include "kvferry/transport/extent_lists.hpp"
#include "transfer_state.hpp"

namespace kvferry {
namespace transfer_detail {

using namespace std::chrono;

std::vector<std::shared_ptr<memory_region>>
region_table_of(const transfer_config& cfg) {
  std::vector<std::shared_ptr<memory_region>> table{cfg.region};
  table.insert(table.end(), cfg.more_regions.begin(), cfg.more_regions.end());
  for (std::size_t i = 0; i < table.size(); ++i) {
    if (!table[i])
      throw std::invalid_argument(fmt::format(
          "transfer {}: region {} of its table is missing", cfg.name, i));
    if (table[i]->size() >= max_region_bytes)
      throw std::invalid_argument(fmt::format(
          "transfer {}: region {} ('{}') has {} bytes; a region "
          "of a table must be smaller than 2^{}",
          cfg.name, i, table[i]->name(), table[i]->size(), region_shift));
  }
  return table;
}

caf::error lost(const std::string& peer, const std::string& why) {
  return make_error(ec::peer_down,
                    fmt::format("lost peer '{}': {}", peer, why));
}

// New work: poll now. When the loop is backed off (its next poll is a
// delayed message up to 200 us away), that wait would land on the critical
// path of the transfer that just arrived, so an immediate poll goes too.
void ensure_progress(self_ptr self) {
  auto& st = self->state;
  st.busy_at = steady_clock::now();
  st.idle_polls = 0;
  if (st.progress_scheduled && !st.progress_delayed)
    return;
  st.progress_scheduled = true;
  st.progress_delayed = false;
  self->send(self, proto::progress_atom::value, ++st.progress_generation);
}

// Deadlines are kept in the state and checked by one sweep message every
// 100 ms instead of one delayed message per transfer: CAF 0.17 keeps an actor
// alive until its pending delayed messages fire, so per-transfer timers of
// 10-30 s held a stopping worker's detached transfer thread that long.
constexpr auto sweep_period = milliseconds(100);

void arm_deadline(self_ptr self, milliseconds timeout, entry_deadline& d) {
  auto& st = self->state;
  d.arm(steady_clock::now() + timeout);
  if (!st.sweep_scheduled) {
    st.sweep_scheduled = true;
    self->delayed_send(self, sweep_period, proto::sweep_atom::value);
  }
}

proto::endpoint endpoint_of(self_ptr self) {
  const auto& cfg = self->state.cfg;
  proto::endpoint ep;
  ep.name = cfg.name;
  ep.transfer = caf::actor_cast<caf::actor>(self);
  ep.plugin = cfg.net ? cfg.net->name() : "";
  ep.region_bytes = cfg.region->size();
  ep.host_id = cfg.host_id;
  ep.gpu = cfg.region->gpu();
  ep.ipc_handle = self->state.ipc_handle;
  ep.more_region_sizes.assign(self->state.region_sizes.begin() + 1,
                              self->state.region_sizes.end());
  return ep;
}

namespace {

// Answers a node's caller (answer_waiter) with the transfer's report, or
// with `err` (the node's reason first), and tells the node.
void answer(answer_waiter& w, const transfer_entry& t, const caf::error& err,
            const std::string& peer) {
  const auto& why = w.failure ? w.failure : err;
  proto::node_report rep{w.request_id};
  if (why) {
    w.promise.deliver(why);
  } else {
    auto r = report_of(t);
    rep = {w.request_id, r.bytes,       proto::data_start_of(r), r.landed_ns,
           false,        r.gpu_copy_ns, r.gpu_queued_ns};
    w.promise.deliver(rep);
  }
  caf::anon_send(w.node, proto::node_answered_atom::value, peer, rep, why);
}

// What piles up for `to` in `piles` (settled_out or answers_out) until the
// next settled_flush, which goes to this actor's mailbox unless one is on
// its way.
template<class Pile>
Pile& pile_for(transfer_state& st,
               std::vector<std::pair<caf::actor, Pile>>& piles,
               const caf::actor& to) {
  if (!st.settled_flush_scheduled) {
    st.settled_flush_scheduled = true;
    caf::anon_send(caf::actor_cast<transfer_actor>(st.me),
                   proto::settled_flush_atom::value);
  }
  for (auto& [who, pile] : piles)
    if (who == to)
      return pile;
  return piles.emplace_back(to, Pile{}).second;
}

// The list of settled batched orders for `to`, a flush scheduled.
std::vector<proto::order_settled>& settled_list(transfer_state& st,
                                                const caf::actor& to) {
  return pile_for(st, st.settled_out, to);
}

// Answers whoever waits for `t` (see waiter_promise): done, or with `err`.
void answer_waiter_of(transfer_state& st, transfer_entry& t,
                      const caf::error& err, const std::string& peer) {
  if (!t.waiter)
    return;
  if (auto* caller = std::get_if<answer_waiter>(&*t.waiter)) {
    answer(*caller, t, err, peer);
  } else if (auto* writer = std::get_if<peer_answer>(&*t.waiter)) {
    pile_for(st, st.answers_out, writer->to)
        .answers.push_back({writer->transfer_id, err});
  } else if (auto* batched = std::get_if<batch_waiter>(&*t.waiter)) {
    settled_list(st, batched->to)
        .push_back({peer, batched->transfer_id, err ? 0 : t.bytes,
                    t.over_ipc && !err, err});
  } else if (auto* sender = std::get_if<byte_promise>(&*t.waiter)) {
    if (err)
      sender->deliver(err);
    else
      sender->deliver(t.bytes);
  } else if (err) {
    std::get<report_promise>(*t.waiter).deliver(err);
  } else {
    std::get<report_promise>(*t.waiter).deliver(report_of(t));
  }
  t.waiter.reset();
}

} // namespace

void send_settled(transfer_state& st) {
  st.settled_flush_scheduled = false;
  for (auto& [to, list] : st.settled_out)
    if (!list.empty())
      caf::anon_send(to, proto::settled_atom::value, std::move(list));
  st.settled_out.clear();
  for (auto& [to, batch] : st.answers_out) {
    batch.sender = st.cfg.name; // the name our endpoint shares
    caf::anon_send(to, proto::ep_batch_atom::value, std::move(batch));
  }
  st.answers_out.clear();
}

void finish(transfer_entry& t, transfer_state& st, bool incoming,
            const std::string& peer,
            std::optional<steady_clock::time_point> finished) {
  t.done = true;
  t.finished = finished.value_or(steady_clock::now());
  st.metrics.record(peer, !incoming, t.bytes,
                    duration<double>(t.finished - t.started).count());
  ++st.stats.transfers_done;
  if (incoming) {
    st.stats.bytes_received += t.bytes;
    stage_stamps::stamp(stage_stamps::received);
  } else
    st.stats.bytes_sent += t.bytes;
  answer_waiter_of(st, t, {}, peer);
}

void fail(transfer_entry& t, transfer_state& st, const caf::error& err,
          const std::string& peer) {
  ++st.stats.transfers_failed;
  st.metrics.count_error(peer, err.category() == caf::atom("kvferry")
                                   ? to_string(static_cast<ec>(err.code()))
                                   : "other");
  t.failure = err;
  answer_waiter_of(st, t, err, peer);
}

void drop_peer_out(self_ptr self, const std::string& name,
                   const caf::error& err) {
  drop_lane_out(self, name, err); // its pulls: the decode hears of the lane
  auto i = self->state.out.find(name);
  if (i == self->state.out.end())
    return;
  std::size_t failed = 0;
  for (auto& [id, t] : i->second.transfers)
    if (!t.done) {
      fail(t, self->state, err, name);
      ++failed;
    }
  // A peer that leaves while nothing is in flight is routine (shutdown).
  spdlog::log(failed > 0 ? spdlog::level::warn : spdlog::level::info,
              "transfer {}: dropping send channel to '{}' ({} transfers "
              "failed): {}",
              self->state.cfg.name, name, failed, render(err));
  self->state.metrics.peer(name).comms->set(0);
  // Its transfers' announcements still go, ahead of `closed`, as they would
  // have unbatched: the receiver fails them with the reason (or, where it
  // dropped the channel first, as announced on a channel that is gone).
  // Their sends, not posted yet, never will be.
  send_announcements(self, i->second);
  tell_closed(self, i->second.ep.transfer, i->second.channel_id, err);
  // Copy kernels still running finish on their own; their mapping of the
  // peer's region stays open in the cache, so they never touch freed memory.
  orphan_copies(self->state, name, i->second);
  self->state.out.erase(i);
}

void drop_peer_in(self_ptr self, const std::string& name,
                  const caf::error& err) {
  drop_lane_in(self, name, err);
  auto i = self->state.in.find(name);
  if (i == self->state.in.end())
    return;
  auto& p = i->second;
  // The sender hears first, before any failure reply leaves: whoever learns
  // of a failure through a reply (kvferry::endpoint's write, on the
  // sender's node) then finds the sender's channel already dropped, not
  // dropped under its next transfer.
  tell_closed(self, caf::actor_cast<caf::actor>(p.sender), p.channel_id, err);
  std::size_t failed = 0;
  for (auto& [id, t] : p.transfers)
    if (!t.done && !t.failure) {
      fail(t, self->state, err, name);
      ++failed;
    }
  // Failed-but-unclaimed entries keep their error for a later recv order;
  // the channel and the bookkeeping of posted requests go.
  spdlog::log(failed > 0 ? spdlog::level::warn : spdlog::level::info,
              "transfer {}: dropping receive channel from '{}' ({} transfers "
              "failed): {}",
              self->state.cfg.name, name, failed, render(err));
  self->state.metrics.peer(name).comms->set(0);
  p.channel_id = 0;
  p.ops.clear();
  p.waiting.clear();
  p.regs.clear(); // before the channel they belong to
  p.channel.reset();
  p.listener.reset();
  p.sender = caf::actor_addr{};
  for (auto it = p.transfers.begin(); it != p.transfers.end();)
    it = it->second.waiter || it->second.failure ? std::next(it)
                                                 : p.transfers.erase(it);
}

namespace {

// ---- orders

// A send order that names no peer, or this actor: refused before anything.
caf::error refuse_unaddressed(self_ptr self, const proto::send_order& o) {
  auto& st = self->state;
  const auto& peer = o.peer.name;
  if (!o.peer.transfer || peer.empty())
    return make_error(ec::invalid_argument,
                      fmt::format("transfer {}: send order {} names no peer "
                                  "transfer actor",
                                  st.cfg.name, o.transfer_id));
  if (peer == st.cfg.name)
    return make_error(ec::invalid_argument,
                      fmt::format("transfer {}: send order {} is addressed to "
                                  "itself",
                                  st.cfg.name, o.transfer_id));
  return {};
}

// Checks send order `o` (not a lane's) against this actor's state and adopts
// its peer: sets `p` (the peer's entry) and `ipc` (whether CUDA IPC carries
// it), or returns the refusal.
caf::error admit_send(self_ptr self, proto::send_order& o, peer_out*& p,
                      bool& ipc) {
  auto& st = self->state;
  const auto& peer = o.peer.name;
  if (auto err =
          refuse_remote_event(self, o.wait_event, "send order", o.transfer_id))
    return err;
  p = &st.out[peer];
  adopt_peer(self, *p, o.peer);
  if (p->transfers.count(o.transfer_id) != 0)
    return make_error(ec::duplicate,
                      fmt::format("transfer {} to '{}' is already in flight",
                                  o.transfer_id, peer));
  ipc = choose_data_path(st.cfg.use_ipc, st.ipc_kind, st.cfg.host_id, p->ep) ==
        data_path::cuda_ipc;
  // Over CUDA IPC the copy engine checks every extent against both tables
  // and counts the bytes in the pass that packs the plan, before anything
  // launches (launch_ipc_copy): a pass of its own here would read a vector
  // call's tens of thousands of extents once more (issue #16).
  if (!ipc)
    if (auto bad = check_send_extents(st, o))
      return make_error(
          ec::invalid_extent,
          fmt::format("send order {} to '{}': {}", o.transfer_id, peer, *bad));
  if (ipc)
    if (auto stale = refuse_if_given_up(st, peer, o.transfer_id))
      return stale;
  return {};
}

// Enters admitted send order `o` and starts it; `waiter` hears how it ends.
void start_send(self_ptr self, peer_out& p, bool ipc, proto::send_order& o,
                waiter_promise waiter) {
  auto& st = self->state;
  auto& t = st.entry_nodes.emplace(p.transfers, o.transfer_id);
  t.expected = ipc ? 0 : total_bytes(o.extents); // IPC: counted when packed
  t.waiter = std::move(waiter);
  t.answer_to = std::move(o.answer_to); // announced with the transfer
  t.over_ipc = ipc;
  arm_deadline(self, milliseconds(o.timeout_ms), t.deadline);
  if (ipc)
    start_ipc_send(self, p, o.transfer_id, std::move(o.extents), o.wait_event);
  else if (o.wait_event != 0) // posted once the event completed
    st.event_waits.push_back(
        {o.peer.name, o.transfer_id, std::move(o.extents), o.wait_event});
  else
    start_plugin_send(self, o.peer.name, p, o.transfer_id,
                      std::move(o.extents));
  ensure_progress(self);
}

caf::result<std::uint64_t> handle_send(self_ptr self, proto::send_order& o) {
  if (auto err = refuse_unaddressed(self, o))
    return err;
  if (o.lane != 0) // a pull whose receives are posted (transfer_lane.cpp)
    return handle_lane_send(self, o);
  peer_out* p = nullptr;
  bool ipc = false;
  if (auto err = admit_send(self, o, p, ipc))
    return err;
  auto promise = self->make_response_promise<std::uint64_t>();
  start_send(self, *p, ipc, o, waiter_promise{promise});
  return promise;
}

void stay_hot(self_ptr self); // the progress loop, below

// An endpoint's batched orders (order_batch): each taken as its own request
// would be, its end reported to the batch's sender in a settled list.
void handle_order_batch(self_ptr self, proto::order_batch& b) {
  auto to = caf::actor_cast<caf::actor>(self->current_sender());
  if (!to)
    return; // nobody to tell: an anonymous batch is ignored
  auto& st = self->state;
  stay_hot(self);
  for (auto& o : b.sends) {
    auto err = refuse_unaddressed(self, o);
    if (!err && o.lane != 0)
      err = make_error(ec::invalid_argument,
                       fmt::format("transfer {}: send order {} of a batch "
                                   "names a pull lane",
                                   st.cfg.name, o.transfer_id));
    peer_out* p = nullptr;
    bool ipc = false;
    if (!err)
      err = admit_send(self, o, p, ipc);
    if (err)
      settled_list(st, to).push_back(
          {o.peer.name, o.transfer_id, 0, false, std::move(err)});
    else
      start_send(self, *p, ipc, o,
                 waiter_promise{batch_waiter{to, o.transfer_id}});
  }
}

} // namespace

std::optional<std::string> check_send_extents(transfer_state& st,
                                              const proto::send_order& o) {
  proto::region_sizes_of(o.peer, st.order_peer_sizes); // in kept room
  return check_table_extents(o.extents, st.region_sizes, st.order_peer_sizes);
}

void claim_recv(self_ptr self, const proto::recv_order& o,
                waiter_promise waiter) {
  auto& st = self->state;
  auto& p = st.in[o.peer_name];
  auto& t = st.entry_nodes.emplace(p.transfers, o.transfer_id);
  t.waiter = std::move(waiter);
  if (t.done) {
    answer_waiter_of(st, t, {}, o.peer_name);
    st.entry_nodes.erase(p.transfers, o.transfer_id);
  } else if (t.failure) {
    answer_waiter_of(st, t, t.failure, o.peer_name);
    if (!t.cancelled) // else kept till its deadline: its bytes must not land
      st.entry_nodes.erase(p.transfers, o.transfer_id);
  } else {
    arm_deadline(self, milliseconds(o.timeout_ms), t.deadline);
  }
}

namespace {

caf::result<proto::recv_report> handle_recv(self_ptr self,
                                            proto::recv_order& o) {
  auto promise = self->make_response_promise<proto::recv_report>();
  claim_recv(self, o, waiter_promise{promise});
  return promise;
}

// A node's recv order with its caller's request (answer_waiter).
caf::result<proto::node_report> handle_recv_for_caller(self_ptr self,
                                                       proto::recv_order& o,
                                                       std::uint64_t request_id,
                                                       caf::actor& node) {
  auto promise = self->make_response_promise<proto::node_report>();
  claim_recv(self, o,
             waiter_promise{answer_waiter{promise, request_id, std::move(node),
                                          caf::error{}}});
  return promise;
}

// ---- the progress loop

bool progress_out(self_ptr self) {
  auto& st = self->state;
  bool progressed = false;
  std::vector<std::pair<std::string, caf::error>> failed;
  std::vector<std::pair<std::string, caf::error>> lanes_failed;
  for (auto& [name, p] : st.out) {
    try {
      std::optional<caf::error> failure;
      progressed |= progress_send_channel(self, name, p, failure);
      if (failure)
        failed.emplace_back(name, *failure);
      else if (!p.copies.empty() || !p.ipc_waiting.empty())
        progressed |= progress_ipc(self, name, p);
    } catch (const std::exception& e) {
      failed.emplace_back(name, lost(name, e.what()));
    }
    try {
      std::optional<caf::error> failure;
      progressed |= progress_lane_out(self, name, p, failure);
      if (failure)
        lanes_failed.emplace_back(name, *failure);
    } catch (const std::exception& e) {
      lanes_failed.emplace_back(name, lost(name, e.what()));
    }
  }
  for (auto& [name, err] : lanes_failed)
    drop_lane_out(self, name, err);
  for (auto& [name, err] : failed)
    drop_peer_out(self, name, err);
  return progressed;
}

bool progress_in(self_ptr self) {
  auto& st = self->state;
  bool progressed = false;
  std::vector<std::pair<std::string, caf::error>> failed;
  std::vector<std::pair<std::string, caf::error>> lanes_failed;
  for (auto& [name, p] : st.in) {
    try {
      std::optional<caf::error> failure;
      progressed |= progress_recv_channel(self, name, p, failure);
      if (failure)
        failed.emplace_back(name, *failure);
    } catch (const std::exception& e) {
      failed.emplace_back(name, lost(name, e.what()));
    }
    try {
      std::optional<caf::error> failure;
      progressed |= progress_lane_in(self, name, p, failure);
      if (failure)
        lanes_failed.emplace_back(name, *failure);
    } catch (const std::exception& e) {
      lanes_failed.emplace_back(name, lost(name, e.what()));
    }
  }
  for (auto& [name, err] : lanes_failed)
    drop_lane_in(self, name, err);
  for (auto& [name, err] : failed)
    drop_peer_in(self, name, err);
  return progressed;
}

// Plugin requests are out (a channel's or a lane's): their news comes
// within about one CAF leg (a lane pull's order on its way, a peer's sends).
bool plugin_requests_out(const transfer_state& st) {
  for (auto& [name, p] : st.out)
    if (!p.ops.empty() || !p.lane.ops.empty())
      return true;
  for (auto& [name, p] : st.in)
    if (!p.ops.empty() || !p.lane.ops.empty())
      return true;
  return false;
}

bool has_work(const transfer_state& st) {
  for (auto& [name, p] : st.out)
    if (p.connector || !p.ops.empty() || !p.waiting.empty() ||
        !p.copies.empty() || !p.ipc_waiting.empty() || lane_has_work(p.lane))
      return true;
  for (auto& [name, p] : st.in)
    if (p.listener || !p.ops.empty() || lane_has_work(p.lane))
      return true;
  return !st.ipc_orphans.empty() || ipc_has_work(st);
}

// Transfers started and neither finished nor failed, for the in-flight gauge.
std::int64_t count_in_flight(const transfer_state& st) {
  std::int64_t n = 0;
  for (auto& [name, p] : st.out)
    for (auto& [id, t] : p.transfers)
      n += !t.done && !t.failure;
  for (auto& [name, p] : st.in)
    for (auto& [id, t] : p.transfers)
      n += !t.done && !t.failure;
  return n;
}

// The entries this actor keeps (transfer_stats::tracked).
std::uint64_t count_tracked(const transfer_state& st) {
  std::uint64_t n = st.offers.size();
  for (const auto* peers : {&st.out, &st.reads})
    for (auto& [name, p] : *peers)
      n += p.transfers.size();
  for (auto& [name, p] : st.in)
    n += p.transfers.size();
  return n;
}

// Orphaned copies (their transfer given up, perhaps on a hung GPU) are
// polled without spinning; copies in flight otherwise keep the loop hot.
bool copying(const transfer_state& st) {
  return st.spin_while_copying && st.ipc_in_flight > st.ipc_orphans.size();
}

// The idle policy where the plugin's test() may sleep (KVFERRY_WAKE=0, or
// a plugin without wait descriptors, and no pull lanes): spin while bytes
// flow (a completion found within ~a few hundred polls keeps latency at the
// plugin's, whose test() waits for its socket's news), then back off up to
// 200 us so a waiting worker does not burn a shared core.
void schedule_plugin_waits(self_ptr self, bool progressed) {
  constexpr unsigned spin_polls = 256;
  auto& st = self->state;
  st.idle_polls = progressed ? 0 : st.idle_polls + 1;
  if (st.idle_polls < spin_polls || copying(st)) {
    self->send(self, proto::progress_atom::value, st.progress_generation);
    return;
  }
  auto delay =
      microseconds(std::min<unsigned>(200, 10 + st.idle_polls - spin_polls));
  st.progress_delayed = true;
  self->delayed_send(self, delay, proto::progress_atom::value,
                     st.progress_generation);
}

// Calls fn(channel, opening) for each of this actor's plugin channels and
// lanes (channel: an optional, opening: its connector or listener).
template<class Fn>
void for_each_channel(transfer_state& st, Fn&& fn) {
  for (auto& [name, p] : st.out) {
    fn(p.channel, p.connector != nullptr);
    fn(p.lane.channel, p.lane.connector != nullptr);
  }
  for (auto& [name, p] : st.in) {
    fn(p.channel, p.listener != nullptr);
    fn(p.lane.channel, p.lane.listener != nullptr);
  }
}

// The wait descriptors of every channel with plugin requests out, armed
// in the wake watch (made here at first need). False when one of them has
// none, a channel is still opening (its handshake is polled), CUDA work is
// out, or the watch cannot run: the loop then polls on its period.
bool arm_wakes(self_ptr self) {
  auto& st = self->state;
  // CUDA work (events, one-sided reads, orphaned copies) has no descriptor.
  if (st.wakes_failed || ipc_has_work(st) || !st.ipc_orphans.empty())
    return false;
  bool can_sleep = true;
  for_each_channel(st, [&](const auto& channel, bool opening) {
    can_sleep =
        can_sleep && !opening &&
        (!channel || channel->in_flight() == 0 || !channel->wait_fds().empty());
  });
  if (!can_sleep)
    return false;
  if (!st.wakes) {
    try {
      st.wakes = std::make_unique<wake_watch>(self->address());
    } catch (const std::exception& e) {
      spdlog::warn("transfer {}: polls its comms (no wake watch: {})",
                   st.cfg.name, e.what());
      st.wakes_failed = true;
      return false;
    }
  }
  bool armed = true;
  for_each_channel(st, [&](const auto& channel, bool) {
    if (channel && channel->in_flight() > 0)
      for (int fd : channel->wait_fds())
        armed = st.wakes->arm(fd) && armed;
  });
  return armed;
}

void on_wake(self_ptr self) {
  stage_stamps::stamp(stage_stamps::wake_taken);
  ++self->state.stats.wakes;
  self->state.woken = true;
  ensure_progress(self);
}

// Within its hot window after the last activity (hot_window_from_env).
bool hot(const transfer_state& st, steady_clock::time_point now) {
  return now - st.busy_at < st.hot_window;
}

// Work that waits for a peer's word (a pull's announcement, a claimed
// arrival) keeps the loop hot, as posted work does (ensure_progress).
void stay_hot(self_ptr self) {
  if (self->state.hot_window.count() > 0)
    ensure_progress(self);
}

// The idle policy where this actor polls its comms itself (polls_itself):
// nothing sleeps in the plugin for it (options_for), so it decides alone,
// and messages to the actor never wait behind a poll. Spin (an immediate
// poll) for `spin_window` after news, or while hot (transfer_state::
// hot_window): bytes flowing keep their pace, and a peer's next word finds
// the thread awake. Then, while plugin requests are out, sleep on their
// comms' wait descriptors (the wake watch brings the news; a delayed poll
// after `backstop` covers what they do not), or, where a comm has none,
// poll every `wire_period` (their news is about a CAF leg away); the wait
// costs one delayed message, not a core. Else (a channel opening, a GPU
// copy, a peer silent for longer than `wire_window`) back off up to 200 us.
void schedule_caller_polls(self_ptr self, bool progressed) {
  constexpr auto spin_window = microseconds(20);
  constexpr auto wire_period = microseconds(20);
  constexpr auto wire_window = milliseconds(2);
  // Asleep on the comms, a poll only in case: every plugin event wakes us.
  constexpr auto backstop = milliseconds(1);
  auto& st = self->state;
  const auto now = steady_clock::now();
  // A wake whose poll found nothing (bytes that wait for a receive not yet
  // posted keep a descriptor readable): poll on the period this once, so
  // such a comm cannot spin the actor through its wake watch.
  const bool idle_wake = std::exchange(st.woken, false) && !progressed;
  if (progressed) {
    st.busy_at = now;
    st.idle_polls = 0;
  }
  if (now - st.busy_at < spin_window || hot(st, now) || copying(st)) {
    self->send(self, proto::progress_atom::value, st.progress_generation);
    return;
  }
  const bool requests_out = plugin_requests_out(st);
  microseconds delay = now - st.busy_at < wire_window && requests_out
                           ? wire_period
                           : microseconds(std::min(200u, 10 + st.idle_polls));
  if (requests_out && !idle_wake && arm_wakes(self))
    delay = backstop; // the wake watch brings the news
  ++st.idle_polls;
  st.progress_delayed = true;
  self->delayed_send(self, delay, proto::progress_atom::value,
                     st.progress_generation);
}

void on_progress(self_ptr self, std::uint64_t generation) {
  auto& st = self->state;
  if (generation != st.progress_generation)
    return; // superseded by an immediate poll (see ensure_progress)
  st.progress_scheduled = false;
  st.progress_delayed = false;
  ++st.stats.polls;
  bool progressed = progress_out(self);
  progressed |= progress_in(self);
  if (!st.reads.empty())
    progressed |= progress_reads(self);
  if (!st.event_waits.empty())
    progressed |= progress_event_waits(self);
  if (!st.ipc_orphans.empty())
    progressed |= progress_orphans(self);
  if (!st.status_waiters.empty())
    answer_status_waiters(st);
  if (progressed) // only then can the count have changed
    st.metrics.in_flight.set(count_in_flight(st));
  const bool keep_hot = hot(st, steady_clock::now());
  if (!has_work(st) && !keep_hot)
    return;
  // A hot turn that found nothing gives way to any thread ready on this
  // core (the peer's, the middleman's): the loop stays hot without taking
  // the core they need (on 2 cores a hot loop that did not yield made a
  // 1-block pull 4-14x slower; yielding, 38-43 % faster).
  if (keep_hot && !progressed)
    std::this_thread::yield();
  st.progress_scheduled = true;
  if (polls_itself(st))
    schedule_caller_polls(self, progressed);
  else
    schedule_plugin_waits(self, progressed);
}

// A passed deadline of `kind` (see transfer_state::due_deadline) of entry
// (`name`, `id`) of `generation`: one of an entry gone since, or of another
// entry under the same id, is ignored.
void on_expire(self_ptr self, char kind, const std::string& name,
               std::uint64_t id, std::uint64_t generation) {
  auto& st = self->state;
  if (kind == '^') { // a one-sided read (transfer_ipc.cpp)
    expire_read(self, name, id, generation);
    return;
  }
  if (kind == '?') { // a node's offer nobody pulled (transfer_pull.cpp)
    expire_offer(self, name, id, generation);
    return;
  }
  bool outgoing = kind == '>';
  // Made only where the deadline fails a transfer.
  auto timeout = [&] {
    return make_error(
        ec::timeout, fmt::format("transfer {} {} '{}' did not complete in time",
                                 id, outgoing ? "to" : "from", name));
  };
  if (outgoing) {
    auto p = st.out.find(name);
    if (p == st.out.end())
      return;
    auto t = p->second.transfers.find(id);
    if (t == p->second.transfers.end() || t->second.done ||
        t->second.generation != generation) // another transfer's deadline
      return;
    if (t->second.on_lane) { // the lane's order is lost: it goes, failing it
      drop_lane_out(self, name, timeout());
      return;
    }
    if (p->second.mapped) {
      // CUDA IPC: a running kernel cannot be recalled and the peer has no
      // channel to close; this transfer fails, the peer stays usable. Its
      // kernel, if launched, is watched on as an orphan (the receiver may
      // ask about it); if not launched yet, it never will be.
      fail(t->second, st, timeout(), name);
      p->second.transfers.erase(t);
      orphan_copies(st, name, p->second, id);
      forget_waiting_ipc(p->second, id);
      return;
    }
    if (t->second.posted) {
      // Requests are out on the comms: only closing them makes the memory
      // safe to reuse, and the comm order is lost anyway. Dropping the peer
      // fails this transfer too (once, and counted in its log line).
      drop_peer_out(self, name, timeout());
    } else {
      fail(t->second, st, timeout(), name);
      p->second.transfers.erase(t);
    }
    return;
  }
  auto p = st.in.find(name);
  if (p == st.in.end())
    return;
  auto t = p->second.transfers.find(id);
  if (t == p->second.transfers.end() || t->second.generation != generation)
    return; // gone, or another transfer under the same id
  if (t->second.failure) {
    if (!t->second.waiter) // a failure nobody claimed in time: forget it
      p->second.transfers.erase(t);
    return;
  }
  if (t->second.done) {
    if (!t->second.waiter) // nobody claimed it in time: forget it
      p->second.transfers.erase(t);
    return;
  }
  if (t->second.short_landed) { // refused, and its reason never came
    fail(t->second, st, timeout(), name);
    p->second.transfers.erase(t);
    return;
  }
  if (t->second.on_lane) { // receives out: only closing the lane stops them
    drop_lane_in(self, name, timeout());
    return;
  }
  if (t->second.posted) {
    drop_peer_in(self, name, timeout()); // fails this transfer too, counted
  } else {
    if (quarantines(st)) // before the failure reaches the consumer
      quarantine_transfer(self, name, id);
    fail(t->second, st, timeout(), name);
    t->second.cancelled = true; // a later announcement must not land
  }
}

// Notes the deadlines of entry (`peer`, `id`) that passed; true while it
// has one to come.
template<class Entry>
bool check_deadline(transfer_state& st, steady_clock::time_point now, char kind,
                    const std::string& peer, std::uint64_t id, Entry& e) {
  auto& d = e.deadline;
  while (d.armed() && d.next <= now) {
    st.due.push_back({d.next, kind, peer, id, e.generation});
    d.pass();
  }
  return d.armed();
}

// Walks the entries (what is in flight, or waits for its claim) for passed
// deadlines, then handles them earliest first, each finding its entry
// anew; runs again in sweep_period while any entry has a deadline to come.
void on_sweep(self_ptr self) {
  auto& st = self->state;
  st.sweep_scheduled = false;
  const auto now = steady_clock::now();
  bool armed = false;
  auto walk = [&](char kind, auto& peers) {
    for (auto& [name, p] : peers)
      for (auto& [id, t] : p.transfers)
        armed |= check_deadline(st, now, kind, name, id, t);
  };
  walk('>', st.out);
  walk('<', st.in);
  walk('^', st.reads);
  for (auto& [key, h] : st.offers)
    armed |= check_deadline(st, now, '?', key.first, key.second, h);
  std::stable_sort(st.due.begin(), st.due.end(),
                   [](const auto& a, const auto& b) { return a.at < b.at; });
  for (const auto& d : st.due)
    on_expire(self, d.kind, d.peer, d.id, d.generation);
  st.due.clear();
  if (armed && !st.sweep_scheduled) {
    st.sweep_scheduled = true;
    self->delayed_send(self, sweep_period, proto::sweep_atom::value);
  }
}

// A peer that left the directory is gone for good, and a later process
// under its name reuses its transfer ids (the same request ids): none of
// the old one's failures may fail those. Its receivers heard of the failure
// already, or hear of the peer's death from the directory themselves.
void forget_failures_from(transfer_state& st, const std::string& name) {
  auto i = st.in.find(name);
  if (i == st.in.end())
    return;
  auto& transfers = i->second.transfers;
  for (auto it = transfers.begin(); it != transfers.end();)
    it = it->second.failure && !it->second.waiter ? transfers.erase(it)
                                                  : std::next(it);
}

// Stopping: the callers whose requests their node handed here
// (answer_waiter) hear of it, as the node's own callers hear from the node;
// so do the endpoint actors whose batched orders or writes wait here.
void on_exit(self_ptr self, const caf::exit_msg& msg) {
  if (!msg.reason)
    return; // as CAF's default handler: a normal exit does not stop us
  auto& st = self->state;
  auto why = make_error(ec::peer_down,
                        fmt::format("transfer {} stopped", st.cfg.name));
  auto told = [](const transfer_entry& t) {
    return t.waiter && !std::holds_alternative<byte_promise>(*t.waiter) &&
           !std::holds_alternative<report_promise>(*t.waiter);
  };
  for (auto& [name, p] : st.in)
    for (auto& [id, t] : p.transfers)
      if (told(t))
        answer_waiter_of(st, t, why, name);
  for (auto& [name, p] : st.out)
    for (auto& [id, t] : p.transfers)
      if (told(t))
        answer_waiter_of(st, t, why, name);
  send_settled(st); // now: no flush message runs after quit
  self->quit(msg.reason);
}

void on_down(self_ptr self, const caf::down_msg& dm) {
  auto& st = self->state;
  std::vector<std::string> outs, ins, reads, lanes;
  for (auto& [name, p] : st.out)
    if (p.ep.transfer && p.ep.transfer.address() == dm.source)
      outs.push_back(name);
  for (auto& [name, p] : st.reads)
    if (p.ep.transfer && p.ep.transfer.address() == dm.source)
      reads.push_back(name);
  for (auto& [name, p] : st.in) {
    if (p.sender && p.sender == dm.source)
      ins.push_back(name);
    else if (p.lane.sender && p.lane.sender.address() == dm.source)
      lanes.push_back(name);
  }
  auto why = fmt::format("its transfer actor is down ({})", render(dm.reason));
  for (auto& name : lanes)
    drop_lane_in(self, name, lost(name, why));
  for (auto& name : outs)
    drop_peer_out(self, name, lost(name, why));
  for (auto& name : reads)
    drop_reads(self, name, lost(name, why));
  for (auto& name : ins) {
    drop_peer_in(self, name, lost(name, why));
    release_quarantine_of(self, name, why);
  }
  std::vector<transfer_state::asked_hold> gone;
  for (auto& [token, a] : st.asked)
    if (a.sender == dm.source)
      gone.push_back(a);
  for (auto& a : gone)
    end_hold(self, a.peer, a.hold, why);
}

} // namespace
} // namespace transfer_detail

namespace {

using namespace transfer_detail;

transfer_actor::behavior_type transfer_impl(self_ptr self,
                                            transfer_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.me = self->address();
  // Only a loop that polls its comms itself can stay hot (the plugin's own
  // sleep would hold it otherwise): fixed for the actor's life.
  if (polls_itself(st))
    st.hot_window = hot_window_from_env(st.cfg.detached);
  st.regions = region_table_of(st.cfg);
  for (const auto& r : st.regions) {
    st.region_sizes.push_back(r->size());
    st.metrics.regions.add(1);
    st.metrics.registered_bytes.add(static_cast<std::int64_t>(r->size()));
  }
  advertise_ipc_handle(self->state);
  self->set_down_handler([self](caf::down_msg& dm) { on_down(self, dm); });
  self->set_exit_handler([self](caf::exit_msg& msg) { on_exit(self, msg); });
  return {
      [self](proto::endpoint_atom) { return endpoint_of(self); },
      [self](proto::order_batch_atom, proto::order_batch& b) {
        handle_order_batch(self, b);
      },
      [self](proto::settled_flush_atom) { send_settled(self->state); },
      [self](proto::send_atom, proto::send_order& o) {
        stage_stamps::stamp(stage_stamps::order_taken);
        auto r = handle_send(self, o);
        stage_stamps::stamp(stage_stamps::sends_posted);
        return r;
      },
      [self](proto::recv_atom, proto::recv_order& o) {
        stay_hot(self);
        return handle_recv(self, o);
      },
      [self](proto::recv_atom, proto::recv_order& o, std::uint64_t request_id,
             caf::actor& node) {
        stay_hot(self);
        return handle_recv_for_caller(self, o, request_id, node);
      },
      [self](proto::node_attach_atom, caf::actor& node) {
        self->state.node = std::move(node);
      },
      [self](proto::node_offer_atom, proto::pull_offer& offer) {
        hold_offer(self, offer);
      },
      [self](proto::node_pull_atom, proto::node_request& req) {
        stage_stamps::stamp(stage_stamps::pull_taken);
        stay_hot(self);
        auto r = handle_pull(self, req);
        stage_stamps::stamp(stage_stamps::order_sent);
        return r;
      },
      [self](proto::read_atom, proto::read_order& o) {
        return handle_read(self, o);
      },
      [self](proto::open_atom, const std::string& sender, std::uint32_t comms,
             std::uint64_t chunk) -> caf::result<std::vector<char>> {
        try {
          return handle_open(self, sender, comms, chunk);
        } catch (const std::exception& e) {
          return make_error(ec::plugin_error,
                            fmt::format("transfer {}: listening for '{}': {}",
                                        self->state.cfg.name, sender,
                                        e.what()));
        }
      },
      [self](proto::announce_atom, proto::announce_batch& b) {
        stage_stamps::stamp(stage_stamps::announce_taken);
        handle_announce_batch(self, b);
        stage_stamps::stamp(stage_stamps::recvs_posted);
      },
      [self](proto::closed_atom, const std::string& peer,
             std::uint64_t channel_id, const caf::error& why) {
        handle_closed(self, peer, channel_id, why);
      },
      [self](proto::landed_atom, const proto::landed& l) {
        handle_landed(self, l);
      },
      [self](proto::stats_atom) {
        auto s = self->state.stats;
        s.tracked = count_tracked(self->state);
        for (const auto& [name, p] : self->state.in)
          s.announced_waiting += p.waiting.size();
        return s;
      },
      [self](proto::ipc_hello_atom, const std::string& sender) {
        handle_ipc_hello(self, sender);
      },
      [self](proto::ipc_status_atom, const std::string& receiver,
             std::uint64_t id) {
        return handle_ipc_status(self, receiver, id);
      },
      [self](proto::settle_atom, const std::string& peer, std::uint64_t id) {
        return handle_settle(self, peer, id);
      },
      [self](proto::settle_atom, const std::string& peer, std::uint64_t id,
             caf::error& why) { settle_answer(self, peer, id, why); },
      [self](joined_atom, const worker_info& w) {
        map_ahead(self->state, w);
        if (w.transfer && w.name != self->state.cfg.name) {
          self->state.known_transfers[w.name] = w.transfer.address();
          ask_sender(self, w.name);
        }
      },
      [self](left_atom, const std::string& name, const caf::error& why) {
        auto err = lost(name, "the directory reports it left: " + render(why));
        drop_peer_out(self, name, err);
        drop_peer_in(self, name, err);
        drop_reads(self, name, err);
        forget_failures_from(self->state, name);
        // Only what nobody could ask about: a sender that was asked may
        // have lost no more than its lease and still run the kernel; it
        // answers when that ended, and its death ends the holds too.
        self->state.known_transfers.erase(name);
        release_quarantine_of(
            self, name, "the directory reports it left: " + render(why), true);
      },
      [self](proto::wake_atom) { on_wake(self); },
      [self](proto::progress_atom, std::uint64_t generation) {
        on_progress(self, generation);
      },
      [self](proto::sweep_atom) { on_sweep(self); },
      [self](proto::announce_flush_atom) { on_announce_flush(self); },
      [self](proto::region_add_atom, std::uint64_t address, std::uint64_t bytes,
             std::int32_t gpu) {
        return handle_add_region(self, address, bytes, gpu);
      },
      [self](proto::region_remove_atom, std::uint64_t index) {
        return handle_remove_region(self, index);
      },
  };
}

} // namespace

void refuse_orders(caf::local_actor* self, const proto::order_batch& b,
                   const std::string& who) {
  auto to = caf::actor_cast<caf::actor>(self->current_sender());
  if (!to)
    return;
  auto why = make_error(ec::invalid_argument,
                        fmt::format("{}: moves no bytes for an endpoint", who));
  std::vector<proto::order_settled> out;
  for (const auto& o : b.sends)
    out.push_back({o.peer.name, o.transfer_id, 0, false, why});
  caf::anon_send(to, proto::settled_atom::value, std::move(out));
}

data_path choose_data_path(bool use_ipc, memory_kind local,
                           const std::string& host_id,
                           const proto::endpoint& peer) {
  bool same_host = !host_id.empty() && host_id == peer.host_id;
  return use_ipc && local == memory_kind::cuda && same_host &&
                 !peer.ipc_handle.empty()
             ? data_path::cuda_ipc
             : data_path::plugin;
}

bool maps_ahead(const transfer_config& cfg, memory_kind local,
                const worker_info& peer) {
  return cfg.map_peers_ahead && peer.role == worker_role::decode &&
         peer.name != cfg.name && cfg.use_ipc && local == memory_kind::cuda &&
         !cfg.host_id.empty() && peer.host_id == cfg.host_id;
}

transfer_actor spawn_transfer(caf::actor_system& sys, transfer_config cfg) {
  transfer_detail::region_table_of(cfg); // refuse a bad table here
  if (!cfg.detached)
    return sys.spawn(transfer_impl, std::move(cfg));
  return sys.spawn<caf::detached>(transfer_impl, std::move(cfg));
}

} // namespace kvferry
