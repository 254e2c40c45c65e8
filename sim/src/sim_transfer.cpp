// The simulated transfer actor (sim_transfer.hpp).
#include "kvferry/sim/sim_transfer.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <utility>
#include <variant>
#include <vector>

#include <caf/all.hpp>

#include "kvferry/actors/node_actor.hpp"
#include "kvferry/actors/transfer.hpp"

namespace kvferry::sim {

namespace {

std::int64_t ns_of(caf::actor_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             t.time_since_epoch())
      .count();
}

struct sim_transfer_state {
  proto::endpoint self;
  std::shared_ptr<sim_network> network;
  // Send orders whose bytes have not landed yet, by transfer id.
  std::map<std::uint64_t, caf::typed_response_promise<std::uint64_t>> sends;
  // Recv orders whose transfer has not landed yet, and landed transfers no
  // recv order claimed yet, by (sender, transfer id).
  using key = std::pair<std::string, std::uint64_t>;
  // A node's caller whose request came with the recv order (see
  // transfer_actor in actors.hpp): answered with the node_report of request
  // `id`, its node told aside.
  struct caller {
    caf::typed_response_promise<proto::node_report> reply;
    std::uint64_t id;
    caf::actor node;
  };
  struct recv {
    std::int64_t known_ns;
    std::variant<caf::typed_response_promise<proto::recv_report>, caller> reply;
  };
  std::map<key, recv> recvs;
  std::map<key, proto::landed> landed;
  caf::actor node; // node_attach_atom
  static inline const char* name = "kvferry.sim_transfer";
};

using self_ptr = transfer_actor::stateful_pointer<sim_transfer_state>;

proto::recv_report report_of(const proto::landed& l, std::int64_t known_ns) {
  proto::recv_report r;
  r.bytes = l.bytes;
  r.first_known_ns = std::min(known_ns, l.launched_ns);
  r.landed_ns = l.copied_ns;
  return r;
}

// Answers the recv order `r` of transfer `k` (landed: `l`), or fails it.
void answer(sim_transfer_state::recv& r, const sim_transfer_state::key& k,
            const proto::landed* l, const caf::error& err = {}) {
  if (auto* c = std::get_if<sim_transfer_state::caller>(&r.reply)) {
    proto::node_report rep{c->id};
    if (l != nullptr) {
      auto rr = report_of(*l, r.known_ns);
      rep = {c->id, rr.bytes, proto::data_start_of(rr), rr.landed_ns};
      c->reply.deliver(rep);
    } else {
      c->reply.deliver(err);
    }
    caf::anon_send(c->node, proto::node_answered_atom::value, k.first, rep,
                   err);
    return;
  }
  auto& reply = std::get<0>(r.reply);
  if (l != nullptr)
    reply.deliver(report_of(*l, r.known_ns));
  else
    reply.deliver(err);
}

// A recv order for `k`, answered at once when its transfer landed already.
void claim(self_ptr self, sim_transfer_state::key k,
           sim_transfer_state::recv r) {
  auto& st = self->state;
  if (auto i = st.landed.find(k); i != st.landed.end()) {
    answer(r, k, &i->second);
    st.landed.erase(i);
    return;
  }
  st.recvs.emplace(std::move(k), std::move(r));
}

// The network says a transfer landed: ours (answer the send order) or one
// to us (answer its recv order, or keep it for the order to come).
void on_landed(self_ptr self, proto::landed& l) {
  auto& st = self->state;
  if (l.sender == st.self.name) {
    auto i = st.sends.find(l.transfer_id);
    if (i != st.sends.end()) {
      i->second.deliver(l.bytes);
      st.sends.erase(i);
    }
    return;
  }
  sim_transfer_state::key k{l.sender, l.transfer_id};
  auto i = st.recvs.find(k);
  if (i == st.recvs.end()) {
    st.landed.emplace(std::move(k), std::move(l));
    return;
  }
  answer(i->second, k, &l);
  st.recvs.erase(i);
}

transfer_actor::behavior_type sim_transfer(self_ptr self, std::string name,
                                           std::uint64_t region_bytes,
                                           std::shared_ptr<sim_network> net) {
  auto& st = self->state;
  st.self =
      sim_endpoint(name, region_bytes, caf::actor_cast<transfer_actor>(self));
  st.network = std::move(net);
  return {
      [self](proto::endpoint_atom) { return self->state.self; },
      [self](proto::send_atom, proto::send_order& o) {
        auto& st = self->state;
        std::uint64_t bytes = 0;
        for (const auto& e : o.extents)
          bytes += e.length;
        auto rp = self->make_response_promise<std::uint64_t>();
        st.sends.emplace(o.transfer_id, rp);
        st.network->start({st.self.name, o.peer.name, o.transfer_id, bytes,
                           caf::actor_cast<transfer_actor>(self),
                           caf::actor_cast<transfer_actor>(o.peer.transfer),
                           ns_of(self->clock().now())});
        return rp;
      },
      [self](proto::recv_atom, proto::recv_order& o) {
        auto rp = self->make_response_promise<proto::recv_report>();
        claim(self, {o.peer_name, o.transfer_id},
              {ns_of(self->clock().now()), rp});
        return rp;
      },
      [self](proto::recv_atom, proto::recv_order& o, std::uint64_t id,
             caf::actor& node) {
        auto rp = self->make_response_promise<proto::node_report>();
        claim(self, {o.peer_name, o.transfer_id},
              {ns_of(self->clock().now()),
               sim_transfer_state::caller{rp, id, std::move(node)}});
        return rp;
      },
      [self](proto::landed_atom, proto::landed& l) { on_landed(self, l); },
      // Channels, announcements, CUDA IPC: nothing to do without bytes.
      [](proto::open_atom, const std::string&, std::uint32_t, std::uint64_t) {
        return std::vector<char>(128, 0);
      },
      [](proto::announce_atom, const proto::announce_batch&) {},
      [](proto::announce_flush_atom) {},
      [](proto::closed_atom, const std::string&, std::uint64_t,
         const caf::error&) {},
      [](proto::stats_atom) { return proto::transfer_stats{}; },
      [](proto::ipc_hello_atom, const std::string&) {},
      [](proto::ipc_status_atom, const std::string&, std::uint64_t) {
        return caf::ok_atom::value;
      },
      [](proto::settle_atom, const std::string&, std::uint64_t) {
        return caf::ok_atom::value;
      },
      // Nothing landed is waiting (else it answered): it fails at once.
      [self](proto::settle_atom, const std::string& peer, std::uint64_t id,
             const caf::error& why) {
        auto i = self->state.recvs.find({peer, id});
        if (i == self->state.recvs.end())
          return;
        answer(i->second, i->first, nullptr, why);
        self->state.recvs.erase(i);
      },
      [](joined_atom, const worker_info&) {},
      [](left_atom, const std::string&, const caf::error&) {},
      [](proto::progress_atom, std::uint64_t) {},
      [](proto::wake_atom) {},
      [](proto::sweep_atom) {},
      // Models no CUDA IPC reads and no runtime regions (kvferry::endpoint).
      [](proto::read_atom,
         proto::read_order&) -> caf::result<proto::recv_report> {
        return make_error(ec::invalid_argument, "sim transfer: no reads");
      },
      [](proto::region_add_atom, std::uint64_t, std::uint64_t,
         std::int32_t) -> caf::result<std::uint64_t> {
        return make_error(ec::invalid_argument, "sim transfer: no regions");
      },
      [](proto::region_remove_atom,
         std::uint64_t) -> caf::result<caf::ok_atom> {
        return make_error(ec::not_found, "sim transfer: no regions");
      },
      // Moves no bytes: refuses an endpoint's batched orders.
      [self](proto::order_batch_atom, const proto::order_batch& b) {
        refuse_orders(self, b, "sim transfer");
      },
      [](proto::settled_flush_atom) {},
      // Holds no offers (node_actor.hpp, offerless).
      [self](proto::node_attach_atom, const caf::actor& node) {
        self->state.node = node;
      },
      [self](proto::node_offer_atom, const proto::pull_offer& offer) {
        offerless::give_back(self->state.node, offer);
      },
      [self](proto::node_pull_atom, proto::node_request& req) {
        return offerless::pull_at_node(self, self->state.node, req);
      },
  };
}

} // namespace

