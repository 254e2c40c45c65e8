// The endpoint's control actor (endpoint_state.hpp): one per endpoint, the
// only code that talks to peers' endpoints. Each operation becomes orders to
// the transfer actors, which move the bytes as they do for every worker:
//
//   write: our transfer actor sends (src here, dst in the peer's table);
//          "done" means landed: over a plugin the peer's transfer actor
//          answers us once every byte did (send_order::answer_to), over
//          CUDA IPC our own transfer actor's kernel completion says so;
//   read:  the peer's transfer actor sends into our table (a push its
//          control actor orders), our transfer actor reports the arrival;
//   recv:  our transfer actor waits for the arrival, and the peer's control
//          actor learns where it may write (posted_recv);
//   send:  waits for the peer's next posted receive on the connection, then
//          our transfer actor sends into it; done once the peer's control
//          actor says the receive finished (a receipt), so "done" means
//          landed, as for write: the sender may go right away and the peer
//          still gets every byte (its teardown notice cannot overtake them).
//
// What goes to a peer's control actor (posted receives, pushes, answers,
// receipts) piles up in the peer's outbox and leaves as one
// proto::ep_batch when the flush message this actor sends itself comes up,
// i.e. after the orders already in its mailbox: at depth 16 one remote
// message carries many transfers' words instead of three messages per
// transfer (their system calls and wake-ups cost more CPU than a 64 KiB
// transfer's bytes; issue #16). Anything else sent to the peer's control
// actor (table, notification) flushes the outbox first, so nothing
// overtakes it. Likewise our writes' send orders pile up for our own
// transfer actor and leave at that flush as one proto::order_batch, which
// it settles in lists (settled_atom). A peer's write costs this actor
// nothing: the peer's bytes land in our table, and our transfer actor
// answers the peer itself (send_order::answer_to). Other
// requests to our own transfer actor carry no CAF timeout (each would cost
// the clock thread two wake-ups): the transfer actor answers every order by
// its own deadline.
#include <algorithm>
#include <chrono>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>

#include <caf/all.hpp>
#include <fmt/format.h>

#include "endpoint_path.hpp"
#include "endpoint_state.hpp"
#include "kvferry/actors/plan.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/node_shelf.hpp"

