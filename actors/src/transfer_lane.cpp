// Pull lanes (transfer_state.hpp, lane_in / lane_out): offered pulls
// without an announcement.
//
// An announced transfer needs two CAF legs before its bytes: the decode's
// send order, then the prefill's announcement, because the plugin matches
// the k-th send with the k-th receive of a comm pair and the receiver must
// post its receives in the sender's order. An offered pull is planned by
// the decode's transfer actor itself (transfer_pull.cpp), so it knows the
// receives before the order leaves. A lane is a channel of its own from
// the prefill's transfer actor to the decode's that carries only these
// pulls: the decode posts each pull's receives on it, then sends the order;
// the prefill posts the order's sends on it in the order the orders come.
// CAF keeps the messages of one pair of actors in order, so both ends post
// in one order and no announcement is needed: one CAF leg, then the bytes.
// Pushes, wants (the prefill's node plans) and CUDA IPC stay announced on
// the peer's channel (transfer_net.cpp), which a lane never shares.
//
// Keeping both ends in step (no byte may land in another pull's blocks):
// - The decode makes the lane (it listens) and sends its handles with the
//   first order; the prefill connects. Every order names its lane.
// - A prefill that refuses an order on its lane (bad extents, an id in
//   flight) still posts one empty send per chunk the decode posted a
//   receive for: the decode's receives end short (a receive may be larger
//   than its send within one chunk), so it knows the order was refused, and
//   its caller gets the reason from the order's error reply.
// - An order for a lane the prefill does not have (gone, or never
//   connected) is refused with `closed` for that lane first: the decode
//   drops it (failing every pull posted on it) before the reply comes.
// - Whichever end drops a lane (a deadline, a plugin failure, the peer
//   gone) closes its comms (nothing posted on them lands afterwards) and
//   tells the other end (`closed`, as for channels); the decode makes a
//   new lane with its next pull.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>

#include <caf/all.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kvferry/actors/plan.hpp"
#include "kvferry/runtime/env_micros.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/transport/extent_lists.hpp"
#include "kvferry/transport/usable_cores.hpp"
#include "transfer_state.hpp"

