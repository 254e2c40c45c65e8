// The producer: a prefill worker's app actor.
//
// For each request it takes block ids from its pool (pool_layout: one id =
// one block of tokens across all layers), "prefills" them with a
// deterministic pattern, gets destination ids from the consumer (push) and
// asks the worker's node actor to send them (node_send) — the whole request,
// or layer by layer as each layer is written (--layerwise, node_layer). In
// pull mode it advertises them through the node (node_advertise) and
// delegates the router's request to the consumer, whose node pulls and which
// answers the router itself. The node plans and orders the transfer
// actor; this actor plans nothing. Blocks return to the pool once the node
// says no transfer can touch them any more. The consumer's node is met on
// the first request to that consumer (node_connect names the consumer,
// which forwards the hello to its node).
//
// Credit (push): each consumer lends this producer destination blocks ahead
// of time (`reserve`, asked on first contact and when short). A request the
// credit covers is written, its sends ordered, and the router's request
// delegated to the consumer at once (`incoming`): no allocate/grant and no
// arrived/ready round trip on the critical path. Otherwise the request takes
// the allocate/grant path.
//
// Back-pressure: a request short of source blocks waits (app_config::
// queue_limit requests at most, each queue_wait_ms at most) for those of
// requests in flight, oldest first; the consumer likewise holds an allocate
// or advert it has no blocks for, so those replies get queue_wait_ms more.
#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <unordered_map>
#include <unordered_set>

#include <caf/all.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/app.hpp"
#include "kvferry/actors/kv_pattern.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/steady_ns.hpp"
#include "producer_state.hpp"