namespace kvferry::engine_detail {
namespace {

using proto::endpoint_op;

struct peer {
  std::string name;
  caf::actor control;
  proto::endpoint ep;
  bool one_process = false;                // endpoint_path.hpp, same_process
  std::deque<proto::posted_recv> posted;   // the peer's, not yet filled
  std::deque<proto::endpoint_order> sends; // ours, waiting for a post
  struct op {
    int replies_due = 0;
    std::uint64_t bytes = 0;
    std::uint64_t receipt = 0; // a recv: the transfer id the peer's send
                               // awaits a receipt for (0: none)
    std::uint64_t awaits = 0;  // a matched send: the receipt it awaits
    std::uint64_t answer = 0;  // a write or read: the transfer id the
                               // peer's answer names (0: none, or taken)
    bool landed = false;       // the peer said every byte landed there
  };
  std::unordered_map<xfer_id, op> inflight;
  // Our matched sends awaiting the peer's receipt: transfer id -> op.
  std::unordered_map<std::uint64_t, xfer_id> receipts;
  // (Our writes and reads the peer answers need no table: an answer's
  // transfer id is its op's id, take_answer.)
  proto::ep_batch outbox; // for the peer's control actor, not yet sent
  bool alive = true;
};

struct control_state {
  control_config cfg;
  std::unordered_map<conn_id, peer> conns;
  std::unordered_map<std::string, conn_id> by_name;
  // The nodes of ended ops, for the next ones (peer::inflight): an
  // allocation per op otherwise.
  node_shelf<decltype(peer::inflight)> op_nodes;
  conn_id next_conn = 1;
  proto::order_batch orders;    // for our transfer actor, not yet sent
  bool flush_scheduled = false; // an ep_flush message is on its way
  status transfer_down;         // not ok once our transfer actor stopped
  static inline const char* name = "kvferry.endpoint";
};

using self_ptr = caf::stateful_actor<control_state>*;

// The send's ranges (src_offset, length) laid into the receive's ranges
// (dst_offset, length) in order: the extents of one transfer. Nullopt when
// the send is larger than the receive.
std::optional<std::vector<extent>> zip_ranges(const std::vector<extent>& src,
                                              const std::vector<extent>& dst) {
  std::vector<extent> out;
  std::size_t d = 0;
  std::uint64_t used = 0; // of dst[d]
  for (const auto& s : src) {
    std::uint64_t done = 0;
    while (done < s.length) {
      if (d == dst.size())
        return std::nullopt;
      auto n = std::min(s.length - done, dst[d].length - used);
      out.push_back({s.src_offset + done, dst[d].dst_offset + used, n});
      done += n;
      used += n;
      if (used == dst[d].length) {
        ++d;
        used = 0;
      }
    }
  }
  return out;
}

// Enters op `id` in flight to `p` (in a kept node).
peer::op& new_op(self_ptr self, peer& p, xfer_id id) {
  return self->state.op_nodes.emplace(p.inflight, id);
}

peer* find_peer(self_ptr self, conn_id conn) {
  auto i = self->state.conns.find(conn);
  return i == self->state.conns.end() ? nullptr : &i->second;
}

void schedule_flush(self_ptr self) {
  auto& st = self->state;
  if (!st.flush_scheduled) {
    st.flush_scheduled = true;
    self->send(self, proto::ep_flush_atom::value);
  }
}

// The peer's outbox, sent at the next flush (see the top of this file).
proto::ep_batch& outbox(self_ptr self, peer& p) {
  schedule_flush(self);
  return p.outbox;
}

// Our transfer actor's batch of write orders, sent at the next flush.
proto::order_batch& transfer_orders(self_ptr self) {
  schedule_flush(self);
  return self->state.orders;
}

// Sends our transfer actor its batch of orders, if any.
void flush_orders(self_ptr self) {
  auto& b = self->state.orders;
  if (b.sends.empty())
    return;
  self->send(self->state.cfg.transfer, proto::order_batch_atom::value,
             std::move(b));
  b = proto::order_batch{};
}

// Sends what piled up for `p` (call before anything else goes to its
// control actor).
void flush(self_ptr self, peer& p) {
  auto& b = p.outbox;
  if (b.posts.empty() && b.pushes.empty() && b.answers.empty() &&
      b.receipts.empty())
    return;
  if (p.alive) {
    b.sender = self->state.cfg.name;
    self->send(p.control, proto::ep_batch_atom::value, std::move(b));
  }
  b = proto::ep_batch{};
}

// A recv settled: tell the sender, whose send is done only then (the
// receipt; an empty error: landed).
void send_receipt(self_ptr self, peer& p, const peer::op& o,
                  const caf::error& err) {
  if (o.receipt != 0 && p.alive)
    outbox(self, p).receipts.push_back({o.receipt, err});
}

// Forgets the op's entries in the tables of what the peer may still say.
void forget_words(peer& p, const peer::op& o) {
  if (o.awaits != 0)
    p.receipts.erase(o.awaits);
}

void fail_op(self_ptr self, peer& p, xfer_id id, status why) {
  if (auto i = p.inflight.find(id); i != p.inflight.end()) {
    send_receipt(
        self, p, i->second,
        make_error(why.code(), fmt::format("at '{}': {}", self->state.cfg.name,
                                           why.reason())));
    forget_words(p, i->second);
    self->state.op_nodes.erase(p.inflight, i);
  }
  self->state.cfg.shared->fail(id, std::move(why));
}

// One of the op's replies came; done when it was the last.
void part_done(self_ptr self, conn_id conn, xfer_id id,
               std::optional<std::uint64_t> bytes) {
  auto* p = find_peer(self, conn);
  if (!p)
    return;
  auto i = p->inflight.find(id);
  if (i == p->inflight.end())
    return; // failed already
  if (bytes)
    i->second.bytes = *bytes;
  if (--i->second.replies_due > 0)
    return;
  auto total = i->second.bytes;
  send_receipt(self, *p, i->second, caf::error{});
  forget_words(*p, i->second);
  self->state.op_nodes.erase(p->inflight, i);
  self->state.cfg.shared->complete(id, total);
}

void part_failed(self_ptr self, conn_id conn, xfer_id id,
                 const caf::error& err) {
  if (auto* p = find_peer(self, conn); p && p->inflight.count(id) != 0)
    fail_op(self, *p, id, to_status(err));
}

caf::timespan request_limit(const control_state& st) {
  // A peer's control actor that never answers its hello.
  return std::chrono::milliseconds(st.cfg.timeout_ms + 5000);
}

// An order to a transfer actor (ours, or the peer's for a read's push) to
// send `extents` of transfer `transfer_id` into `to`'s table, by our
// deadline.
proto::send_order send_order_of(self_ptr self, std::uint64_t transfer_id,
                                proto::endpoint to,
                                std::vector<extent> extents) {
  proto::send_order o;
  o.transfer_id = transfer_id;
  o.peer = std::move(to);
  o.extents = std::move(extents);
  o.timeout_ms = self->state.cfg.timeout_ms;
  return o;
}

// An order to our transfer actor to report transfer `transfer_id` from
// `sender` once it landed here, by our deadline.
proto::recv_order recv_order_of(self_ptr self, std::uint64_t transfer_id,
                                const std::string& sender) {
  proto::recv_order o;
  o.transfer_id = transfer_id;
  o.peer_name = sender;
  o.timeout_ms = self->state.cfg.timeout_ms;
  return o;
}

// Our transfer actor sends (a send matched with a receive).
void order_send(self_ptr self, conn_id conn, xfer_id op_id,
                std::uint64_t transfer_id, proto::endpoint to,
                std::vector<extent> extents) {
  self->request(
          self->state.cfg.transfer, caf::infinite, proto::send_atom::value,
          send_order_of(self, transfer_id, std::move(to), std::move(extents)))
      .then([self, conn, op_id](
                std::uint64_t bytes) { part_done(self, conn, op_id, bytes); },
            [self, conn, op_id](caf::error& err) {
              part_failed(self, conn, op_id, err);
            });
}

// Asks our transfer actor to report when transfer `transfer_id` from
// `sender` has landed here.
auto await_arrival(self_ptr self, std::uint64_t transfer_id,
                   const std::string& sender) {
  return self->request(self->state.cfg.transfer, caf::infinite,
                       proto::recv_atom::value,
                       recv_order_of(self, transfer_id, sender));
}

void order_recv(self_ptr self, conn_id conn, xfer_id op_id,
                std::uint64_t transfer_id, const std::string& sender) {
  await_arrival(self, transfer_id, sender)
      .then(
          [self, conn, op_id](proto::recv_report& r) {
            part_done(self, conn, op_id, r.bytes);
          },
          [self, conn, op_id](caf::error& err) {
            part_failed(self, conn, op_id, err);
          });
}

// Pairs our waiting sends with the peer's posted receives, in order.
void match_sends(self_ptr self, conn_id conn, peer& p) {
  auto& st = self->state;
  while (!p.sends.empty() && !p.posted.empty()) {
    auto o = std::move(p.sends.front());
    p.sends.pop_front();
    auto r = std::move(p.posted.front());
    p.posted.pop_front();
    auto extents = zip_ranges(o.extents, r.ranges);
    if (!extents) {
      fail_op(self, p, o.id,
              status{ec::invalid_argument,
                     fmt::format("send {} to '{}': {} bytes do not fit its "
                                 "receive of {} bytes",
                                 o.id, p.name, total_bytes(o.extents),
                                 total_bytes(r.ranges))});
      continue;
    }
    p.receipts[r.transfer_id] = o.id;
    p.inflight[o.id].awaits = r.transfer_id;
    p.inflight[o.id].bytes = total_bytes(*extents);
    auto path = path_between(st.cfg.self_ep, p.ep, p.one_process);
    auto to = order_peer(
        p.ep, sizes_covering(*extents, extent_side::destination), path);
    st.cfg.shared->set_path(o.id, path);
    order_send(self, conn, o.id, r.transfer_id, std::move(to),
               std::move(*extents));
  }
}

// A read: over CUDA IPC our own kernel copies out of the peer's mapped table
// (read_order, the peer's transfer actor gets no message); otherwise the
// peer's transfer actor pushes into our table and ours reports the arrival.
void start_read(self_ptr self, peer& p, proto::endpoint_order& o) {
  auto& st = self->state;
  auto transfer_id = o.id | receiver_chosen;
  auto path = path_between(st.cfg.self_ep, p.ep, p.one_process);
  // The peer's regions as the call's descriptors name them (counted by the
  // caller's pass, as a write's dst_sizes are): no pass over the extents.
  auto from = order_peer(p.ep, o.src_sizes, path);
  st.cfg.shared->set_path(o.id, path);
  if (path == transfer_path::cuda_ipc) {
    new_op(self, p, o.id).replies_due = 1;
    proto::read_order r;
    r.transfer_id = transfer_id;
    r.peer = std::move(from);
    r.extents = std::move(o.extents);
    r.timeout_ms = st.cfg.timeout_ms;
    self->request(st.cfg.transfer, caf::infinite, proto::read_atom::value,
                  std::move(r))
        .then(
            [self, conn = o.conn, id = o.id](proto::recv_report& rep) {
              part_done(self, conn, id, rep.bytes);
            },
            [self, conn = o.conn, id = o.id](caf::error& err) {
              part_failed(self, conn, id, err);
            });
    return;
  }
  // Done once our transfer actor reports the arrival; the peer's push
  // answers only when it failed.
  auto& op = new_op(self, p, o.id);
  op.replies_due = 1;
  op.answer = transfer_id;
  auto plugin = transfer_path::plugin;
  outbox(self, p).pushes.push_back(send_order_of(
      self, transfer_id, order_peer(st.cfg.self_ep, o.dst_sizes, plugin),
      std::move(o.extents)));
  order_recv(self, o.conn, o.id, transfer_id, p.name);
}

void start_order(self_ptr self, proto::endpoint_order& o) {
  auto& st = self->state;
  if (!st.transfer_down.ok()) {
    st.cfg.shared->fail(o.id, st.transfer_down);
    return;
  }
  auto* p = find_peer(self, o.conn);
  if (!p) {
    st.cfg.shared->fail(
        o.id, status{ec::not_found, fmt::format("no connection {}", o.conn)});
    return;
  }
  if (!p->alive) {
    st.cfg.shared->fail(
        o.id, status{ec::peer_down, fmt::format("connection {} to '{}' is "
                                                "down",
                                                o.conn, p->name)});
    return;
  }
  switch (static_cast<endpoint_op>(o.op)) {
  case endpoint_op::write: {
    auto path = path_between(st.cfg.self_ep, p->ep, p->one_process);
    auto to = order_peer(p->ep, o.dst_sizes, path);
    st.cfg.shared->set_path(o.id, path);
    auto& op = new_op(self, *p, o.id);
    // Done once landed: our transfer actor's word that the bytes left and
    // the peer's transfer actor's answer that they landed (answer_to); over
    // CUDA IPC our transfer actor's word says both (on_settled).
    op.replies_due = 2;
    op.answer = o.id;
    op.bytes = o.bytes; // counted by the caller's pass, as our transfer
                        // actor will report them (no pass of our own)
    auto order = send_order_of(self, o.id, std::move(to), std::move(o.extents));
    order.answer_to = caf::actor_cast<caf::actor>(self);
    transfer_orders(self).sends.push_back(std::move(order)); // on_settled
    break;
  }
  case endpoint_op::read:
    start_read(self, *p, o);
    break;
  case endpoint_op::recv: {
    auto transfer_id = o.id | receiver_chosen;
    auto& op = new_op(self, *p, o.id);
    op.replies_due = 1;
    op.receipt = transfer_id;
    // The peer's send takes this path (its control actor decides alike).
    st.cfg.shared->set_path(
        o.id, path_between(p->ep, st.cfg.self_ep, p->one_process));
    order_recv(self, o.conn, o.id, transfer_id, p->name);
    outbox(self, *p).posts.push_back(
        proto::posted_recv{st.cfg.name, transfer_id, std::move(o.extents)});
    break;
  }
  case endpoint_op::send:
    new_op(self, *p, o.id).replies_due = 2; // our transfer actor, the receipt
    p->sends.push_back(std::move(o));
    match_sends(self, p->sends.back().conn, *p);
    break;
  }
}

// The peer's word that op `id`'s bytes landed there (`err` empty): should
// the peer go before our transfer actor reported the send, the op is done
// all the same (its bytes are all at the peer; the peer may go as soon as
// its receive completed).
void mark_landed(peer& p, xfer_id id, const caf::error& err) {
  if (auto i = p.inflight.find(id); i != p.inflight.end() && !err)
    i->second.landed = true;
}

// The peer's word on our op `op` (an empty error: its bytes landed there).
void settle_word(self_ptr self, conn_id conn, peer& p, xfer_id op,
                 const caf::error& err) {
  mark_landed(p, op, err);
  if (err)
    part_failed(self, conn, op, err);
  else
    part_done(self, conn, op, std::nullopt);
}

// The peer's receipt for the receive our send `transfer_id` filled. False
// when no op awaits it (failed here already).
bool take_receipt(self_ptr self, conn_id conn, peer& p,
                  std::uint64_t transfer_id, const caf::error& err) {
  auto w = p.receipts.find(transfer_id);
  if (w == p.receipts.end())
    return false;
  auto op = w->second;
  p.receipts.erase(w);
  settle_word(self, conn, p, op, err);
  return true;
}

// The peer's answer to our write or read `transfer_id`: that is the op's id
// (a read's with receiver_chosen set), so the op itself says whether it
// awaits it, and no table per peer costs a node per op. Ignored when no op
// awaits it (failed here already, or answered).
void take_answer(self_ptr self, conn_id conn, peer& p,
                 std::uint64_t transfer_id, const caf::error& err) {
  auto i = p.inflight.find(transfer_id & ~receiver_chosen);
  if (i == p.inflight.end() || i->second.answer != transfer_id)
    return;
  i->second.answer = 0; // taken
  settle_word(self, conn, p, i->first, err);
}

// The receive that our send filled settled at the peer.
void on_receipt(self_ptr self, conn_id conn, peer& p, std::uint64_t transfer_id,
                const caf::error& err) {
  if (take_receipt(self, conn, p, transfer_id, err) || !err)
    return;
  // No send of ours filled that receive (or ours failed here already): a
  // receive that failed there (its deadline) must not take a later send.
  p.posted.erase(std::remove_if(p.posted.begin(), p.posted.end(),
                                [&](const proto::posted_recv& x) {
                                  return x.transfer_id == transfer_id;
                                }),
                 p.posted.end());
}

// Answers the peer's push `transfer_id` (only a failure is answered).
void answer(self_ptr self, conn_id conn, std::uint64_t transfer_id,
            const caf::error& err) {
  if (auto* p = find_peer(self, conn); p && p->alive)
    outbox(self, *p).answers.push_back({transfer_id, err});
}

// Our transfer actor settled batched orders: our writes' sends ended. Each
// names its peer by the name its control actor has (an endpoint's actors
// share it). One that landed already (CUDA IPC) is its own answer: the
// peer's transfer actor was not told of it.
void on_settled(self_ptr self, std::vector<proto::order_settled>& list) {
  for (auto& s : list) {
    auto c = self->state.by_name.find(s.peer);
    if (c == self->state.by_name.end())
      continue; // the peer is gone, and with it what it waited for
    if (s.error) {
      part_failed(self, c->second, s.transfer_id, s.error);
      continue;
    }
    part_done(self, c->second, s.transfer_id, s.bytes);
    if (auto* p = find_peer(self, c->second); p && s.landed)
      take_answer(self, c->second, *p, s.transfer_id, caf::error{});
  }
}

// The peer reads from our table: our transfer actor pushes into its table.
void push(self_ptr self, conn_id conn, proto::send_order& o) {
  auto id = o.transfer_id;
  self->request(self->state.cfg.transfer, caf::infinite,
                proto::send_atom::value, std::move(o))
      .then([](std::uint64_t) {},
            [self, conn, id](caf::error& err) { answer(self, conn, id, err); });
}

// A batch from the peer (proto::ep_batch). Posts before receipts: a
// receipt may fail a receive posted in the same batch.
void on_batch(self_ptr self, proto::ep_batch& b) {
  auto c = self->state.by_name.find(b.sender);
  if (c == self->state.by_name.end())
    return;
  auto conn = c->second;
  auto& p = self->state.conns[conn];
  if (!p.alive)
    return;
  for (auto& r : b.posts)
    p.posted.push_back(std::move(r));
  if (!b.posts.empty())
    match_sends(self, conn, p);
  for (const auto& r : b.receipts)
    on_receipt(self, conn, p, r.transfer_id, r.error);
  // Answers to our writes (landed there, or not; from the peer's transfer
  // actor) and pushes (a read's: only its failure is answered).
  for (const auto& a : b.answers)
    take_answer(self, conn, p, a.transfer_id, a.error);
  for (auto& o : b.pushes)
    push(self, conn, o);
}

conn_id add_peer(self_ptr self, const proto::peer_hello& h) {
  auto& st = self->state;
  auto id = st.next_conn++;
  auto& p = st.conns[id];
  p.name = h.name;
  p.control = h.control;
  p.ep = h.transfer;
  p.one_process = same_process(st.cfg.self_ep, p.ep);
  st.by_name[h.name] = id;
  self->monitor(h.control);
  std::lock_guard<std::mutex> lock(st.cfg.shared->mu);
  st.cfg.shared->conns[id] = conn_entry{h.name, h.instance, {}};
  return id;
}

proto::peer_hello hello_of(self_ptr self) {
  auto& cfg = self->state.cfg;
  return {cfg.name, cfg.instance, caf::actor_cast<caf::actor>(self),
          cfg.self_ep};
}

// Our own transfer actor stopped (it failed; at teardown the endpoint stops
// us first): nothing in flight can end any more, and a batched order sent
// to it would be dropped unanswered, so every op fails now, and every later
// one at once, instead of at its caller's timeout.
void on_transfer_down(self_ptr self, const caf::down_msg& dm) {
  auto& st = self->state;
  st.transfer_down = status{
      ec::peer_down, fmt::format("endpoint '{}': its transfer actor stopped "
                                 "({})",
                                 st.cfg.name, render(dm.reason))};
  for (auto& [id, p] : st.conns) {
    for (auto& [op, entry] : p.inflight)
      st.cfg.shared->fail(op, st.transfer_down);
    p.inflight.clear();
    p.receipts.clear();
    p.sends.clear();
  }
  st.orders = proto::order_batch{};
  st.cfg.shared->changed.notify_all();
}

void on_down(self_ptr self, const caf::down_msg& dm) {
  auto& st = self->state;
  if (st.cfg.transfer && dm.source == st.cfg.transfer.address()) {
    on_transfer_down(self, dm);
    return;
  }
  for (auto& [id, p] : st.conns) {
    if (!p.alive || p.control.address() != dm.source)
      continue;
    p.alive = false;
    status why{ec::peer_down,
               fmt::format("lost peer '{}' (connection {}): its endpoint is "
                           "gone ({})",
                           p.name, id, render(dm.reason))};
    // The connection is down before any of its transfers fails: a caller
    // that sees a failure and calls again on the connection is refused at
    // once, not handed an id that fails later.
    {
      std::lock_guard<std::mutex> lock(st.cfg.shared->mu);
      st.cfg.shared->conns[id].down = why;
    }
    for (auto& [op, entry] : p.inflight)
      if (entry.landed)
        st.cfg.shared->complete(op, entry.bytes);
      else
        st.cfg.shared->fail(op, why);
    p.inflight.clear();
    p.receipts.clear();
    p.sends.clear();
    p.posted.clear();
    p.outbox = proto::ep_batch{};
    st.cfg.shared->changed.notify_all();
  }
}

caf::behavior control_impl(self_ptr self, control_config cfg) {
  self->state.cfg = std::move(cfg);
  // Drop every handle when told to end, so that the endpoint's
  // actor system (which waits for its detached transfer actor until nothing
  // refers to it) can stop.
  self->set_exit_handler([self](caf::exit_msg& msg) {
    // What piled up goes first: a receipt or an answer in an outbox is the
    // peer's word that its transfer landed here (an endpoint may be
    // destroyed as soon as its transfers completed).
    for (auto& [id, p] : self->state.conns)
      flush(self, p);
    self->state.conns.clear();
    self->state.by_name.clear();
    self->state.cfg.transfer = nullptr;
    self->state.cfg.self_ep = proto::endpoint{};
    self->quit(msg.reason);
  });
  self->set_down_handler([self](caf::down_msg& dm) { on_down(self, dm); });
  self->monitor(self->state.cfg.transfer);
  return {
      // From our endpoint: connect to the control actor `other`.
      [self](proto::ep_connect_atom, const caf::actor& other) {
        auto promise = self->make_response_promise<conn_id>();
        self->request(other, request_limit(self->state),
                      proto::ep_hello_atom::value, hello_of(self))
            .then(
                [self, promise](proto::peer_hello& h) mutable {
                  promise.deliver(add_peer(self, h));
                },
                [promise](caf::error& err) mutable { promise.deliver(err); });
        return promise;
      },
      // From a peer that connects to us.
      [self](proto::ep_hello_atom, proto::peer_hello& h) {
        auto id = add_peer(self, h);
        {
          std::lock_guard<std::mutex> lock(self->state.cfg.shared->mu);
          self->state.cfg.shared->accepted.push_back(id);
        }
        self->state.cfg.shared->changed.notify_all();
        return hello_of(self);
      },
      // From our endpoint, after reg/dereg: our transfer actor's table now;
      // every peer hears it (a renewed hello) before anything we send later.
      [self](proto::ep_hello_atom, proto::endpoint& ep) {
        auto& st = self->state;
        st.cfg.self_ep = std::move(ep);
        for (auto& [id, p] : st.conns)
          if (p.alive) {
            flush(self, p);
            self->send(p.control, proto::ep_hello_atom::value, st.cfg.name,
                       st.cfg.self_ep);
          }
      },
      // From a peer: its table changed.
      [self](proto::ep_hello_atom, const std::string& name,
             proto::endpoint& ep) {
        auto i = self->state.by_name.find(name);
        if (i != self->state.by_name.end())
          self->state.conns[i->second].ep = std::move(ep);
      },
      [self](proto::ep_order_atom, proto::endpoint_order& o) {
        start_order(self, o);
      },
      // From a peer: what piled up for us there.
      [self](proto::ep_batch_atom, proto::ep_batch& b) { on_batch(self, b); },
      // From our transfer actor: batched orders that settled.
      [self](proto::settled_atom, std::vector<proto::order_settled>& list) {
        on_settled(self, list);
      },
      // From ourselves: send the outboxes.
      [self](proto::ep_flush_atom) {
        self->state.flush_scheduled = false;
        flush_orders(self);
        for (auto& [id, p] : self->state.conns)
          flush(self, p);
      },
      // From our endpoint: pass a notification to the peer of `conn`.
      [self](proto::ep_notify_atom, conn_id conn, std::vector<char>& bytes) {
        if (auto* p = find_peer(self, conn); p && p->alive) {
          flush(self, *p);
          self->send(p->control, proto::ep_notify_atom::value,
                     self->state.cfg.name, std::move(bytes));
        }
      },
      [self](proto::ep_notify_atom, const std::string& sender,
             std::vector<char>& bytes) {
        auto i = self->state.by_name.find(sender);
        if (i == self->state.by_name.end())
          return;
        auto& shared = *self->state.cfg.shared;
        {
          std::lock_guard<std::mutex> lock(shared.mu);
          shared.notes.push_back(
              notification{i->second, {bytes.begin(), bytes.end()}});
        }
        shared.changed.notify_all();
      },
  };
}

} // namespace

caf::actor spawn_control(caf::actor_system& sys, control_config cfg) {
  return sys.spawn(control_impl, std::move(cfg));
}

} // namespace kvferry::engine_detail