namespace {

// What both ends hear when `o`'s bytes landed at `landed_ns`.
proto::landed landed_of(const sim_network::order& o, std::int64_t landed_ns) {
  proto::landed l;
  l.sender = o.sender;
  l.transfer_id = o.transfer_id;
  l.bytes = o.bytes;
  l.launched_ns = o.ordered_ns;
  l.copied_ns = landed_ns;
  return l;
}

} // namespace

void sim_network::land(const order& o, std::int64_t landed_ns) {
  auto l = landed_of(o, landed_ns);
  caf::anon_send(o.to, proto::landed_atom::value, l);
  caf::anon_send(o.from, proto::landed_atom::value, std::move(l));
}

void fixed_network::start(order o) {
  auto took = model_(o.sender, o.receiver, o.bytes);
  auto l = landed_of(o, o.ordered_ns + took.count());
  caf::delayed_anon_send(o.to, took, proto::landed_atom::value, l);
  caf::delayed_anon_send(o.from, took, proto::landed_atom::value, std::move(l));
}

proto::endpoint sim_endpoint(const std::string& name,
                             std::uint64_t region_bytes,
                             const transfer_actor& transfer) {
  proto::endpoint e;
  e.name = name;
  e.transfer = caf::actor_cast<caf::actor>(transfer);
  e.plugin = "sim";
  e.listen_handle.assign(128, 0);
  e.region_bytes = region_bytes;
  return e;
}

transfer_actor spawn_sim_transfer(caf::actor_system& sys, std::string name,
                                  std::uint64_t region_bytes,
                                  std::shared_ptr<sim_network> network) {
  return sys.spawn(sim_transfer, std::move(name), region_bytes,
                   std::move(network));
}

} // namespace kvferry::sim