namespace kvferry {

namespace {

using namespace std::chrono;
using namespace producer_detail;

// How long a reply from a consumer may take that may wait in its queue
// for free blocks (allocate, advertise) on top of the usual deadline.
milliseconds queued_reply_timeout(const app_config& cfg) {
  return milliseconds(std::uint64_t{cfg.timeout_ms} + cfg.queue_wait_ms);
}

void resume_parked(self_ptr self);

void answer(self_ptr self, const ctx_ptr& ctx, proto::ready_report r) {
  self->state.active.erase(ctx->req.request_id);
  ctx->promise.deliver(std::move(r));
}

std::int64_t since(clock_type::time_point t0) {
  return duration_cast<nanoseconds>(clock_type::now() - t0).count();
}

using runtime::steady_ns;

// The producer's times as the request leaves for the consumer.
proto::producer_times handed_now(request_ctx& ctx) {
  ctx.at.handed_ns = steady_ns();
  return ctx.at;
}

void release_blocks(self_ptr self, request_ctx& ctx) {
  if (!ctx.released) {
    ctx.released = true;
    self->state.pool->release(ctx.ids);
    resume_parked(self);
  }
}

void fail_request(self_ptr self, const ctx_ptr& ctx, caf::error err) {
  if (!ctx->failed && ctx->delegated) {
    // The consumer holds the router's request: it answers with this.
    ctx->failed = true;
    self->send(caf::actor_cast<consumer_actor>(ctx->req.consumer),
               proto::abort_atom::value, ctx->req.request_id,
               self->state.cfg.name, std::move(err));
  } else if (!ctx->failed) {
    ctx->failed = true;
    self->state.active.erase(ctx->req.request_id);
    ctx->promise.deliver(std::move(err));
  }
  if (ctx->sends_left == 0 && !ctx->filling)
    release_blocks(self, *ctx);
}

// Writes the pattern of layers [first, first + count): one kernel on a GPU.
// An error (naming the request) when the GPU refused.
caf::error fill_layers(self_ptr self, const ctx_ptr& ctx, std::uint32_t first,
                       std::uint32_t count) {
  auto& st = self->state;
  auto begin = ctx->blocks.begin() + std::size_t{first} * ctx->bpl;
  std::vector<std::uint64_t> offsets(begin,
                                     begin + std::size_t{count} * ctx->bpl);
  try {
    st.pattern->fill(offsets,
                     {ctx->req.pattern_seed, ctx->req.request_id, first,
                      ctx->bpl, st.cfg.geometry.layer_block_bytes(),
                      ctx->req.sampled_verify});
    return {};
  } catch (const std::exception& e) {
    return make_error(ec::cuda_error,
                      fmt::format("producer '{}': request {}: {}", st.cfg.name,
                                  ctx->req.request_id, e.what()));
  }
}

// XXH3 of the request for the consumer, where the CPU can read the blocks
// (sampled verification: none, the consumer checks the stamps).
void hash_request(self_ptr self, request_ctx& ctx) {
  auto& cfg = self->state.cfg;
  if (!cfg.region->host_accessible() || ctx.req.sampled_verify)
    return;
  ctx.hash = hash_blocks(cfg.region->data(), ctx.blocks,
                         cfg.geometry.layer_block_bytes());
  ctx.hashed = true;
}

// How long our node may take to answer a send: each part's send order has
// timeout_ms, and every part is posted while send_into runs.
milliseconds node_reply_timeout(const app_config& cfg) {
  return milliseconds(std::uint64_t{cfg.timeout_ms} + 1000);
}

// The consumer's node's name (known: requests wait for the hello).
const std::string& consumer_node_of(self_ptr self, const request_ctx& ctx) {
  return self->state.nodes[ctx.req.consumer.address()].name;
}

// The consumer's report of a request it answered through us: our fill
// goes with its verification.
void add_fill_times(const request_ctx& ctx, proto::ready_report& r) {
  r.compute_ns += ctx.compute_ns;
  r.fill_ns = ctx.compute_ns;
  r.fill_gpu_ns = ctx.fill_gpu_ns;
  r.producer_at = ctx.at;
}

void notify_arrived(self_ptr self, const ctx_ptr& ctx) {
  auto& cfg = self->state.cfg;
  proto::arrival_notice n;
  n.request_id = ctx->req.request_id;
  n.bytes = ctx->bytes;
  n.xxhash = ctx->hash;
  n.has_xxhash = ctx->hashed;
  n.pattern_seed = ctx->req.pattern_seed;
  n.sampled_verify = ctx->req.sampled_verify;
  self->request(caf::actor_cast<consumer_actor>(ctx->req.consumer),
                milliseconds(cfg.timeout_ms), proto::arrived_atom::value,
                std::move(n))
      .then(
          [self, ctx](proto::ready_report& r) {
            if (ctx->failed)
              return;
            // Data time is the receiver's view (see ready_report); on this path
            // its transfer actor learned of the request at allocate, so the
            // grant and send ordering count as data time here.
            add_fill_times(*ctx, r);
            answer(self, ctx, std::move(r));
          },
          [self, ctx](caf::error& err) {
            fail_request(self, ctx, std::move(err));
          });
}

// Our node answered the send: every byte left the source blocks.
void on_sent(self_ptr self, const ctx_ptr& ctx) {
  if (--ctx->sends_left > 0 || ctx->failed) {
    if (ctx->failed && ctx->sends_left == 0)
      release_blocks(self, *ctx);
    return;
  }
  ctx->transfer_ns = since(ctx->send_start);
  release_blocks(self, *ctx);
  if (!ctx->delegated)
    notify_arrived(self, ctx);
}

// Asks our node to send the request into the ids of `g` (filling each layer
// and telling the node it is written, when layer by layer). An error when a
// fill failed (the layers before it are on their way).
caf::error send_into(self_ptr self, const ctx_ptr& ctx, const proto::grant& g) {
  auto& cfg = self->state.cfg;
  ctx->send_start = clock_type::now();
  ctx->consumer_name = g.receiver.name;
  auto id = ctx->req.request_id;
  ++ctx->sends_left;
  self->request(cfg.node, node_reply_timeout(cfg), proto::node_send_atom::value,
                proto::node_request{id, consumer_node_of(self, *ctx), ctx->ids,
                                    g.block_offsets, ctx->parts > 1})
      .then([self, ctx](const proto::node_report&) { on_sent(self, ctx); },
            [self, ctx](caf::error& err) {
              --ctx->sends_left;
              fail_request(self, ctx, std::move(err));
            });
  if (ctx->parts == 1) // filled and hashed before allocate
    return {};
  // Layer by layer: each layer goes as soon as it is written.
  std::int64_t fill_ns = 0;
  ctx->at.fill_start_ns = steady_ns();
  for (std::uint32_t l = 0; l < ctx->parts; ++l) {
    auto tf = clock_type::now();
    if (auto err = fill_layers(self, ctx, l, 1)) {
      // The layers after it never come: the node fails the send now (and
      // tells the consumer's), which frees the blocks.
      self->send(cfg.node, proto::node_fail_atom::value,
                 consumer_node_of(self, *ctx), id, err);
      return err;
    }
    fill_ns += since(tf);
    ctx->fill_gpu_ns += self->state.pattern->last_gpu_ns();
    self->request(cfg.node, node_reply_timeout(cfg),
                  proto::node_layer_atom::value, id, l, std::uint64_t{0})
        .then([](caf::ok_atom) {},
              [self, ctx](caf::error& err) {
                fail_request(self, ctx, std::move(err));
              });
  }
  auto th = clock_type::now();
  hash_request(self, *ctx);
  ctx->compute_ns += fill_ns + since(th);
  return {};
}

void on_grant(self_ptr self, const ctx_ptr& ctx, proto::grant& g) {
  if (ctx->failed)
    return;
  if (g.block_offsets.size() != ctx->ids.size())
    return fail_request(
        self, ctx,
        make_error(ec::mismatch,
                   fmt::format("request {}: consumer granted {} blocks, the "
                               "producer needs {}",
                               ctx->req.request_id, g.block_offsets.size(),
                               ctx->ids.size())));
  if (auto err = send_into(self, ctx, g))
    fail_request(self, ctx, std::move(err));
}

// ---- credit

// Asks `consumer` to lend blocks ahead of time, off the critical path: on
// first contact, and again when a request found the credit short (unless a
// reserve is pending or the last one lent nothing).
void maybe_reserve(self_ptr self, const caf::actor& consumer, credit_line& line,
                   std::uint64_t needed) {
  auto& cfg = self->state.cfg;
  if (cfg.credit_blocks == 0 || line.reserve_pending)
    return;
  if (line.asked && (line.blocks.size() >= needed || line.dry))
    return;
  line.asked = true;
  line.reserve_pending = true;
  proto::reserve_request r;
  r.producer = cfg.name;
  r.blocks = cfg.credit_blocks;
  r.layer_block_bytes = cfg.geometry.layer_block_bytes();
  r.layers = cfg.geometry.layers;
  auto addr = consumer.address();
  self->request(caf::actor_cast<consumer_actor>(consumer),
                milliseconds(cfg.timeout_ms), proto::reserve_atom::value,
                std::move(r))
      .then(
          [self, addr](proto::grant& g) {
            auto i = self->state.credit.find(addr);
            if (i == self->state.credit.end())
              return; // the consumer went down meanwhile
            auto& line = i->second;
            line.reserve_pending = false;
            line.dry = g.block_offsets.empty();
            line.receiver = std::move(g.receiver);
            line.blocks.insert(line.blocks.end(), g.block_offsets.begin(),
                               g.block_offsets.end());
          },
          [self, addr](caf::error& err) {
            auto i = self->state.credit.find(addr);
            if (i == self->state.credit.end())
              return;
            i->second.reserve_pending = false;
            i->second.dry = true;
            spdlog::warn("producer {}: a consumer refused to lend blocks ({}); "
                         "its requests negotiate each time",
                         self->state.cfg.name, render(err));
          });
}

// A request failed before anything was sent for it or delegated: the
// router's answer, directly or through the promise a parked request holds.
caf::result<proto::ready_report> answer_failure(const ctx_ptr& ctx,
                                                caf::error err, bool parked) {
  if (!parked)
    return err;
  ctx->promise.deliver(std::move(err));
  return ctx->promise;
}

// Takes the request's destination blocks from the credit, orders the sends
// and hands the router's request to the consumer, which answers it.
caf::result<proto::ready_report> send_with_credit(self_ptr self,
                                                  const ctx_ptr& ctx,
                                                  credit_line& line,
                                                  bool parked) {
  auto n = ctx->ids.size();
  proto::grant g;
  g.request_id = ctx->req.request_id;
  g.receiver = line.receiver;
  g.block_offsets.assign(line.blocks.end() - static_cast<std::ptrdiff_t>(n),
                         line.blocks.end());
  line.blocks.resize(line.blocks.size() - n);
  if (auto err = send_into(self, ctx, g)) {
    // Nothing was delegated: the router hears it from here. The layers sent
    // before the failure land in the lent blocks, which therefore stay out
    // of our credit (the consumer gets them back when the loan ends).
    ctx->failed = true;
    if (ctx->sends_left == 0)
      release_blocks(self, *ctx);
    spdlog::warn("producer {}: {} lent blocks of request {} left unused: {}",
                 self->state.cfg.name, n, ctx->req.request_id, render(err));
    return answer_failure(ctx, std::move(err), parked);
  }
  ctx->delegated = true;
  proto::credit_notice notice;
  notice.request_id = ctx->req.request_id;
  notice.producer = self->state.cfg.name;
  notice.block_offsets = std::move(g.block_offsets);
  notice.blocks_per_layer = ctx->bpl;
  notice.parts = ctx->parts;
  notice.bytes = ctx->bytes;
  notice.xxhash = ctx->hash;
  notice.has_xxhash = ctx->hashed;
  notice.pattern_seed = ctx->req.pattern_seed;
  notice.sampled_verify = ctx->req.sampled_verify;
  notice.compute_ns = ctx->compute_ns;
  notice.fill_gpu_ns = ctx->fill_gpu_ns;
  notice.producer_at = handed_now(*ctx);
  auto consumer = caf::actor_cast<consumer_actor>(ctx->req.consumer);
  if (!parked)
    return self->delegate(consumer, proto::incoming_atom::value,
                          std::move(notice));
  // The router's request was answered with a promise (it waited for blocks,
  // its fill or the consumer's node): the promise delegates it, so the
  // consumer still answers the router directly.
  ctx->promise.delegate(consumer, proto::incoming_atom::value,
                        std::move(notice));
  return ctx->promise;
}

// Pull: what the consumer needs to pull the request, verify it and answer
// the router (our fill times go into its report).
proto::arrival_notice advert_of(self_ptr self, request_ctx& ctx) {
  auto& r = ctx.req;
  proto::arrival_notice n;
  n.request_id = r.request_id;
  n.bytes = ctx.bytes;
  n.xxhash = ctx.hash;
  n.has_xxhash = ctx.hashed;
  n.pattern_seed = r.pattern_seed;
  n.sampled_verify = r.sampled_verify;
  n.source = self->state.cfg.self;
  n.block_offsets = ctx.ids;
  n.blocks_per_layer = ctx.bpl;
  n.layers = 0; // one part: every layer was written before the advert
  n.requester = ctx.router;
  n.producer = caf::actor_cast<caf::actor>(self);
  n.compute_ns = ctx.compute_ns;
  n.fill_gpu_ns = ctx.fill_gpu_ns;
  n.producer_at = handed_now(ctx);
  return n;
}

// Pull: offers the blocks through our node (it answers once the consumer's
// node has pulled them, or failed: then the blocks are free) and delegates
// the router's request to the consumer, which pulls, verifies and answers
// the router itself: the answer takes one hop, not two through here. The
// request stays active until our node lets go of the blocks: a consumer
// that will not pull says so (abort: withdraw_offer), and a failed offer
// fails the consumer's side (fail_request's abort).
caf::result<proto::ready_report> advertise(self_ptr self, const ctx_ptr& ctx,
                                           bool parked) {
  auto& st = self->state;
  auto& r = ctx->req;
  st.active.emplace(r.request_id, ctx);
  ++ctx->sends_left;
  self->request(
          st.cfg.node,
          queued_reply_timeout(st.cfg) + node_reply_timeout(st.cfg),
          proto::node_advertise_atom::value,
          proto::node_request{
              r.request_id, consumer_node_of(self, *ctx), ctx->ids, {}, false})
      .then(
          [self, ctx](const proto::node_report&) {
            --ctx->sends_left;
            self->state.active.erase(ctx->req.request_id);
            release_blocks(self, *ctx);
          },
          [self, ctx](caf::error& err) {
            --ctx->sends_left;
            self->state.active.erase(ctx->req.request_id);
            fail_request(self, ctx, std::move(err));
          });
  ctx->delegated = true;
  auto consumer = caf::actor_cast<consumer_actor>(r.consumer);
  if (!parked)
    return self->delegate(consumer, proto::advertise_atom::value,
                          advert_of(self, *ctx));
  // The router's request waited here (blocks, fill, the consumer's node):
  // its promise delegates it, so the consumer still answers the router.
  ctx->promise.delegate(consumer, proto::advertise_atom::value,
                        advert_of(self, *ctx));
  return ctx->promise;
}

// The consumer will not pull request `id` (it failed there and answered the
// router): our node withdraws the offer, and the blocks come back when it
// answers the advert. Only the request's own consumer may say so.
void withdraw_offer(self_ptr self, std::uint64_t id, caf::error& why) {
  auto& st = self->state;
  auto i = st.active.find(id);
  if (i == st.active.end())
    return; // our node let go of the blocks already
  auto ctx = i->second;
  if (!ctx->req.pull || ctx->failed ||
      ctx->req.consumer.address() !=
          caf::actor_cast<caf::actor_addr>(self->current_sender()))
    return;
  ctx->failed = true; // answered by the consumer: no abort back to it
  if (ctx->sends_left > 0)
    self->send(st.cfg.node, proto::node_fail_atom::value,
               consumer_node_of(self, *ctx), id, std::move(why));
}

void negotiate(self_ptr self, const ctx_ptr& ctx) {
  auto& st = self->state;
  proto::allocate_request a;
  a.request_id = ctx->req.request_id;
  a.blocks_per_layer = ctx->bpl;
  a.layers = st.cfg.geometry.layers;
  a.layer_block_bytes = st.cfg.geometry.layer_block_bytes();
  a.producer = st.cfg.name;
  a.parts = ctx->parts;
  a.requester = ctx->router;
  ctx->at.handed_ns = steady_ns();
  self->request(caf::actor_cast<consumer_actor>(ctx->req.consumer),
                queued_reply_timeout(st.cfg), proto::allocate_atom::value,
                std::move(a))
      .then([self, ctx](proto::grant& g) { on_grant(self, ctx, g); },
            [self, ctx](caf::error& err) {
              fail_request(self, ctx, std::move(err));
            });
}

// Hands a request whose blocks are written (unless layerwise) to the
// consumer: through its credit, or allocate/grant, or an advert (pull).
caf::result<proto::ready_report> dispatch(self_ptr self, const ctx_ptr& ctx,
                                          bool parked) {
  auto& st = self->state;
  auto& r = ctx->req;
  if (!r.pull) {
    auto& line = st.credit[r.consumer.address()];
    maybe_reserve(self, r.consumer, line, ctx->ids.size());
    if (line.blocks.size() >= ctx->ids.size())
      return send_with_credit(self, ctx, line, parked);
  }
  if (r.pull)
    return advertise(self, ctx, parked);
  if (!parked)
    ctx->promise = self->make_response_promise<proto::ready_report>();
  st.active.emplace(r.request_id, ctx);
  negotiate(self, ctx);
  return ctx->promise;
}

// Our node meets `consumer`'s (node_connect: the consumer forwards the hello
// to its node); the requests that waited for it go on, or fail with it.
void connect_node(self_ptr self, const caf::actor& consumer) {
  auto& st = self->state;
  auto addr = consumer.address();
  auto& peer = st.nodes[addr];
  if (std::exchange(peer.connecting, true))
    return;
  self->request(st.cfg.node, milliseconds(st.cfg.timeout_ms),
                proto::node_connect_atom::value, consumer)
      .then(
          [self, addr](std::string& name) {
            auto& peer = self->state.nodes[addr];
            peer.connecting = false;
            peer.name = std::move(name);
            auto waiting = std::move(peer.waiting);
            for (auto& ctx : waiting) {
              if (ctx->failed)
                continue;
              self->state.active.erase(ctx->req.request_id);
              dispatch(self, ctx, true);
            }
          },
          [self, addr](caf::error& err) {
            auto i = self->state.nodes.find(addr);
            if (i == self->state.nodes.end())
              return; // the consumer went down: its requests failed
            auto waiting = std::move(i->second.waiting);
            self->state.nodes.erase(i);
            for (auto& ctx : waiting) // the node's error names both nodes
              fail_request(self, ctx, err);
          });
}

// A request whose blocks are written (unless layerwise) goes to the
// consumer once our node has met the consumer's. A request that waited for
// blocks, its fill or the consumer's node (`parked`) already holds the
// router's promise.
caf::result<proto::ready_report> hand_over(self_ptr self, const ctx_ptr& ctx,
                                           bool parked) {
  auto& st = self->state;
  auto& r = ctx->req;
  auto& peer = st.nodes[r.consumer.address()];
  if (!peer.name.empty())
    return dispatch(self, ctx, parked);
  if (!parked)
    ctx->promise = self->make_response_promise<proto::ready_report>();
  st.active.emplace(r.request_id, ctx); // its consumer's death fails it
  peer.waiting.push_back(ctx);
  connect_node(self, r.consumer);
  return ctx->promise;
}

// A pattern worker writes (and hashes) the whole request; it goes on when
// that is done, while this actor serves other requests. Meanwhile it is
// active (its consumer's death fails it), and its blocks return only once
// the worker let go of them. No deadline on the worker's answer: it is a
// thread of this process, linked to this actor (its death ends us), that
// always answers; until it has, the blocks may still be written.
caf::result<proto::ready_report>
fill_then_hand_over(self_ptr self, const ctx_ptr& ctx, bool parked) {
  auto& st = self->state;
  if (!parked)
    ctx->promise = self->make_response_promise<proto::ready_report>();
  st.active.emplace(ctx->req.request_id, ctx);
  ctx->filling = true;
  auto worker = st.workers.begin_job();
  self->request(st.workers.worker(worker), caf::infinite, ctx->blocks,
                ctx->req.pattern_seed, ctx->req.request_id, std::uint32_t{0},
                ctx->bpl, std::uint64_t{st.cfg.geometry.layer_block_bytes()},
                ctx->req.sampled_verify)
      .then(
          [self, ctx, worker](std::uint64_t hash, std::int64_t ns,
                              std::int64_t gpu_ns, std::int64_t start_ns) {
            self->state.workers.job_done(worker);
            ctx->filling = false;
            if (ctx->failed) {
              if (ctx->sends_left == 0)
                release_blocks(self, *ctx);
              return;
            }
            ctx->hash = hash;
            ctx->hashed = self->state.cfg.region->host_accessible() &&
                          !ctx->req.sampled_verify;
            ctx->compute_ns = ns;
            ctx->fill_gpu_ns = gpu_ns;
            ctx->at.fill_start_ns = start_ns;
            self->state.active.erase(ctx->req.request_id);
            hand_over(self, ctx, true);
          },
          [self, ctx, worker](caf::error& err) {
            self->state.workers.job_done(worker);
            ctx->filling = false;
            fail_request(self, ctx, std::move(err));
          });
  return ctx->promise;
}

// Runs a request whose source blocks are allocated: written here, by a
// pattern worker, or layer by layer as it is sent.
caf::result<proto::ready_report> run_request(self_ptr self, const ctx_ptr& ctx,
                                             bool parked) {
  auto& st = self->state;
  auto& r = ctx->req;
  if (st.monitored.insert(r.consumer.address()).second)
    self->monitor(r.consumer);
  if (auto i = st.consumer_names.find(r.consumer.address());
      i != st.consumer_names.end())
    ctx->consumer_name = i->second;
  if (r.layerwise && !r.pull)
    return hand_over(self, ctx, parked); // filled as each layer is sent
  if (!st.workers.empty())
    return fill_then_hand_over(self, ctx, parked);
  ctx->at.fill_start_ns = steady_ns();
  auto t0 = clock_type::now();
  if (auto err = fill_layers(self, ctx, 0, st.cfg.geometry.layers)) {
    release_blocks(self, *ctx); // no send touched them
    return answer_failure(ctx, std::move(err), parked);
  }
  hash_request(self, *ctx);
  ctx->compute_ns = since(t0);
  ctx->fill_gpu_ns = st.pattern->last_gpu_ns();
  return hand_over(self, ctx, parked);
}

// Takes `ctx`'s source blocks from the pool; false when too few are free.
bool take_blocks(self_ptr self, request_ctx& ctx) {
  auto& st = self->state;
  if (!st.pool->allocate(ctx.bpl, ctx.ids))
    return false;
  ctx.blocks = layer_block_offsets(st.layout, ctx.ids);
  return true;
}

// Starts parked requests, oldest first, while their blocks fit.
void resume_parked(self_ptr self) {
  auto& st = self->state;
  while (!st.parked.empty()) {
    auto ctx = st.parked.front();
    if (!take_blocks(self, *ctx))
      return;
    st.parked.pop_front();
    run_request(self, ctx, true);
  }
}

void arm_park_timer(self_ptr self) {
  auto& st = self->state;
  if (st.park_timer_armed || st.parked.empty())
    return;
  st.park_timer_armed = true;
  auto wait = st.parked.front()->park_deadline - self->clock().now();
  self->delayed_send(self, std::max(caf::timespan{0}, wait),
                     proto::sweep_atom::value);
}

// The park timer: requests whose wait for source blocks ran out fail.
void on_park_timer(self_ptr self) {
  auto& st = self->state;
  st.park_timer_armed = false;
  auto now = self->clock().now();
  while (!st.parked.empty() && st.parked.front()->park_deadline <= now) {
    auto ctx = st.parked.front();
    st.parked.pop_front();
    ctx->released = true; // it never got blocks
    fail_request(
        self, ctx,
        make_error(ec::timeout,
                   fmt::format("producer '{}': request {} waited {} ms for "
                               "{} source blocks (queue_wait_ms); {} of {} "
                               "free, the rest held by requests whose sends "
                               "are still in flight",
                               st.cfg.name, ctx->req.request_id,
                               st.cfg.queue_wait_ms, ctx->bpl,
                               st.pool->free_blocks(),
                               st.pool->block_count())));
  }
  resume_parked(self); // a request behind them may fit
  arm_park_timer(self);
}

caf::result<proto::ready_report> on_prefill(self_ptr self,
                                            proto::prefill_request& req) {
  auto& st = self->state;
  auto& geo = st.cfg.geometry;
  if (!req.consumer)
    return make_error(
        ec::invalid_argument,
        fmt::format("request {}: no consumer named", req.request_id));
  auto bpl = geo.blocks_for_tokens(req.prompt_tokens);
  if (bpl == 0)
    return make_error(ec::invalid_argument,
                      fmt::format("request {}: empty prompt", req.request_id));
  auto ctx = std::make_shared<request_ctx>();
  ctx->at.received_ns = steady_ns();
  ctx->router = caf::actor_cast<caf::actor>(self->current_sender());
  ctx->bpl = bpl;
  ctx->parts = req.layerwise || st.cfg.layerwise ? geo.layers : 1;
  if (ctx->parts > max_parts)
    return make_error(
        ec::invalid_argument,
        fmt::format("--layerwise supports at most {} layers", max_parts));
  std::uint64_t n = bpl; // ids: each a block of every layer
  ctx->req = std::move(req);
  ctx->req.layerwise |= st.cfg.layerwise;
  ctx->req.pull |= st.cfg.pull;
  ctx->bytes = n * geo.layers * geo.layer_block_bytes();
  if (st.parked.empty() && take_blocks(self, *ctx))
    return run_request(self, ctx, false);
  // Short of blocks: those of requests in flight come back once their sends
  // resolve (done, failed or timed out), so wait for them; with credit the
  // consumer may answer the router before our send completion is in.
  if (n > st.pool->block_count() || st.parked.size() >= st.cfg.queue_limit)
    return make_error(
        ec::invalid_argument,
        fmt::format("producer '{}': block pool exhausted: request {} needs {} "
                    "blocks, {} of {} free, {} requests waiting (queue limit "
                    "{}; raise --pool-blocks)",
                    st.cfg.name, ctx->req.request_id, n, st.pool->free_blocks(),
                    st.pool->block_count(), st.parked.size(),
                    st.cfg.queue_limit));
  ctx->promise = self->make_response_promise<proto::ready_report>();
  ctx->park_deadline = self->clock().now() + milliseconds(st.cfg.queue_wait_ms);
  st.parked.push_back(ctx);
  arm_park_timer(self);
  return ctx->promise;
}

// Fails the requests in flight or waiting for blocks that `pred` selects.
template<class Pred>
void fail_where(self_ptr self, Pred pred, const caf::error& err) {
  auto& st = self->state;
  std::vector<ctx_ptr> hit;
  for (auto& [id, ctx] : st.active)
    if (pred(*ctx))
      hit.push_back(ctx);
  for (auto i = st.parked.begin(); i != st.parked.end();) {
    if (pred(**i)) {
      (*i)->released = true; // it never got blocks
      hit.push_back(*i);
      i = st.parked.erase(i);
    } else {
      ++i;
    }
  }
  for (auto& ctx : hit)
    fail_request(self, ctx, err);
}

// A worker left the directory: if it is a consumer of ours, its requests
// fail now and its credit is gone.
void on_consumer_left(self_ptr self, const std::string& name,
                      const caf::error& why) {
  auto& st = self->state;
  std::unordered_set<caf::actor_addr> gone;
  for (auto i = st.consumer_names.begin(); i != st.consumer_names.end();) {
    if (i->second == name) {
      gone.insert(i->first);
      i = st.consumer_names.erase(i);
    } else {
      i = std::next(i);
    }
  }
  for (auto i = st.credit.begin(); i != st.credit.end();)
    i = gone.count(i->first) != 0 || i->second.receiver.name == name
            ? st.credit.erase(i)
            : std::next(i);
  for (auto& addr : gone)
    st.nodes.erase(addr); // met again (hello) by its next request
  fail_where(
      self,
      [&](const request_ctx& c) {
        return c.consumer_name == name ||
               gone.count(c.req.consumer.address()) != 0;
      },
      make_error(ec::peer_down,
                 fmt::format("consumer '{}' left the directory: {}", name,
                             render(why))));
}

producer_actor::behavior_type producer_impl(self_ptr self, app_config cfg) {
  self->state.layout = pool_layout(cfg.geometry, cfg.region->size());
  // block_bytes 1: the pool's "offsets" are the layout's block ids.
  self->state.pool =
      std::make_unique<block_pool>(self->state.layout.num_blocks(), 1);
  self->state.pattern = std::make_unique<kv_pattern>(cfg.region);
  self->state.workers = pattern_detail::pattern_workers{
      self, cfg.region, cfg.geometry.layer_block_bytes()};
  self->state.cfg = std::move(cfg);
  if (self->state.cfg.node)
    self->link_to(self->state.cfg.node);
  self->set_down_handler([self](caf::down_msg& dm) {
    self->state.monitored.erase(dm.source);
    self->state.credit.erase(dm.source); // its loan died with it
    self->state.nodes.erase(dm.source);
    std::vector<ctx_ptr> hit;
    for (auto& [id, ctx] : self->state.active)
      if (ctx->req.consumer.address() == dm.source)
        hit.push_back(ctx);
    for (auto& ctx : hit) {
      auto who = ctx->consumer_name.empty()
                     ? "of request " + std::to_string(ctx->req.request_id)
                     : "'" + ctx->consumer_name + "'";
      fail_request(
          self, ctx,
          make_error(ec::peer_down, fmt::format("consumer {} is down: {}", who,
                                                render(dm.reason))));
    }
  });
  return {
      [self](proto::prefill_atom, proto::prefill_request& req) {
        return on_prefill(self, req);
      },
      [self](joined_atom, const worker_info& w) {
        if (w.role == worker_role::decode && w.app)
          self->state.consumer_names[w.app.address()] = w.name;
      },
      [self](proto::credit_atom, std::vector<std::uint64_t>& blocks) {
        auto from = caf::actor_cast<caf::actor_addr>(self->current_sender());
        auto i = self->state.credit.find(from);
        if (i == self->state.credit.end())
          return; // a consumer we no longer deal with
        auto& line = i->second.blocks;
        line.insert(line.end(), blocks.begin(), blocks.end());
        i->second.dry = false;
      },
      [self](left_atom, const std::string& name, const caf::error& why) {
        on_consumer_left(self, name, why);
      },
      [self](proto::abort_atom, std::uint64_t id, const std::string&,
             caf::error& why) { withdraw_offer(self, id, why); },
      [self](proto::sweep_atom) { on_park_timer(self); },
  };
}

} // namespace

producer_actor spawn_producer(caf::actor_system& sys, app_config cfg) {
  return sys.spawn(producer_impl, std::move(cfg));
}

} // namespace kvferry
