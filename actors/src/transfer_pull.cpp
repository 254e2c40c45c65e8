// The transfer actor serves its node's offered pulls (transfer_state.hpp;
// the node's side: node_actor.cpp, hand_offer). The decode node hands each
// prefill's offer here as it arrives; the caller's pull comes here too, so
// that the node is not in its path: the pull is planned here (both
// layouts came with the offer), its send order goes straight to the
// prefill's transfer actor, and the recv order is claimed for the caller
// (answer_waiter): the caller is answered here when the last byte landed,
// the node told aside (node_answered), as for any request this actor
// answers for its node. A pull of many blocks asks the prefill's node to
// plan and post instead (ships_extents says why). A pull this actor holds
// no offer for (a want, a one-sided pull, an offer not come yet) goes to
// the node (delegate).
#include <exception>
#include <utility>

#include <caf/all.hpp>
#include <fmt/format.h>

#include "kvferry/actors/app.hpp"
#include "kvferry/actors/node_actor.hpp"
#include "kvferry/runtime/error.hpp"
#include "transfer_state.hpp"

namespace kvferry::transfer_detail {
namespace {

using offer_key = std::pair<std::string, std::uint64_t>; // (peer, transfer)

caf::error pull_error(const transfer_state& st, ec code,
                      const proto::node_request& req, const std::string& what) {
  return make_error(code, fmt::format("node {}: request {} from '{}': {}",
                                      st.cfg.name, req.id, req.peer, what));
}

// The node hears how a pull it handed here ended before any byte could
// move (its reason, or ours: it then tells the prefill).
void tell_node(const transfer_state& st, const std::string& peer,
               std::uint64_t id, const caf::error& why) {
  caf::anon_send(st.node, proto::node_answered_atom::value, peer,
                 proto::node_report{id}, why);
}

// A served pull's caller waits for this transfer (its second pull is a
// duplicate, not a pull to hand to the node).
bool being_served(transfer_state& st, const std::string& peer,
                  std::uint64_t transfer_id) {
  auto p = st.in.find(peer);
  if (p == st.in.end())
    return false;
  auto t = p->second.transfers.find(transfer_id);
  return t != p->second.transfers.end() && t->second.waiter &&
         std::holds_alternative<answer_waiter>(*t->second.waiter);
}

caf::error check_dst_blocks(const transfer_state& st, const held_offer& h,
                            const proto::node_request& req) {
  auto n = h.dst.num_blocks();
  for (std::size_t i = 0; i < req.blocks.size(); ++i)
    if (req.blocks[i] >= n)
      return pull_error(st, ec::invalid_argument, req,
                        fmt::format("block id #{} is {}, past this cache's {} "
                                    "blocks",
                                    i, req.blocks[i], n));
  return {};
}

// A send order carries its extents across processes, where CAF serialises
// each on the I/O threads of both (about 0.1 us each on the 2-core dev
// machine: 1.4 ms for the 16,000 of a 1,000-block pull), while the prefill's
// node plans in its own process for the price of one hop more (tens of us).
// A pull that may need more extents than this (blocks x layers x K and V,
// before coalescing) asks the prefill's node instead: a want, block ids
// only, as a pull made before the offer does.
constexpr std::size_t max_shipped_extents = 256;

bool ships_extents(const held_offer& h, const proto::node_request& req) {
  return req.blocks.size() * h.dst.layers() * 2 <= max_shipped_extents;
}

// The pull of many blocks: the prefill's node plans and posts it (its part
// note finds our recv order posted: hand_offer).
void want(self_ptr self, const held_offer& h, const proto::node_request& req) {
  self->send(
      caf::actor_cast<node_actor>(h.offer.src_node),
      proto::node_want_atom::value,
      proto::node_request{req.id, h.offer.puller, req.blocks, {}, false});
}

// Plans the pull and orders the prefill's transfer actor to send it (the
// pull's one message). An error when it cannot be planned.
caf::error order_send(self_ptr self, const offer_key& key, const held_offer& h,
                      const proto::node_request& req) {
  auto& st = self->state;
  try {
    st.pull_plan.clear();
    plan_kv(h.src, h.offer.src_blocks, h.dst, req.blocks, std::nullopt,
            st.pull_plan);
  } catch (const std::exception& e) {
    return pull_error(st, ec::invalid_argument, req, e.what());
  }
  const auto& [peer, transfer_id] = key;
  proto::send_order o;
  o.transfer_id = transfer_id;
  o.peer = endpoint_of(self);
  o.extents = st.pull_plan;
  o.timeout_ms = h.offer.timeout_ms;
  // Its receives posted on the pull lane now, the order needs no
  // announcement back (transfer_lane.cpp); else it goes announced.
  if (lane_fits(self, h.offer.src))
    post_lane_pull(self, peer, transfer_id, h.offer.src.transfer, o);
  // A refused order fails the caller once the recv order settled, and the
  // node (node_answered) tells the prefill.
  self->request(caf::actor_cast<transfer_actor>(h.offer.src.transfer),
                caf::infinite, proto::send_atom::value, std::move(o))
      .then([](std::uint64_t) {}, // the bytes count where they land
            [self, peer = peer, transfer_id = transfer_id](caf::error& err) {
              settle_answer(self, peer, transfer_id, err);
            });
  return {};
}

// Claims the pull's recv order for the caller, then starts the bytes: a
// send order to the prefill's transfer actor, or a want to its node.
caf::result<proto::node_report> serve(self_ptr self, const offer_key& key,
                                      const held_offer& h,
                                      const proto::node_request& req) {
  auto& st = self->state;
  if (!ships_extents(h, req)) {
    want(self, h, req);
  } else if (auto err = order_send(self, key, h, req)) {
    tell_node(st, req.peer, req.id, err); // its advert fails too
    return err;
  }
  auto promise = self->make_response_promise<proto::node_report>();
  claim_recv(self, proto::recv_order{key.second, key.first, h.offer.timeout_ms},
             waiter_promise{answer_waiter{promise, req.id, st.node, {}}});
  return promise;
}

} // namespace

void hold_offer(self_ptr self, proto::pull_offer& offer) {
  auto& st = self->state;
  offer_key key{offer.peer, transfer_id_of(offer.id, 0)};
  held_offer h;
  try {
    h.src = layout_of(offer.src_layout);
    h.dst = layout_of(offer.dst_layout);
  } catch (const std::exception& e) { // the node checked them: not expected
    h.failure = make_error(
        ec::mismatch, fmt::format("node {}: request {} from '{}': {}",
                                  st.cfg.name, offer.id, offer.peer, e.what()));
  }
  h.offer = std::move(offer);
  auto& held = st.offers[key] = std::move(h);
  arm_deadline(self, std::chrono::milliseconds(held.offer.timeout_ms),
               held.deadline);
}

caf::result<proto::node_report> handle_pull(self_ptr self,
                                            proto::node_request& req) {
  auto& st = self->state;
  offer_key key{req.peer, transfer_id_of(req.id, 0)};
  auto i = st.offers.find(key);
  if (i == st.offers.end()) {
    if (being_served(st, key.first, key.second))
      return pull_error(st, ec::duplicate, req, "already open");
    if (!st.node)
      return pull_error(st, ec::invalid_argument, req,
                        "a pull, but transfer actor " + st.cfg.name +
                            " serves no node");
    // Not offered here: the node's want, one-sided or failure paths.
    return self->delegate(caf::actor_cast<node_actor>(st.node),
                          proto::node_pull_atom::value, std::move(req));
  }
  if (i->second.failure) {
    auto why = std::move(i->second.failure);
    st.offers.erase(i);
    tell_node(st, req.peer, req.id, why);
    return why;
  }
  if (auto err = check_dst_blocks(st, i->second, req))
    return err; // the offer stays for a pull with blocks that fit
  auto h = std::move(i->second);
  st.offers.erase(i);
  return serve(self, key, h, req);
}

void expire_offer(self_ptr self, const std::string& peer, std::uint64_t id,
                  std::uint64_t generation) {
  auto& st = self->state;
  auto i = st.offers.find({peer, id});
  if (i == st.offers.end() || i->second.generation != generation)
    return; // pulled, or another offer under the same id
  auto request_id = i->second.offer.id;
  st.offers.erase(i);
  caf::anon_send(st.node, proto::node_offer_atom::value, peer, request_id);
}

bool fail_offer(transfer_state& st, const std::string& peer, std::uint64_t id,
                const caf::error& why) {
  auto i = st.offers.find({peer, id});
  if (i == st.offers.end())
    return false;
  if (!i->second.failure)
    i->second.failure = why;
  return true;
}

} // namespace kvferry::transfer_detail