namespace kvferry::transfer_detail {

using namespace std::chrono;

// ---- the decode's end (receiving)

namespace {

// Posts pull `id`'s receives on the accepted lane of `p`.
void post_lane_receives(self_ptr self, peer_in& p, std::uint64_t id,
                        const std::vector<extent>& chunks) {
  auto& st = self->state;
  auto& l = p.lane;
  auto& t = p.transfers[id];
  for (const auto& c : chunks) {
    const auto at = locate(c.dst_offset); // checked by post_lane_pull
    auto op = l.channel->post_recv(region_data(st, at.region, at.offset),
                                   c.length, l.regs[at.region]);
    l.ops.emplace(op, id);
    ++t.ops_left;
  }
}

// The lane to `peer`, made (listening) when there is none; nullptr when
// the plugin cannot listen.
lane_in* lane_to(self_ptr self, const std::string& peer,
                 const caf::actor& sender) {
  auto& st = self->state;
  auto& l = st.in[peer].lane;
  if (l.listener || l.channel)
    return &l;
  try {
    l.listener = std::make_unique<channel_listener>(
        st.cfg.net, st.cfg.devices,
        options_for(st, peer, st.cfg.comms_per_peer, st.cfg.chunk_bytes));
  } catch (const std::exception& e) {
    spdlog::warn("transfer {}: no pull lane from '{}' (pulls go announced): "
                 "{}",
                 st.cfg.name, peer, e.what());
    return nullptr;
  }
  std::vector<char> flat;
  for (const auto& h : l.listener->handles())
    flat.insert(flat.end(), h.begin(), h.end());
  l.id = channel_id_of(flat);
  l.handles_to_send = std::move(flat);
  l.sender = sender;
  self->monitor(sender); // its death drops the lane (on_down)
  l.accept_deadline =
      steady_clock::now() + milliseconds(st.cfg.open_timeout_ms);
  return &l;
}

} // namespace

bool pull_lanes_from_env() {
  const char* text = std::getenv("KVFERRY_PULL_LANES");
  return text != nullptr && std::string{text} == "1";
}

bool wake_from_env() {
  const char* text = std::getenv("KVFERRY_WAKE");
  return text == nullptr || std::string{text} != "0";
}

microseconds hot_window_for(unsigned cores, bool detached) {
  // A detached transfer actor (a worker's, a node's) on 8 cores or more
  // stays hot for 1 ms: a pull's wait for its announcement (two CAF legs,
  // ~100 us) and the gap to the next request of a busy server. Measured on
  // H100 hosts (docs/benchmarks.md, 2026-12-07): a 1-block pull's control
  // time fell from 1.06-1.61x the CAF round trip to 1.00-1.13x in 16 of 18
  // runs on five machines (250 us: 1.25-1.34x). Below 8 cores it is off by
  // default: on 2 cores it still makes that pull 38-43 % faster (the hot
  // loop yields), but at ~1.6x the CPU on a machine whose other work it
  // slows. kvferry::endpoint's transfer actor shares its scheduler thread
  // with the control actor: there the window bought no latency and cost
  // 2-3x the CPU per write, so it stays off.
  return detached && cores >= 8 ? microseconds(1000) : microseconds(0);
}

microseconds hot_window_from_env(bool detached) {
  return runtime::env_micros(
      "KVFERRY_HOT_US", hot_window_for(transport::usable_cores(), detached),
      seconds(1));
}

bool polls_itself(const transfer_state& st) {
  if (st.pull_lanes)
    return true;
  const auto* ext = st.cfg.net ? st.cfg.net->ext() : nullptr;
  return st.wake_env && ext != nullptr && ext->getWaitFd != nullptr;
}

bool lane_fits(self_ptr self, const proto::endpoint& src) {
  const auto& st = self->state;
  if (!st.pull_lanes)
    return false;
  // The prefill takes CUDA IPC only to a peer on its host that exports a
  // handle (choose_data_path): such a pull keeps its announced path.
  bool ipc_possible = !st.cfg.host_id.empty() &&
                      st.cfg.host_id == src.host_id && !st.ipc_handle.empty();
  return st.cfg.net && !ipc_possible;
}

bool post_lane_pull(self_ptr self, const std::string& peer, std::uint64_t id,
                    const caf::actor& sender, proto::send_order& o) {
  auto& st = self->state;
  if (o.extents.empty() || st.in[peer].transfers.count(id) != 0 ||
      check_table_extents(o.extents, extent_side::destination, st.region_sizes))
    return false; // the announced path answers these
  auto* l = lane_to(self, peer, sender);
  if (l == nullptr)
    return false;
  auto chunks = coalesce(o.extents); // as the prefill's, from the same list
  auto& t = st.in[peer].transfers[id];
  t.on_lane = true;
  t.posted = true; // its bytes may land from now on
  t.expected = total_bytes(chunks);
  try {
    if (l->channel)
      post_lane_receives(self, st.in[peer], id, chunks);
    else
      l->waiting.push_back({id, std::move(chunks)});
  } catch (const std::exception& e) {
    st.in[peer].transfers.erase(id); // not claimed: nobody to tell
    drop_lane_in(self, peer,
                 make_error(ec::plugin_error,
                            fmt::format("receive from '{}' on its pull lane: "
                                        "{}",
                                        peer, e.what())));
    return false;
  }
  o.lane = l->id;
  if (!l->handles_to_send.empty()) {
    o.lane_handles = std::move(l->handles_to_send);
    l->handles_to_send.clear();
    o.lane_comms = st.cfg.comms_per_peer;
    o.lane_chunk = st.cfg.chunk_bytes;
  }
  ++st.stats.lane_pulls;
  ensure_progress(self);
  return true;
}

void settle_short(self_ptr self, const std::string& peer, std::uint64_t id) {
  auto& st = self->state;
  auto p = st.in.find(peer);
  if (p == st.in.end())
    return;
  auto t = p->second.transfers.find(id);
  if (t == p->second.transfers.end() || !t->second.short_landed ||
      !t->second.waiter)
    return;
  auto* caller = std::get_if<answer_waiter>(&*t->second.waiter);
  if (caller == nullptr || !caller->failure)
    return; // its reason is on its way (the order's error reply)
  fail(t->second, st, caller->failure, peer);
  p->second.transfers.erase(t);
}

void drop_lane_in(self_ptr self, const std::string& peer,
                  const caf::error& err) {
  auto& st = self->state;
  auto i = st.in.find(peer);
  if (i == st.in.end() || (!i->second.lane.listener && !i->second.lane.channel))
    return;
  auto& p = i->second;
  auto& l = p.lane;
  tell_closed(self, l.sender, l.id, err); // before any failure reply leaves
  std::size_t failed = 0;
  for (auto it = p.transfers.begin(); it != p.transfers.end();) {
    if (!it->second.on_lane) {
      ++it;
      continue;
    }
    if (!it->second.done && !it->second.failure) {
      fail(it->second, st, err, peer);
      ++failed;
    }
    it = p.transfers.erase(it);
  }
  spdlog::log(failed > 0 ? spdlog::level::warn : spdlog::level::info,
              "transfer {}: dropping the pull lane from '{}' ({} pulls "
              "failed): {}",
              st.cfg.name, peer, failed, render(err));
  l.ops.clear();
  l.waiting.clear();
  l.regs.clear(); // before the channel they belong to
  l.channel.reset();
  l.listener.reset();
  l.handles_to_send.clear();
  l.id = 0;
  l.sender = caf::actor{};
}

namespace {

// A receive of pull `id` on the lane of `p` ended with `bytes`.
void on_lane_receive(self_ptr self, const std::string& name, peer_in& p,
                     std::uint64_t id, std::size_t bytes) {
  auto t = p.transfers.find(id);
  if (t == p.transfers.end())
    return;
  auto& e = t->second;
  // No announcement: the data window opens when the first bytes landed.
  if (e.announced == steady_clock::time_point{})
    e.announced = steady_clock::now();
  e.bytes += bytes;
  if (--e.ops_left != 0)
    return;
  if (e.bytes == e.expected) {
    finish(e, self->state, true, name);
    if (!e.waiter) // answered (always claimed: post_lane_pull's caller)
      p.transfers.erase(t);
    return;
  }
  e.short_landed = true; // refused: fails with the prefill's reason
  settle_short(self, name, id);
}

} // namespace

bool progress_lane_in(self_ptr self, const std::string& name, peer_in& p,
                      std::optional<caf::error>& failure) {
  auto& st = self->state;
  auto& l = p.lane;
  bool progressed = false;
  if (l.listener) {
    if (l.listener->try_accept()) {
      l.channel.emplace(l.listener->take());
      l.listener.reset();
      l.regs = register_regions(st, *l.channel);
      progressed = true;
      for (; !l.waiting.empty(); l.waiting.pop_front())
        post_lane_receives(self, p, l.waiting.front().id,
                           l.waiting.front().chunks);
    } else if (steady_clock::now() > l.accept_deadline) {
      failure = make_error(ec::timeout,
                           fmt::format("'{}' did not connect its pull lane "
                                       "within {} ms",
                                       name, st.cfg.open_timeout_ms));
      return progressed;
    }
  }
  if (!l.channel)
    return progressed;
  l.channel->poll([&](const transport::completion& c) {
    progressed = true;
    auto op = l.ops.find(c.id);
    if (op == l.ops.end())
      return;
    auto id = op->second;
    l.ops.erase(op);
    if (!c.ok) {
      if (!failure)
        failure = lost(name, fmt::format("a receive of pull {} on its pull "
                                         "lane failed: {}",
                                         id, c.error ? c.error : "?"));
      return;
    }
    on_lane_receive(self, name, p, id, c.bytes);
  });
  return progressed;
}

bool lane_has_work(const lane_in& l) {
  return l.listener || !l.ops.empty();
}

// ---- the prefill's end (sending)

namespace {

// Connects to the decode's new lane (the first order of a lane carries its
// handles). An error when the handles or the plugin refuse.
caf::error open_lane_out(self_ptr self, const std::string& peer, peer_out& p,
                         const proto::send_order& o) {
  auto& st = self->state;
  if (p.lane.connector || p.lane.channel) { // the decode dropped it already
    p.lane.id = 0;                          // (it tells before it makes one)
    drop_lane_out(self, peer, lost(peer, "it made a new pull lane"));
  }
  const auto n = o.lane_handles.size() / NCCL_NET_HANDLE_MAXSIZE;
  if (n == 0 || n != o.lane_comms ||
      o.lane_handles.size() % NCCL_NET_HANDLE_MAXSIZE != 0)
    return make_error(ec::invalid_argument,
                      fmt::format("transfer {}: pull lane from '{}': {} bytes "
                                  "of handles for {} comms",
                                  st.cfg.name, peer, o.lane_handles.size(),
                                  o.lane_comms));
  std::vector<transport::net_handle> handles(n);
  for (std::size_t k = 0; k < n; ++k)
    std::memcpy(handles[k].data(),
                o.lane_handles.data() + k * NCCL_NET_HANDLE_MAXSIZE,
                NCCL_NET_HANDLE_MAXSIZE);
  try {
    p.lane.connector = std::make_unique<channel_connector>(
        st.cfg.net, st.cfg.devices, std::move(handles),
        options_for(st, peer, o.lane_comms, o.lane_chunk));
  } catch (const std::exception& e) {
    return make_error(ec::plugin_error,
                      fmt::format("transfer {}: connecting the pull lane of "
                                  "'{}': {}",
                                  st.cfg.name, peer, e.what()));
  }
  p.lane.id = channel_id_of(o.lane_handles);
  p.lane.connect_deadline =
      steady_clock::now() + milliseconds(st.cfg.open_timeout_ms);
  return {};
}

// Any registration of the lane: an empty send needs one.
const registration& any_registration(const lane_out& l) {
  for (const auto& r : l.regs)
    if (r.valid())
      return r;
  throw std::runtime_error("no region left to post an empty send from");
}

// Posts `s` on the connected lane of `p`: its chunks, or for a refused
// order one empty send per chunk of each receive the decode posted.
void post_lane_sends(self_ptr self, peer_out& p, const lane_out::send& s) {
  auto& st = self->state;
  auto& l = p.lane;
  auto t = p.transfers.find(s.id);
  if (s.refused || t == p.transfers.end() || !t->second.on_lane) {
    const auto& reg = any_registration(l);
    const auto step = l.channel->options().chunk_bytes;
    for (const auto& c : s.chunks)
      for (auto k = std::max<std::uint64_t>(1, (c.length + step - 1) / step);
           k > 0; --k)
        l.channel->post_send(reg.data(), 0, reg);
    return;
  }
  for (const auto& c : s.chunks) {
    const auto at = locate(c.src_offset); // checked by handle_lane_send
    auto op = l.channel->post_send(region_data(st, at.region, at.offset),
                                   c.length, l.regs[at.region]);
    l.ops.emplace(op, s.id);
    ++t->second.ops_left;
  }
  t->second.posted = true;
  if (t->second.ops_left == 0) { // nothing to send (the decode posts none)
    finish(t->second, st, false, p.ep.name);
    p.transfers.erase(t);
  }
}

void queue_lane_send(self_ptr self, const std::string& peer, peer_out& p,
                     lane_out::send s) {
  try {
    if (p.lane.channel)
      post_lane_sends(self, p, s);
    else
      p.lane.waiting.push_back(std::move(s));
  } catch (const std::exception& e) {
    drop_lane_out(self, peer,
                  make_error(ec::plugin_error,
                             fmt::format("send to '{}' on its pull lane: {}",
                                         peer, e.what())));
  }
  ensure_progress(self);
}

// Why the prefill refuses the order (none: it sends).
caf::error refusal_of(transfer_state& st, const peer_out& p,
                      const proto::send_order& o) {
  const auto& peer = o.peer.name;
  if (o.wait_event != 0)
    return make_error(ec::invalid_argument,
                      fmt::format("send order {} to '{}': a pull lane's order "
                                  "waits for no event",
                                  o.transfer_id, peer));
  if (p.transfers.count(o.transfer_id) != 0)
    return make_error(ec::duplicate,
                      fmt::format("transfer {} to '{}' is already in flight",
                                  o.transfer_id, peer));
  if (auto bad = check_send_extents(st, o))
    return make_error(
        ec::invalid_extent,
        fmt::format("send order {} to '{}': {}", o.transfer_id, peer, *bad));
  return {};
}

} // namespace

caf::result<std::uint64_t> handle_lane_send(self_ptr self,
                                            proto::send_order& o) {
  auto& st = self->state;
  const auto peer = o.peer.name;
  auto& p = st.out[peer];
  adopt_peer(self, p, o.peer);
  if (!o.lane_handles.empty())
    if (auto err = open_lane_out(self, peer, p, o)) {
      tell_closed(self, o.peer.transfer, o.lane, err);
      return err;
    }
  if (p.lane.id != o.lane) {
    // Not in step (its receives were posted on a lane we do not have): the
    // decode drops that lane, failing this pull, before this reply comes.
    auto err = lost(peer, fmt::format("pull {} came on a pull lane this end "
                                      "does not have (dropped, or never "
                                      "connected)",
                                      o.transfer_id));
    tell_closed(self, o.peer.transfer, o.lane, err);
    return err;
  }
  // In step: from here every order posts a send per receive the decode
  // posted, refused or not.
  lane_out::send s{o.transfer_id, coalesce(o.extents), false};
  if (auto why = refusal_of(st, p, o)) {
    s.refused = true;
    queue_lane_send(self, peer, p, std::move(s));
    return why;
  }
  auto promise = self->make_response_promise<std::uint64_t>();
  auto& t = p.transfers[o.transfer_id];
  t.on_lane = true;
  t.expected = total_bytes(s.chunks);
  t.waiter = waiter_promise{promise};
  arm_deadline(self, milliseconds(o.timeout_ms), t.deadline);
  transport::extent_lists::give(std::move(o.extents)); // coalesced: reused
  queue_lane_send(self, peer, p, std::move(s));
  return promise;
}

void drop_lane_out(self_ptr self, const std::string& peer,
                   const caf::error& err) {
  auto& st = self->state;
  auto i = st.out.find(peer);
  if (i == st.out.end() ||
      (!i->second.lane.connector && !i->second.lane.channel))
    return;
  auto& p = i->second;
  auto& l = p.lane;
  tell_closed(self, p.ep.transfer, l.id, err); // before any failure reply
  std::size_t failed = 0;
  for (auto it = p.transfers.begin(); it != p.transfers.end();) {
    if (!it->second.on_lane) {
      ++it;
      continue;
    }
    if (!it->second.done) {
      fail(it->second, st, err, peer);
      ++failed;
    }
    it = p.transfers.erase(it);
  }
  spdlog::log(failed > 0 ? spdlog::level::warn : spdlog::level::info,
              "transfer {}: dropping the pull lane to '{}' ({} sends "
              "failed): {}",
              st.cfg.name, peer, failed, render(err));
  l.ops.clear();
  l.waiting.clear();
  l.regs.clear(); // before the channel they belong to
  l.channel.reset();
  l.connector.reset();
  l.id = 0;
}

bool progress_lane_out(self_ptr self, const std::string& name, peer_out& p,
                       std::optional<caf::error>& failure) {
  auto& st = self->state;
  auto& l = p.lane;
  bool progressed = false;
  if (l.connector) {
    if (l.connector->try_connect()) {
      l.channel.emplace(l.connector->take());
      l.connector.reset();
      l.regs = register_regions(st, *l.channel);
      st.stats.comms_opened +=
          static_cast<std::uint64_t>(l.channel->comm_count());
      progressed = true;
      for (; !l.waiting.empty(); l.waiting.pop_front())
        post_lane_sends(self, p, l.waiting.front());
    } else if (steady_clock::now() > l.connect_deadline) {
      failure = make_error(ec::timeout,
                           fmt::format("connecting the pull lane of '{}' took "
                                       "more than {} ms",
                                       name, st.cfg.open_timeout_ms));
      return progressed;
    }
  }
  if (!l.channel)
    return progressed;
  l.channel->poll([&](const transport::completion& c) {
    progressed = true;
    auto op = l.ops.find(c.id);
    const bool empty_send = op == l.ops.end(); // of a refused order
    const std::uint64_t id = empty_send ? 0 : op->second;
    if (!empty_send)
      l.ops.erase(op);
    if (!c.ok) { // an empty send's too: the lane is out of step
      if (!failure)
        failure = lost(name, fmt::format("a send on its pull lane failed: {}",
                                         c.error ? c.error : "?"));
      return;
    }
    if (empty_send)
      return;
    auto t = p.transfers.find(id);
    if (t == p.transfers.end())
      return;
    t->second.bytes += c.bytes;
    if (--t->second.ops_left == 0) {
      finish(t->second, st, false, name);
      p.transfers.erase(t);
    }
  });
  return progressed;
}

bool lane_has_work(const lane_out& l) {
  return l.connector || !l.ops.empty() || !l.waiting.empty();
}

} // namespace kvferry::transfer_detail
