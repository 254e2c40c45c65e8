// The node actor (actors.hpp, node_actor): the request bookkeeping of one
// kvferry::node. It plans (plan_kv, from the two sides' layouts) and posts
// send and recv orders to its transfer actor, which moves the bytes; peers
// are other node actors, met by hello (connect or the directory).
#include <algorithm>
#include <chrono>
#include <exception>
#include <optional>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kvferry/actors/app.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/steady_ns.hpp"
#include "node_state.hpp"

namespace kvferry {

namespace {

using self_ptr = node_actor::stateful_pointer<node_state>;

// Notifications kept while the caller has no listener.
constexpr std::size_t max_kept_notes = 4096;

caf::error node_error(self_ptr self, ec code, const std::string& what) {
  return make_error(code,
                    fmt::format("node {}: {}", self->state.cfg.name, what));
}

proto::node_hello hello_of(self_ptr self) {
  return {self->state.cfg.name, caf::actor_cast<caf::actor>(self),
          self->state.cfg.self, describe_layout(self->state.cfg.layout)};
}

// ---- peers

// Records a peer's hello (monitoring its node actor); an error when its
// name or cache does not fit ours.
caf::error add_peer(self_ptr self, const proto::node_hello& h) {
  auto& st = self->state;
  if (h.name == st.cfg.name)
    return node_error(self, ec::duplicate,
                      fmt::format("peer node has our name '{}'", h.name));
  kv_layout layout;
  try {
    layout = layout_of(h.layout);
  } catch (const std::exception& e) {
    return node_error(self, ec::mismatch,
                      fmt::format("peer node '{}': {}", h.name, e.what()));
  }
  if (layout.layers() != st.cfg.layout.layers() ||
      layout.block_bytes() != st.cfg.layout.block_bytes())
    return node_error(
        self, ec::mismatch,
        fmt::format("peer node '{}' caches {} layers of {}-byte block halves, "
                    "this node {} of {}",
                    h.name, layout.layers(), layout.block_bytes(),
                    st.cfg.layout.layers(), st.cfg.layout.block_bytes()));
  self->monitor(h.node);
  auto why_not = why_not_one_sided(st.cfg.self, h.transfer);
  spdlog::debug("node {}: pulls from '{}' take {}", st.cfg.name, h.name,
                why_not.empty() ? "one-sided CUDA IPC reads"
                                : "the plugin path (" + why_not + ")");
  st.peers[h.name] = node_peer{caf::actor_cast<node_actor>(h.node), h.transfer,
                               std::move(layout), why_not.empty()};
  st.gone.erase(h.name);
  return {};
}

const node_peer* find_peer(self_ptr self, const std::string& name) {
  auto i = self->state.peers.find(name);
  return i == self->state.peers.end() ? nullptr : &i->second;
}

caf::error unknown_peer(self_ptr self, const std::string& name) {
  if (auto i = self->state.gone.find(name); i != self->state.gone.end())
    return i->second;
  return node_error(self, ec::not_found,
                    fmt::format("no peer node '{}' (connect to it first, or "
                                "it is not in the directory)",
                                name));
}

void remember_gone(self_ptr self, const std::string& name,
                   const caf::error& why) {
  auto& gone = self->state.gone;
  if (gone.size() >= node_state::gone_limit && gone.count(name) == 0)
    gone.erase(gone.begin()); // any one: only a late order's reason is lost
  gone[name] = why;
}

caf::error check_blocks(self_ptr self, const std::vector<std::uint64_t>& ids,
                        std::uint64_t id) {
  auto n = self->state.cfg.layout.num_blocks();
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (ids[i] >= n)
      return node_error(self, ec::invalid_argument,
                        fmt::format("request {}: block id #{} is {}, past "
                                    "this cache's {} blocks",
                                    id, i, ids[i], n));
  return {};
}

// What every request checks first, sending or receiving: its peer is
// connected and its block ids lie in this cache.
caf::error check_request(self_ptr self, const proto::node_request& req) {
  if (find_peer(self, req.peer) == nullptr)
    return unknown_peer(self, req.peer);
  return check_blocks(self, req.blocks, req.id);
}

// Plans part `part` of a request (0: every layer; else layer part - 1) into
// st.scratch. Throws what plan_kv throws.
void plan_part(node_state& st, const kv_layout& src,
               const std::vector<std::uint64_t>& src_blocks,
               const kv_layout& dst,
               const std::vector<std::uint64_t>& dst_blocks,
               std::uint32_t part) {
  std::optional<std::uint32_t> layer;
  if (part > 0)
    layer = part - 1;
  st.scratch.clear();
  plan_kv(src, src_blocks, dst, dst_blocks, layer, st.scratch);
}

// ---- the sending side (send, advertise)

void fail_outgoing(self_ptr self, const request_key& key, caf::error why,
                   bool tell_peer = true) {
  auto& st = self->state;
  auto i = st.out.find(key);
  if (i == st.out.end())
    return;
  if (i->second.promise)
    i->second.promise->deliver(why);
  st.out.erase(i);
  if (tell_peer)
    if (auto* peer = find_peer(self, key.first))
      self->send(peer->node, proto::node_fail_atom::value, st.cfg.name,
                 key.second, why);
}

void on_part_sent(self_ptr self, const request_key& key, std::uint64_t bytes) {
  auto& st = self->state;
  auto i = st.out.find(key);
  if (i == st.out.end())
    return; // failed meanwhile
  auto& r = i->second;
  r.bytes += bytes;
  r.end_ns = runtime::steady_ns();
  if (++r.parts_done < r.parts)
    return;
  if (r.promise)
    r.promise->deliver(
        proto::node_report{key.second, r.bytes, r.start_ns, r.end_ns, false});
  st.out.erase(i);
}

// ---- one-sided pull, prefill side: ready notes, no send orders

void send_ready_note(self_ptr self, const request_key& key, outgoing_request& r,
                     std::uint32_t part, std::string event) {
  auto& st = self->state;
  auto* peer = find_peer(self, key.first);
  if (peer == nullptr)
    return fail_outgoing(self, key, unknown_peer(self, key.first), false);
  proto::node_ready note{key.second, st.cfg.name, part,
                         r.parts,    {},          std::move(event)};
  if (!std::exchange(r.blocks_told, true))
    note.blocks = r.src_blocks; // the first note only: they arrive in order
  self->send(peer->node, proto::node_ready_atom::value, std::move(note));
}

void start_polling(self_ptr self) {
  if (std::exchange(self->state.polling, true))
    return;
  self->delayed_send(self, std::chrono::microseconds(20),
                     proto::node_poll_atom::value);
}

// Tells the puller that part `part` may be read. A layer's CUDA event goes
// with the note when it is an interprocess one (the puller's copy waits for
// it on the GPU); any other event is polled here before the note goes.
void post_ready_note(self_ptr self, const request_key& key, outgoing_request& r,
                     std::uint32_t part) {
  r.posted[part] = true;
  if (r.start_ns == 0)
    r.start_ns = runtime::steady_ns();
  std::string text;
  if (auto event = part > 0 ? r.events[part - 1] : 0; event != 0) {
    try {
      text = transport::export_ipc_event(event, self->state.cfg.self.gpu);
    } catch (const std::exception&) {
      self->state.held.push_back({key, part, event});
      return start_polling(self);
    }
  }
  send_ready_note(self, key, r, part, std::move(text));
}

// Sends the held notes whose event completed; polls again while any wait.
void poll_held_notes(self_ptr self) {
  auto& st = self->state;
  st.polling = false;
  for (std::size_t k = 0; k < st.held.size();) {
    auto h = st.held[k];
    if (auto i = st.out.find(h.key); i != st.out.end()) {
      try {
        if (!transport::gpu_event_done(h.event)) {
          ++k;
          continue;
        }
        send_ready_note(self, h.key, i->second, h.part, {});
      } catch (const std::exception& e) {
        fail_outgoing(self, h.key,
                      node_error(self, ec::cuda_error,
                                 fmt::format("request {} to '{}': layer {}'s "
                                             "CUDA event: {}",
                                             h.key.second, h.key.first,
                                             h.part - 1, e.what())));
      }
    }
    st.held.erase(st.held.begin() + static_cast<std::ptrdiff_t>(k));
  }
  if (!st.held.empty())
    start_polling(self);
}

// The puller has every part (read, or landed after it ordered our transfer
// actor itself): the source blocks are free.
void on_pull_done(self_ptr self, const std::string& from,
                  const proto::node_report& rep) {
  auto& st = self->state;
  auto i = st.out.find({from, rep.id});
  if (i == st.out.end() || !(i->second.one_sided || i->second.offered))
    return;
  if (i->second.promise)
    i->second.promise->deliver(rep);
  st.out.erase(i);
}

// ---- the sending side's posts

// Plans part `part` (0: every layer; else layer part - 1) and posts it: the
// send order to our transfer actor, the part note to the peer node, whose
// recv order then waits for it. One-sided: the ready note only.
void post_part(self_ptr self, const request_key& key, outgoing_request& r,
               std::uint32_t part) {
  if (r.one_sided)
    return post_ready_note(self, key, r, part);
  auto& st = self->state;
  auto* peer = find_peer(self, key.first);
  if (peer == nullptr)
    return fail_outgoing(self, key, unknown_peer(self, key.first), false);
  proto::send_order o;
  try {
    plan_part(st, st.cfg.layout, r.src_blocks, peer->layout, r.dst_blocks,
              part);
  } catch (const std::exception& e) {
    return fail_outgoing(
        self, key,
        node_error(self, ec::invalid_argument,
                   fmt::format("request {} to '{}': {}", key.second, key.first,
                               e.what())));
  }
  o.transfer_id = transfer_id_of(key.second, part);
  o.peer = peer->transfer;
  o.extents = st.scratch;
  o.timeout_ms = st.cfg.timeout_ms;
  if (part > 0)
    o.wait_event = r.events[part - 1];
  r.posted[part] = true;
  if (r.start_ns == 0)
    r.start_ns = runtime::steady_ns();
  self->send(peer->node, proto::node_part_atom::value,
             proto::node_part{key.second, st.cfg.name, part, r.parts});
  self->request(st.cfg.transfer, caf::infinite, proto::send_atom::value,
                std::move(o))
      .then(
          [self, key](std::uint64_t bytes) { on_part_sent(self, key, bytes); },
          [self, key](caf::error& err) {
            fail_outgoing(self, key, std::move(err));
          });
}

// Posts every part that may go now: the caller advertised or sent, the
// destination is known and (layerwise) the layer is written.
void post_ready_parts(self_ptr self, const request_key& key) {
  auto i = self->state.out.find(key);
  if (i == self->state.out.end())
    return;
  auto& r = i->second;
  if (!r.advertised || !r.want_known)
    return;
  for (std::uint32_t part = r.layerwise ? 1 : 0; part < r.posted.size();
       ++part) {
    if (r.posted[part] || (r.layerwise && !r.ready[part - 1]))
      continue;
    post_part(self, key, r, part);
    if (self->state.out.count(key) == 0)
      return; // planning failed it
  }
}

caf::result<proto::node_report>
start_outgoing(self_ptr self, proto::node_request& req, bool push) {
  auto& st = self->state;
  if (auto err = check_request(self, req))
    return err;
  const auto* peer = find_peer(self, req.peer);
  request_key key{req.peer, req.id};
  auto& r = st.out[key];
  if (r.advertised)
    return node_error(
        self, ec::duplicate,
        fmt::format("request {} to '{}' is already open", req.id, req.peer));
  auto promise = self->make_response_promise<proto::node_report>();
  r.promise = promise;
  r.advertised = true;
  r.layerwise = req.layerwise; // a push streams too (node_layer_atom)
  r.src_blocks = std::move(req.blocks);
  if (push) {
    r.dst_blocks = std::move(req.peer_blocks);
    r.want_known = true;
  } else if (peer->one_sided) {
    r.one_sided = true; // the puller plans; it sends no want
    r.want_known = true;
  }
  auto layers = st.cfg.layout.layers();
  r.parts = r.layerwise ? layers : 1;
  r.posted.assign(r.layerwise ? layers + 1 : 1, false);
  r.ready.assign(layers, false);
  r.events.assign(layers, 0);
  if (!push && !r.one_sided && !r.layerwise && !r.want_known) {
    // Offered: the puller plans and orders our transfer actor itself, which
    // takes this node off the pull's path; a want (it pulled before the
    // offer came) posts here instead.
    r.offered = true;
    self->send(
        peer->node, proto::node_offer_atom::value,
        proto::node_request{req.id, st.cfg.name, r.src_blocks, {}, false});
    return promise;
  }
  post_ready_parts(self, key);
  return promise;
}

// A puller's want: the destination blocks of an advertised request (or of
// one the caller advertises later).
void on_want(self_ptr self, proto::node_request& want) {
  request_key key{want.peer, want.id};
  auto& r = self->state.out[key];
  r.dst_blocks = std::move(want.blocks);
  r.want_known = true;
  post_ready_parts(self, key);
}

caf::result<caf::ok_atom> on_layer_ready(self_ptr self, std::uint64_t id,
                                         std::uint32_t layer,
                                         std::uint64_t event) {
  auto& st = self->state;
  if (layer >= st.cfg.layout.layers())
    return node_error(self, ec::invalid_argument,
                      fmt::format("request {}: layer {} of a cache of {} "
                                  "layers",
                                  id, layer, st.cfg.layout.layers()));
  for (auto& [key, r] : st.out) {
    if (key.second != id || !r.advertised)
      continue;
    if (!r.layerwise)
      return node_error(self, ec::invalid_argument,
                        fmt::format("request {} was not advertised "
                                    "layerwise",
                                    id));
    r.ready[layer] = true;
    r.events[layer] = event;
    auto k = key; // post_ready_parts may erase the entry
    post_ready_parts(self, k);
    return caf::ok_atom::value;
  }
  return node_error(self, ec::not_found,
                    fmt::format("no advertised request {} is open", id));
}

// ---- the receiving side (receive, pull)

void finish_incoming(self_ptr self, const request_key& key) {
  auto& st = self->state;
  auto i = st.in.find(key);
  if (i == st.in.end() || !i->second.promise)
    return;
  auto& r = i->second;
  if (r.failure) {
    if (!r.unsettled.empty())
      return; // settle_order: the failure goes once none can write
    r.promise->deliver(r.failure);
  } else if (r.parts > 0 && r.parts_done == r.parts) {
    proto::node_report rep{key.second,  r.bytes,       r.start_ns,     r.end_ns,
                           r.one_sided, r.gpu_copy_ns, r.gpu_queued_ns};
    r.promise->deliver(rep);      // first: the caller waits, the prefill less
    if (r.one_sided || r.offered) // the prefill's source blocks are free
      if (auto* peer = find_peer(self, key.first))
        self->send(peer->node, proto::node_done_atom::value, st.cfg.name, rep);
  } else {
    return;
  }
  st.in.erase(i);
}

// Order `transfer_id` of the request can no longer write into its blocks.
void forget_order(self_ptr self, const request_key& key,
                  std::uint64_t transfer_id) {
  if (auto i = self->state.in.find(key); i != self->state.in.end())
    i->second.unsettled.erase(transfer_id);
}

void on_settled(self_ptr self, const request_key& key,
                std::uint64_t transfer_id) {
  forget_order(self, key, transfer_id);
  finish_incoming(self, key);
}

// Asks our transfer actor to settle order `transfer_id` of a failed request:
// a recv order whose bytes were not announced yet is given up, one whose
// bytes are on their way (or a read's kernel) is waited for. Bounded by the
// request timeout.
void settle_order(self_ptr self, const request_key& key,
                  std::uint64_t transfer_id) {
  auto& st = self->state;
  const auto* peer = find_peer(self, key.first);
  self->request(st.cfg.transfer, std::chrono::milliseconds(st.cfg.timeout_ms),
                proto::settle_atom::value,
                peer != nullptr ? peer->transfer.name : key.first, transfer_id)
      .then([self, key,
             transfer_id](caf::ok_atom) { on_settled(self, key, transfer_id); },
            [self, key, transfer_id](caf::error& err) {
              spdlog::warn("node {}: request {} from '{}': transfer {} of it "
                           "did not settle: {}",
                           self->state.cfg.name, key.second, key.first,
                           transfer_id, render(err));
              on_settled(self, key, transfer_id);
            });
}

// An offered pull whose caller our transfer actor answers failed: it
// answers with r.failure once the recv order settled (given up when not
// announced yet, else when its receives end; a gone peer's channel fails).
void fail_answered_by_transfer(self_ptr self, const request_key& key,
                               const incoming_request& r) {
  for (auto transfer_id : r.unsettled)
    self->send(self->state.cfg.transfer, proto::settle_atom::value, key.first,
               transfer_id, r.failure);
}

// False when there was nothing to fail (finished, or failed already). The
// caller hears of the failure once every order of the request settled,
// unless `settle` is off (the peer is gone: none of its bytes can come).
bool fail_incoming(self_ptr self, const request_key& key, caf::error why,
                   bool settle = true) {
  auto i = self->state.in.find(key);
  if (i == self->state.in.end() || i->second.failure)
    return false;
  auto& r = i->second;
  r.failure = std::move(why);
  if (r.transfer_answers) {
    fail_answered_by_transfer(self, key, r);
    return true;
  }
  if (!settle)
    r.unsettled.clear();
  for (auto transfer_id : r.unsettled)
    settle_order(self, key, transfer_id);
  finish_incoming(self, key);
  return true;
}

// A part landed (a recv order's or a read's report).
void on_landed(self_ptr self, const request_key& key,
               const proto::recv_report& rep) {
  auto i = self->state.in.find(key);
  if (i == self->state.in.end())
    return;
  auto& r = i->second;
  r.bytes += rep.bytes;
  r.start_ns = std::min(r.start_ns, proto::data_start_of(rep));
  r.end_ns = std::max(r.end_ns, rep.landed_ns);
  r.gpu_copy_ns += rep.gpu_copy_ns;
  r.gpu_queued_ns += rep.gpu_queued_ns;
  ++r.parts_done;
  finish_incoming(self, key);
}

// Fails the request here and tells the sending node (its blocks are free),
// once: an offered pull's send and recv orders may both fail.
void fail_and_tell(self_ptr self, const request_key& key,
                   const caf::error& err) {
  if (!fail_incoming(self, key, err))
    return;
  if (auto* peer = find_peer(self, key.first))
    self->send(peer->node, proto::node_fail_atom::value, self->state.cfg.name,
               key.second, err);
}

// ---- incoming entries a peer made before the caller asked

std::chrono::milliseconds unclaimed_limit(const node_state& st) {
  return std::chrono::milliseconds(st.cfg.timeout_ms);
}

void arm_sweep(self_ptr self) {
  if (std::exchange(self->state.sweeping, true))
    return;
  self->delayed_send(self, unclaimed_limit(self->state),
                     proto::sweep_atom::value);
}

// The entry for `key`, made (and timed) by a peer's note when new.
incoming_request& noted_entry(self_ptr self, const request_key& key) {
  auto [i, fresh] = self->state.in.try_emplace(key);
  if (fresh) {
    i->second.noted = self->clock().now();
    arm_sweep(self);
  }
  return i->second;
}

// Drops the entries no caller claimed within the request timeout: their
// sender has given up by then (its own orders carry the same timeout).
void sweep_unclaimed(self_ptr self) {
  auto& st = self->state;
  st.sweeping = false;
  auto now = self->clock().now();
  bool more = false;
  for (auto i = st.in.begin(); i != st.in.end();) {
    auto& r = i->second;
    if (r.claimed() || r.noted == caf::actor_clock::time_point{}) {
      ++i;
    } else if (now - r.noted >= unclaimed_limit(st)) {
      spdlog::debug("node {}: request {} from '{}' unclaimed for {} ms: "
                    "dropped",
                    st.cfg.name, i->first.second, i->first.first,
                    st.cfg.timeout_ms);
      i = st.in.erase(i);
    } else {
      more = true;
      ++i;
    }
  }
  if (more)
    arm_sweep(self);
}

// Orders our transfer actor to report part `part` of the request once it
// landed (once per part: the caller's receive and the part note both ask).
void post_recv(self_ptr self, const request_key& key, std::uint32_t part) {
  auto& st = self->state;
  auto& r = noted_entry(self, key);
  auto& posted = r.recv_posted;
  if (posted.size() <= part)
    posted.resize(part + 1, false);
  if (posted[part])
    return;
  posted[part] = true;
  proto::recv_order o;
  o.transfer_id = transfer_id_of(key.second, part);
  o.peer_name = key.first;
  o.timeout_ms = st.cfg.timeout_ms;
  r.unsettled.insert(o.transfer_id);
  self->request(st.cfg.transfer, caf::infinite, proto::recv_atom::value, o)
      .then(
          [self, key, tid = o.transfer_id](const proto::recv_report& rep) {
            forget_order(self, key, tid);
            on_landed(self, key, rep);
          },
          [self, key, tid = o.transfer_id](caf::error& err) {
            on_settled(self, key, tid); // failed: nothing more lands
            fail_and_tell(self, key, err);
          });
  if (r.failure) // a part note after the failure: its bytes must not land
    settle_order(self, key, o.transfer_id); // (after the order: in order)
}

void on_part(self_ptr self, const proto::node_part& p) {
  request_key key{p.sender, p.id};
  noted_entry(self, key).parts = p.parts;
  post_recv(self, key, p.part);
}

// ---- a request of one part over the plugin path: our transfer actor
// answers its caller

// Posts the request's one recv order (part 0) with the caller's request
// handed to our transfer actor (delegate): it answers the caller when the
// last byte landed, one hand-off fewer than through this actor, and tells
// us aside (on_answered). A failure goes the same way (fail_incoming).
caf::result<proto::node_report>
recv_answered_by_transfer(self_ptr self, const request_key& key,
                          incoming_request& r) {
  auto& st = self->state;
  proto::recv_order o{transfer_id_of(key.second, 0), key.first,
                      st.cfg.timeout_ms};
  r.transfer_answers = true;
  r.recv_posted.assign(1, true);
  r.unsettled.insert(o.transfer_id);
  return self->delegate(st.cfg.transfer, proto::recv_atom::value, std::move(o),
                        key.second, caf::actor_cast<caf::actor>(self));
}

// Our transfer actor answered the caller of a request of one part
// (recv_answered_by_transfer): the bookkeeping its reply used to pass
// through here. An offered pull's prefill hears that its source blocks are
// free; a failure of our side goes to the sender (unless it was told
// already, or told us).
void on_answered(self_ptr self, const std::string& peer,
                 const proto::node_report& rep, const caf::error& why) {
  auto& st = self->state;
  auto i = st.in.find({peer, rep.id});
  if (i == st.in.end() || !i->second.transfer_answers)
    return;
  bool failed_here = static_cast<bool>(i->second.failure);
  bool offered = i->second.offered;
  st.in.erase(i);
  auto* p = find_peer(self, peer);
  if (p == nullptr || failed_here)
    return;
  if (why)
    self->send(p->node, proto::node_fail_atom::value, st.cfg.name, rep.id, why);
  else if (offered)
    self->send(p->node, proto::node_done_atom::value, st.cfg.name, rep);
}

// ---- offered pull (plugin path): our transfer actor serves it

// Hands the prefill's offer to our transfer actor, which serves the
// caller's pull from now on (transfer_pull.cpp: it plans, orders the
// prefill's transfer actor and answers the caller): this actor is off the
// pull's path and hears of it aside (node_answered). The entry is answered
// there from now on, whether the caller pulls there or here (delegated).
void hand_offer(self_ptr self, const request_key& key, incoming_request& r,
                const node_peer& peer, std::vector<std::uint64_t> src_blocks) {
  auto& st = self->state;
  auto transfer_id = transfer_id_of(key.second, 0);
  r.offered = true;
  r.transfer_answers = true;
  r.parts = 1;
  r.recv_posted.assign(1, true);
  r.unsettled.insert(transfer_id);
  self->send(st.cfg.transfer, proto::node_offer_atom::value,
             proto::pull_offer{key.second, key.first, std::move(src_blocks),
                               describe_layout(peer.layout),
                               describe_layout(st.cfg.layout), peer.transfer,
                               caf::actor_cast<caf::actor>(peer.node),
                               st.cfg.name, st.cfg.timeout_ms});
}

// The prefill's offer of an advertised request. Moot when our want went
// first (the prefill posts then).
void on_offer(self_ptr self, proto::node_request& offer) {
  request_key key{offer.peer, offer.id};
  const auto* peer = find_peer(self, offer.peer);
  auto& r = noted_entry(self, key);
  if (peer == nullptr || r.failure || r.wanted || r.claimed())
    return;
  hand_offer(self, key, r, *peer, std::move(offer.blocks));
}

// Our transfer actor gives back an offer nobody pulled in time: forgotten,
// as an unclaimed entry is (sweep_unclaimed).
void on_offer_unpulled(self_ptr self, const std::string& peer,
                       std::uint64_t id) {
  auto& st = self->state;
  auto i = st.in.find({peer, id});
  if (i == st.in.end() || !i->second.offered)
    return;
  spdlog::debug("node {}: offered request {} from '{}' not pulled within {} "
                "ms: dropped",
                st.cfg.name, id, peer, st.cfg.timeout_ms);
  st.in.erase(i);
}

// ---- one-sided pull, decode side: reads over CUDA IPC

// Plans part `part` of a one-sided pull (the prefill's layout and blocks as
// source) and orders our transfer actor to read it; false when it failed.
bool post_read(self_ptr self, const request_key& key, incoming_request& r,
               const node_peer& peer, std::uint32_t part,
               const std::string& event) {
  auto& st = self->state;
  proto::read_order o;
  try {
    plan_part(st, peer.layout, r.src_blocks, st.cfg.layout, r.dst_blocks, part);
  } catch (const std::exception& e) {
    fail_and_tell(self, key,
                  node_error(self, ec::invalid_argument,
                             fmt::format("request {} from '{}': {}", key.second,
                                         key.first, e.what())));
    return false;
  }
  try {
    if (!event.empty())
      o.wait_event = st.events->open(event);
  } catch (const std::exception& e) {
    fail_and_tell(
        self, key,
        node_error(self, ec::cuda_error,
                   fmt::format("request {} from '{}': layer {}'s "
                               "CUDA event: {}",
                               key.second, key.first, part - 1, e.what())));
    return false;
  }
  o.transfer_id = transfer_id_of(key.second, part);
  o.peer = peer.transfer;
  o.extents = st.scratch;
  o.timeout_ms = st.cfg.timeout_ms;
  r.unsettled.insert(o.transfer_id);
  self->request(st.cfg.transfer, caf::infinite, proto::read_atom::value,
                std::move(o))
      .then(
          [self, key, tid = o.transfer_id](const proto::recv_report& rep) {
            forget_order(self, key, tid);
            on_landed(self, key, rep);
          },
          // Its kernel may still run (reading the prefill's blocks, writing
          // ours): it stays unsettled until our transfer actor's settle
          // says the kernel ended.
          [self, key](caf::error& err) { fail_and_tell(self, key, err); });
  return true;
}

// Reads the parts known ready, once the caller pulled.
void post_reads(self_ptr self, const request_key& key) {
  auto i = self->state.in.find(key);
  if (i == self->state.in.end() || !i->second.promise || i->second.failure)
    return;
  auto* peer = find_peer(self, key.first);
  if (peer == nullptr)
    return; // fail_peer failed it
  auto ready = std::move(i->second.ready);
  i->second.ready.clear();
  for (auto& [part, event] : ready)
    if (!post_read(self, key, i->second, *peer, part, event))
      return;
}

void on_ready(self_ptr self, proto::node_ready& note) {
  request_key key{note.sender, note.id};
  auto& r = noted_entry(self, key);
  if (r.failure)
    return;
  r.one_sided = true;
  r.parts = note.parts;
  if (!note.blocks.empty())
    r.src_blocks = std::move(note.blocks);
  r.ready.emplace_back(note.part, std::move(note.event));
  post_reads(self, key);
}

caf::result<proto::node_report>
start_incoming(self_ptr self, proto::node_request& req, bool pull) {
  auto& st = self->state;
  if (auto err = check_request(self, req))
    return err;
  const auto* peer = find_peer(self, req.peer);
  request_key key{req.peer, req.id};
  auto& r = st.in[key];
  if (pull && r.offered) // our transfer actor holds the offer: it serves it
    return self->delegate(st.cfg.transfer, proto::node_pull_atom::value,
                          std::move(req));
  if (r.claimed())
    return node_error(
        self, ec::duplicate,
        fmt::format("request {} from '{}' is already open", req.id, req.peer));
  if (!pull && !req.layerwise && !r.failure && r.recv_posted.empty()) {
    r.parts = 1; // a receive of one part no part note has posted yet
    return recv_answered_by_transfer(self, key, r);
  }
  auto promise = self->make_response_promise<proto::node_report>();
  r.promise = promise;
  if (pull && peer->one_sided) {
    r.one_sided = true; // no message: the prefill's ready notes come anyway
    r.dst_blocks = std::move(req.blocks);
    post_reads(self, key);
  } else if (pull) {
    r.wanted = true;
    self->send(peer->node, proto::node_want_atom::value,
               proto::node_request{
                   req.id, st.cfg.name, std::move(req.blocks), {}, false});
  } else if (!r.failure) {
    // A receive posts its recv orders at once (the parts the sender streams:
    // every layer if layerwise, else one), as early as the sender's part
    // notes could: our transfer actor knows of the request before its
    // bytes come.
    auto layers = st.cfg.layout.layers();
    r.parts = req.layerwise ? layers : 1;
    if (!req.layerwise)
      post_recv(self, key, 0);
    for (std::uint32_t part = 1; req.layerwise && part <= layers; ++part)
      post_recv(self, key, part);
  }
  finish_incoming(self, key); // its parts may have landed already
  return promise;
}

// ---- failures of whole peers

// Fails every request with `peer` (a node that died, left or stopped).
void fail_peer(self_ptr self, const std::string& peer, const caf::error& why) {
  auto& st = self->state;
  std::vector<request_key> outs, ins;
  for (auto& [key, r] : st.out)
    if (key.first == peer)
      outs.push_back(key);
  for (auto& [key, r] : st.in)
    if (key.first == peer)
      ins.push_back(key);
  for (auto& key : outs)
    fail_outgoing(self, key, why, false);
  for (auto& key : ins) {
    fail_incoming(self, key, why, false);
    auto i = st.in.find(key);
    if (i != st.in.end() && !i->second.claimed())
      st.in.erase(i); // nobody asked for it (yet): nobody will
  }
}

void on_peer_down(self_ptr self, const caf::down_msg& dm) {
  auto& st = self->state;
  for (auto i = st.peers.begin(); i != st.peers.end(); ++i) {
    if (i->second.node.address() != dm.source)
      continue;
    auto name = i->first;
    st.peers.erase(i);
    spdlog::warn("node {}: peer node '{}' is down: {}", st.cfg.name, name,
                 render(dm.reason));
    auto why = node_error(
        self, ec::peer_down,
        fmt::format("peer node '{}' is down: {}", name, render(dm.reason)));
    remember_gone(self, name, why);
    fail_peer(self, name, why);
    return;
  }
}

// The caller stops this node: what is open fails, naming this node.
void on_stop(self_ptr self, const caf::exit_msg& msg) {
  auto& st = self->state;
  auto why = node_error(self, ec::peer_down,
                        fmt::format("node '{}' stopped", st.cfg.name));
  for (auto& [key, r] : st.out)
    if (r.promise)
      r.promise->deliver(why);
  for (auto& [key, r] : st.in) {
    if (r.promise) {
      r.promise->deliver(why);
    } else if (r.transfer_answers && !r.failure) {
      r.failure = why;
      fail_answered_by_transfer(self, key, r);
    }
  }
  st.out.clear();
  st.in.clear();
  self->quit(msg.reason);
}

// ---- notifications

void deliver_notes(self_ptr self) {
  auto& st = self->state;
  while (st.listener && !st.notes.empty()) {
    auto& [from, payload] = st.notes.front();
    caf::anon_send(st.listener, proto::node_note_atom::value, std::move(from),
                   std::move(payload));
    st.notes.pop_front();
  }
}

void on_note(self_ptr self, std::string& from, std::string& payload) {
  auto& st = self->state;
  if (st.notes.size() == max_kept_notes) {
    spdlog::warn("node {}: {} notifications wait for a listener; dropping the "
                 "oldest (from '{}')",
                 st.cfg.name, max_kept_notes, st.notes.front().first);
    st.notes.pop_front();
  }
  st.notes.emplace_back(std::move(from), std::move(payload));
  deliver_notes(self);
}

node_actor::behavior_type node_impl(self_ptr self, node_actor_config cfg) {
  self->state.cfg = std::move(cfg);
  self->set_down_handler([self](caf::down_msg& dm) { on_peer_down(self, dm); });
  self->set_exit_handler([self](caf::exit_msg& msg) { on_stop(self, msg); });
  return {
      [self](proto::node_connect_atom,
             const caf::actor& peer) -> caf::result<std::string> {
        auto promise = self->make_response_promise<std::string>();
        self->request(peer,
                      std::chrono::milliseconds(self->state.cfg.timeout_ms),
                      proto::node_hello_atom::value, hello_of(self))
            .then(
                [self, promise](const proto::node_hello& h) mutable {
                  if (auto err = add_peer(self, h))
                    promise.deliver(std::move(err));
                  else
                    promise.deliver(h.name);
                },
                [self, promise](caf::error& err) mutable {
                  promise.deliver(
                      node_error(self, ec::unreachable,
                                 fmt::format("no hello from the peer node: {}",
                                             render(err))));
                });
        return promise;
      },
      [self](proto::node_hello_atom,
             const proto::node_hello& h) -> caf::result<proto::node_hello> {
        if (auto err = add_peer(self, h))
          return err;
        return hello_of(self);
      },
      [self](proto::node_send_atom, proto::node_request& req) {
        return start_outgoing(self, req, true);
      },
      [self](proto::node_advertise_atom, proto::node_request& req) {
        return start_outgoing(self, req, false);
      },
      [self](proto::node_layer_atom, std::uint64_t id, std::uint32_t layer,
             std::uint64_t event) {
        return on_layer_ready(self, id, layer, event);
      },
      [self](proto::node_receive_atom, proto::node_request& req) {
        return start_incoming(self, req, false);
      },
      [self](proto::node_pull_atom, proto::node_request& req) {
        return start_incoming(self, req, true);
      },
      [self](proto::node_want_atom, proto::node_request& want) {
        on_want(self, want);
      },
      [self](proto::node_offer_atom, proto::node_request& offer) {
        on_offer(self, offer);
      },
      [self](proto::node_offer_atom, const std::string& peer,
             std::uint64_t id) { on_offer_unpulled(self, peer, id); },
      [self](proto::node_part_atom, const proto::node_part& p) {
        on_part(self, p);
      },
      [self](proto::node_ready_atom, proto::node_ready& note) {
        on_ready(self, note);
      },
      [self](proto::node_done_atom, const std::string& from,
             const proto::node_report& rep) { on_pull_done(self, from, rep); },
      [self](proto::node_answered_atom, const std::string& peer,
             const proto::node_report& rep,
             const caf::error& why) { on_answered(self, peer, rep, why); },
      [self](proto::node_poll_atom) { poll_held_notes(self); },
      [self](proto::sweep_atom) { sweep_unclaimed(self); },
      [self](proto::node_fail_atom, const std::string& from, std::uint64_t id,
             const caf::error& why) {
        request_key key{from, id};
        auto& st = self->state;
        if (st.out.count(key) > 0)
          fail_outgoing(self, key, why, false);
        else if (st.in.count(key) > 0)
          fail_incoming(self, key, why);
        else if (auto* peer = find_peer(self, from);
                 peer != nullptr &&
                 peer->node.address() ==
                     caf::actor_cast<caf::actor_addr>(self->current_sender()))
          noted_entry(self, key).failure = why; // for the caller's receive
        // (From our own app, withdrawing a request of `from` that ended
        // meanwhile: nothing to keep.)
      },
      [self](proto::node_notify_atom, const std::string& to,
             std::string& payload) -> caf::result<caf::ok_atom> {
        auto* peer = find_peer(self, to);
        if (peer == nullptr)
          return unknown_peer(self, to);
        self->send(peer->node, proto::node_note_atom::value,
                   self->state.cfg.name, std::move(payload));
        return caf::ok_atom::value;
      },
      [self](proto::node_note_atom, std::string& from, std::string& payload) {
        on_note(self, from, payload);
      },
      [self](proto::node_listen_atom, const caf::actor& listener) {
        self->state.listener = listener;
        deliver_notes(self);
      },
      [self](proto::node_peers_atom) {
        std::vector<std::string> names;
        for (auto& [name, peer] : self->state.peers)
          names.push_back(name);
        return names;
      },
      [](joined_atom, const worker_info&) {},
      [self](left_atom, const std::string& name, const caf::error& why) {
        if (self->state.peers.erase(name) == 0)
          return;
        auto reason = node_error(self, ec::peer_down,
                                 fmt::format("peer node '{}' left the "
                                             "directory: {}",
                                             name, render(why)));
        remember_gone(self, name, reason);
        fail_peer(self, name, reason);
      },
  };
}

} // namespace

node_actor spawn_node_actor(caf::actor_system& sys, node_actor_config cfg) {
  auto transfer = cfg.transfer;
  auto node = sys.spawn(node_impl, std::move(cfg));
  // Before any caller can pull at the transfer actor: it hands the pulls it
  // holds no offer for to this node.
  caf::anon_send(transfer, proto::node_attach_atom::value,
                 caf::actor_cast<caf::actor>(node));
  return node;
}

std::string why_not_one_sided(const proto::endpoint& a,
                              const proto::endpoint& b) {
  if (a.host_id.empty() || a.host_id != b.host_id)
    return fmt::format("'{}' and '{}' are not on one host", a.name, b.name);
  for (const auto* e : {&a, &b})
    if (e->ipc_handle.empty())
      return fmt::format("'{}' exports no CUDA IPC handles (host memory, "
                         "memory CUDA IPC cannot share, or use_ipc off)",
                         e->name);
  return {};
}

bool pulls_via_transfer(const proto::endpoint& self) {
  return self.ipc_handle.empty(); // why_not_one_sided's test of one side
}

proto::kv_layout_desc describe_layout(const kv_layout& l) {
  return {l.layers(),           l.num_blocks(),   l.block_bytes(),
          l.region_per_layer(), l.layer_stride(), l.kv_stride(),
          l.block_stride(),     l.name()};
}

kv_layout layout_of(const proto::kv_layout_desc& d) {
  return kv_layout::strided(d.layers, d.num_blocks, d.block_bytes,
                            d.region_per_layer, d.layer_stride, d.kv_stride,
                            d.block_stride, d.name);
}

} // namespace kvferry
