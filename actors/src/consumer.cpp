// The consumer: a decode worker's app actor.
//
// Its pool is pool_layout's block ids (one id = one block of tokens across
// all layers); the worker's node actor moves every byte into them.
// Push: `allocate` reserves destination ids and asks our node to receive
// the producer's push into them (node_receive: its recv orders are posted
// at once); the grant goes back to the producer. When the node reports the
// request landed and the producer's `arrived` notice is in, the consumer
// hashes what arrived, compares it with what the producer says it sent,
// returns the blocks (there is no real decode here) and answers ready.
// Pull: `advertise` does the same, but asks our node to pull the advertised
// blocks into the ids it just allocated (node_pull). The producer delegates
// the router's request with its advert, so the answer goes to the router
// directly; a pull that fails here tells the producer (abort), which
// withdraws its offer.
//
// Credit: `reserve` lends a producer blocks ahead of time (a loan, bounded
// by lend_percent of the pool). The producer writes requests into them
// without asking and delegates the router's request here (`incoming`); the
// consumer checks the blocks are ones it lent that producer, waits, verifies
// and answers the router itself. Freed blocks go back to the producer's
// credit in batches; a dead producer's loan returns to the pool.
//
// Back-pressure: an allocate or advertise that finds too few free blocks
// waits in a bounded queue (app_config::queue_limit, queue_wait_ms) and is
// served in arrival order as blocks come back (finished requests, credit
// returned by a dead producer's loan); it fails only when the queue is full
// or its wait runs out. A producer that dies (down message, or the
// directory's `left`) takes its requests with it at once: they fail naming
// it, and their blocks return once the transfer actor let go of them.
//
// A request whose requester (the router waiting for its answer) is gone
// (down message: it quit, or its node disconnected) is cancelled at once:
// nobody will take its answer, and a stalled producer may never send
// `arrived`. Its blocks return as soon as no transfer reply is outstanding.
//
// Every request ends: a failed one leaves `requests` (its id free) as soon
// as no transfer reply is outstanding, whether or not anyone waits for its
// answer (a push request whose producer's send failed never gets
// `arrived`); and a last-resort deadline (3 x timeout_ms + 1 s) fails any
// request still open, naming what it waited for.
#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <caf/all.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "consumer_state.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/app.hpp"
#include "kvferry/actors/kv_pattern.hpp"
#include "kvferry/actors/node_actor.hpp"
#include "kvferry/actors/plan.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/metrics.hpp"
#include "kvferry/runtime/steady_ns.hpp"

namespace kvferry {
namespace {

using namespace std::chrono;
using namespace consumer_detail;

using runtime::steady_ns;

// Pool figures for people (stats, metrics, logs) count layer-blocks, as
// --pool-blocks does: an id is a block of every layer.
std::uint64_t layer_blocks(const consumer_state& st, std::uint64_t ids) {
  return ids * st.cfg.geometry.layers;
}

loan& loan_by_id(consumer_state& st, std::uint32_t id) {
  return st.loans[id - 1];
}

void serve_queue(self_ptr self);

// Blocks back in the pool: the requests waiting for them go first.
void to_pool(self_ptr self, const std::vector<std::uint64_t>& blocks) {
  self->state.pool->release(blocks);
  serve_queue(self);
}

// Sends the freed blocks back once they are at least as many as the
// producer still holds: one message per batch, never more than half the
// loan parked here while the producer runs low, and nothing sent when it
// has plenty (blocks then simply wait for the next batch).
void maybe_return_credit(self_ptr self, loan& l) {
  if (l.returning.empty() || l.returning.size() < l.held)
    return;
  self->send(caf::actor_cast<producer_actor>(l.producer_actor),
             proto::credit_atom::value, l.returning);
  ++self->state.stats.credit_returns;
  l.held += l.returning.size();
  l.returning.clear(); // keeps its capacity
}

// Blocks of a delegated request are free: back to the loan's producer, or to
// the pool when that producer is gone.
void return_lent_blocks(self_ptr self, std::uint32_t loan_id,
                        const std::vector<std::uint64_t>& blocks) {
  auto& st = self->state;
  auto& l = loan_by_id(st, loan_id);
  for (auto off : blocks)
    st.block_in_request[off] = false;
  if (!l.alive) {
    for (auto off : blocks)
      st.loan_of_block[off] = 0;
    l.lent -= blocks.size();
    to_pool(self, blocks);
    return;
  }
  l.returning.insert(l.returning.end(), blocks.begin(), blocks.end());
  maybe_return_credit(self, l);
}

// Blocks that a timed-out CUDA IPC copy may still write stay out of use
// (neither pool nor credit) until their parts are settled (docs/gpu.md).
// The transfer actor logs why a transfer is held; the blocks' return is
// logged here when the hold was more than the settle round trip.
void quarantine_blocks(self_ptr self, request_ctx& ctx, bool on) {
  if (ctx.quarantined == on)
    return;
  ctx.quarantined = on;
  auto& st = self->state;
  auto layer_blocks_held = layer_blocks(st, ctx.blocks.size());
  auto n = static_cast<std::int64_t>(layer_blocks_held);
  st.quarantined_gauge->add(on ? n : -n);
  if (on) {
    st.stats.quarantined_blocks += layer_blocks_held;
    ctx.quarantined_since = clock_type::now();
    return;
  }
  st.stats.quarantined_blocks -= layer_blocks_held;
  auto held = duration<double>(clock_type::now() - ctx.quarantined_since);
  if (held > milliseconds(100))
    spdlog::info("consumer {}: {} blocks of failed request {} are back after "
                 "{:.1f} s in quarantine ({} blocks still quarantined)",
                 st.cfg.name, n, ctx.request_id, held.count(),
                 st.stats.quarantined_blocks);
}

void release_blocks(self_ptr self, request_ctx& ctx) {
  if (ctx.released)
    return;
  if (ctx.unsettled > 0) {
    quarantine_blocks(self, ctx, true);
    return;
  }
  quarantine_blocks(self, ctx, false);
  ctx.released = true;
  if (ctx.loan_id != 0)
    return_lent_blocks(self, ctx.loan_id, ctx.blocks);
  else
    to_pool(self, ctx.blocks);
}

// What the check of a request that arrived compares: with the producer's
// XXH3 when it sent one and the CPU can read our blocks (by_hash), else the
// pattern regenerated next to them (on the GPU for a cuda region), or only
// its stamps (sampled: the producer wrote nothing else).
struct verify_job {
  std::vector<std::uint64_t> offsets; // layer-blocks, as the producer hashed
  pattern_blocks blocks;
  bool by_hash = false;
};

verify_job verify_job_of(const consumer_state& st, const request_ctx& ctx) {
  auto& n = *ctx.notice;
  verify_job job;
  job.offsets = layer_block_offsets(st.layout, ctx.blocks);
  job.blocks.seed = n.pattern_seed;
  job.blocks.request_id = ctx.request_id;
  job.blocks.blocks_per_layer = static_cast<std::uint32_t>(ctx.blocks.size());
  job.blocks.block_bytes = st.cfg.geometry.layer_block_bytes();
  job.blocks.sampled = n.sampled_verify;
  job.by_hash =
      n.has_xxhash && !n.sampled_verify && st.cfg.region->host_accessible();
  return job;
}

caf::error size_mismatch(const consumer_state& st, const request_ctx& ctx) {
  if (ctx.bytes == ctx.notice->bytes)
    return {};
  return make_error(ec::mismatch,
                    fmt::format("consumer '{}': request {}: {} bytes "
                                "arrived, the producer sent {}",
                                st.cfg.name, ctx.request_id, ctx.bytes,
                                ctx.notice->bytes));
}

// The check's outcome: `value` is the XXH3 of what arrived (by_hash) or the
// index of the first block that differs from the pattern (check_value).
caf::error verdict(const consumer_state& st, const request_ctx& ctx,
                   const verify_job& job, std::uint64_t value) {
  auto& n = *ctx.notice;
  if (job.by_hash) {
    if (value == n.xxhash)
      return {};
    return make_error(
        ec::mismatch,
        fmt::format("consumer '{}': request {}: {} bytes arrived with xxhash "
                    "{:016x}, the producer sent {} bytes with xxhash {:016x}",
                    st.cfg.name, ctx.request_id, ctx.bytes, value, n.bytes,
                    n.xxhash));
  }
  if (value == pattern_detail::no_mismatch)
    return {};
  auto bpl = job.blocks.blocks_per_layer;
  return make_error(
      ec::mismatch,
      fmt::format("consumer '{}': request {}: block {} of layer {} (offset "
                  "{} in {} memory) differs from what the producer wrote "
                  "(pattern seed {}{})",
                  st.cfg.name, ctx.request_id, value % bpl, value / bpl,
                  job.offsets[value],
                  st.cfg.region->host_accessible()
                      ? std::string{"host"}
                      : fmt::format("GPU {}", st.cfg.region->gpu()),
                  n.pattern_seed,
                  job.blocks.sampled ? "; sampled: a 16-byte stamp of one of "
                                       "its 4 KiB pages"
                                     : ""));
}

// Pull: tells `producer`, which advertised request `id`, that it will not be
// pulled (it failed here; the router has the answer), so that its offer is
// withdrawn now rather than holding the source blocks to its deadline.
void refuse_pull(self_ptr self, const caf::actor& producer, std::uint64_t id,
                 const caf::error& why) {
  if (producer)
    self->send(caf::actor_cast<producer_actor>(producer),
               proto::abort_atom::value, id, self->state.cfg.name, why);
}

// Out of `requests`, so that its id is free again; only if the entry is
// still this request (a late part of a request that expired must not
// forget a newer one under the same id).
void forget(consumer_state& st, const request_ctx& ctx) {
  auto i = st.requests.find(ctx.request_id);
  if (i != st.requests.end() && i->second.get() == &ctx)
    st.requests.erase(i);
}

// How many failed push requests a late `arrived` can still learn about.
constexpr std::size_t failed_unanswered_limit = 256;

// A failed request leaves `requests` and its outcome goes out once: to
// whoever waits for the reply, else (a push request whose producer has not
// sent `arrived`: its send failed, or it never got the grant) to a late
// `arrived`, and to the log.
void finish_failed(self_ptr self, const ctx_ptr& ctx) {
  auto& st = self->state;
  forget(st, *ctx);
  if (auto producer = std::exchange(ctx->advertiser, caf::actor{}))
    refuse_pull(self, producer, ctx->request_id, ctx->failure);
  if (ctx->answered)
    return;
  ctx->answered = true;
  if (ctx->promise) {
    ctx->promise->deliver(ctx->failure);
    return;
  }
  if (ctx->orphaned) // its producer is gone: nobody to tell
    return;
  spdlog::warn("consumer {}: request {} of producer '{}' failed before its "
               "`arrived` came: {}",
               st.cfg.name, ctx->request_id, ctx->producer,
               render(ctx->failure));
  st.failed_unanswered.emplace_back(ctx->request_id, ctx->failure);
  if (st.failed_unanswered.size() > failed_unanswered_limit)
    st.failed_unanswered.pop_front();
}

// keep_blocks_until_decoded: a request whose bytes are all in goes into
// `decoding` as its verification starts and keeps its blocks there until
// its `decoded` comes, which may be before its answer (the simulator's
// decode model hears the last byte land before the producer's `arrived`
// gets here): then they go back as it is answered.
bool still_decoding(const consumer_state& st, const request_ctx& ctx) {
  return st.cfg.keep_blocks_until_decoded && !ctx.decoded;
}

// The request's blocks go back and it leaves `decoding`.
void end_decoding(self_ptr self, const ctx_ptr& ctx) {
  auto& decoding = self->state.decoding;
  auto i = decoding.find(ctx->request_id);
  if (i != decoding.end() && i->second == ctx)
    decoding.erase(i);
  release_blocks(self, *ctx);
}

// `decoded`: request `id` left decode. Its blocks go back now if it has been
// answered; in flight or being verified, when it is. An id neither holds
// was not kept (the option is off) or failed, its blocks back already.
void on_decoded(self_ptr self, std::uint64_t id) {
  auto& st = self->state;
  if (auto i = st.decoding.find(id); i != st.decoding.end()) {
    auto ctx = i->second;
    ctx->decoded = true;
    if (!ctx->verifying)
      end_decoding(self, ctx);
    return;
  }
  if (auto i = st.requests.find(id); i != st.requests.end())
    i->second->decoded = true;
}

// The request was checked (`bad`: why it failed, took `verify_ns` from
// `verify_start_ns`, its kernel `verify_gpu_ns`): its blocks go back (or
// wait for `decoded`) and the answer goes out.
void finish_verified(self_ptr self, const ctx_ptr& ctx, caf::error bad,
                     std::int64_t verify_ns, std::int64_t verify_gpu_ns,
                     std::int64_t verify_start_ns) {
  ctx->verifying = false;
  if (bad || !still_decoding(self->state, *ctx))
    end_decoding(self, ctx);
  if (bad) {
    ctx->promise->deliver(std::move(bad));
    return;
  }
  proto::ready_report r;
  r.request_id = ctx->request_id;
  r.bytes = ctx->bytes;
  r.transfer_ns = ctx->landed_ns > ctx->first_known_ns
                      ? ctx->landed_ns - ctx->first_known_ns
                      : 0;
  r.data_start_ns = r.transfer_ns > 0 ? ctx->first_known_ns : 0;
  r.gpu_copy_ns = ctx->gpu_copy_ns;
  r.gpu_queued_ns = ctx->gpu_queued_ns;
  r.compute_ns = verify_ns + ctx->producer_compute_ns;
  r.fill_ns = ctx->producer_compute_ns;
  r.fill_gpu_ns = ctx->producer_fill_gpu_ns;
  r.verify_gpu_ns = verify_gpu_ns;
  r.opened_ns = ctx->opened_ns;
  r.verify_sent_ns = ctx->verify_sent_ns;
  r.verify_start_ns = verify_start_ns;
  r.verify_done_ns = steady_ns();
  if (ctx->notice) // pull and credit: the producer's times came with it
    r.producer_at = ctx->notice->producer_at;
  ctx->promise->deliver(std::move(r));
}

// Verifies a request whose bytes all landed: on a pattern worker (off this
// actor's thread, so other requests' messages are served meanwhile), or
// here for a model-only region. No deadline on the worker's answer: it is a
// thread of this process, linked to this actor, that always answers, and
// the blocks may not return before it has.
void verify(self_ptr self, const ctx_ptr& ctx) {
  auto& st = self->state;
  if (auto bad = size_mismatch(st, *ctx))
    return finish_verified(self, ctx, std::move(bad), 0, 0, 0);
  auto job = std::make_shared<verify_job>(verify_job_of(st, *ctx));
  if (st.workers.empty()) {
    ctx->verify_sent_ns = steady_ns();
    auto t0 = clock_type::now();
    caf::error bad;
    try {
      bad = verdict(st, *ctx, *job,
                    pattern_detail::check_value(*st.pattern, *st.cfg.region,
                                                job->offsets, job->blocks,
                                                job->by_hash));
    } catch (const std::exception& e) {
      bad = make_error(ec::cuda_error,
                       fmt::format("consumer '{}': verifying request {}: {}",
                                   st.cfg.name, ctx->request_id, e.what()));
    }
    auto ns = duration_cast<nanoseconds>(clock_type::now() - t0).count();
    return finish_verified(self, ctx, std::move(bad), ns,
                           st.pattern->last_gpu_ns(), ctx->verify_sent_ns);
  }
  ctx->verifying = true;
  ctx->verify_sent_ns = steady_ns();
  auto& b = job->blocks;
  auto worker = st.workers.begin_job();
  self->request(st.workers.worker(worker), caf::infinite, job->offsets, b.seed,
                b.request_id, b.blocks_per_layer, b.block_bytes, b.sampled,
                job->by_hash)
      .then(
          [self, ctx, job, worker](std::uint64_t value, std::int64_t ns,
                                   std::int64_t gpu_ns, std::int64_t start_ns) {
            self->state.workers.job_done(worker);
            finish_verified(self, ctx, verdict(self->state, *ctx, *job, value),
                            ns, gpu_ns, start_ns);
          },
          [self, ctx, worker](caf::error& err) {
            self->state.workers.job_done(worker);
            finish_verified(self, ctx, std::move(err), 0, 0, 0);
          });
}

// Runs whenever a part lands or fails, the notice comes in, or the request
// fails; finishes the request once no transfer can touch its blocks and,
// unless it failed, the notice is there.
void maybe_complete(self_ptr self, const ctx_ptr& ctx) {
  if (ctx->pending > 0)
    return;
  if (ctx->failure) {
    release_blocks(self, *ctx);
    finish_failed(self, ctx);
    return;
  }
  if (!ctx->promise || !ctx->notice || ctx->verifying)
    return;
  forget(self->state, *ctx);
  if (still_decoding(self->state, *ctx))
    self->state.decoding.emplace(ctx->request_id, ctx); // until `decoded`
  verify(self, ctx);
}

// Our node reports the request landed: its bytes and data window.
void on_landed(self_ptr self, const ctx_ptr& ctx,
               const proto::node_report& rep) {
  ctx->bytes += rep.bytes;
  ctx->first_known_ns = std::min(ctx->first_known_ns, rep.data_start_ns);
  ctx->landed_ns = std::max(ctx->landed_ns, rep.data_end_ns);
  ctx->gpu_copy_ns += rep.gpu_copy_ns;
  ctx->gpu_queued_ns += rep.gpu_queued_ns;
  --ctx->pending;
  maybe_complete(self, ctx);
}

void on_part_failed(self_ptr self, const ctx_ptr& ctx, caf::error& err) {
  if (!ctx->failure)
    ctx->failure = std::move(err);
  --ctx->pending;
  maybe_complete(self, ctx);
}

// How long our node may take to report a request: its recv orders are
// posted at once (at allocate, or when the request is delegated), each with
// timeout_ms, as the consumer's own were.
std::uint64_t node_reply_ms(const consumer_state& st) {
  return std::uint64_t{st.cfg.timeout_ms} + 1000;
}

// Only a timed-out transfer can be quarantined (the transfer actor's own
// deadline, or ours if it was too slow to report it); other failures
// (a peer gone, a plugin error) free the blocks at once, as before.
bool may_be_quarantined(const caf::error& err) {
  return is(err, ec::timeout) ||
         (err.category() == caf::atom("system") &&
          err.code() == static_cast<std::uint8_t>(caf::sec::request_timeout));
}

// A part timed out: its blocks go back only once the transfer actor says no
// CUDA IPC copy of it can still write them (at once unless quarantined).
void settle_part(self_ptr self, const ctx_ptr& ctx, const std::string& sender,
                 std::uint64_t transfer_id) {
  ++ctx->unsettled;
  auto settled = [self, ctx] {
    if (--ctx->unsettled == 0 && ctx->quarantined)
      release_blocks(self, *ctx);
  };
  self->request(self->state.cfg.transfer, caf::infinite,
                proto::settle_atom::value, sender, transfer_id)
      .then([settled](caf::ok_atom) { settled(); },
            [self, ctx, settled](caf::error& err) {
              spdlog::warn("consumer {}: settling request {}: {}",
                           self->state.cfg.name, ctx->request_id, render(err));
              settled();
            });
}

// The node's and transfer actor's errors name the request and the peer;
// CAF's own (our request's timeout: the node never answered) name nothing,
// so the request and what it waited for are added.
caf::error name_node_error(const consumer_state& st, const request_ctx& ctx,
                           const std::string& sender, caf::error& err) {
  if (err.category() != caf::atom("system"))
    return std::move(err);
  return make_error(may_be_quarantined(err) ? ec::timeout : ec::peer_down,
                    fmt::format("consumer '{}': request {} from '{}' was not "
                                "reported by this worker's node within {} ms: "
                                "{}",
                                st.cfg.name, ctx.request_id, sender,
                                node_reply_ms(st), render(err)));
}

// Asks our node to bring request `ctx` from `sender`'s node into its ids:
// receive its push of `parts` parts (one, or every layer), or pull what it
// advertised. A failure that may have been a timed-out CUDA IPC copy
// settles each part's transfer before the blocks go back.
void expect_request(self_ptr self, const ctx_ptr& ctx,
                    const std::string& sender, std::uint32_t parts, bool pull) {
  auto& st = self->state;
  ++ctx->pending;
  proto::node_request r{ctx->request_id, sender, ctx->blocks, {}, parts > 1};
  auto on_error = [self, ctx, sender, parts](caf::error& err) {
    if (err == caf::sec::request_timeout) // our node never answered: drop it
      self->send(self->state.cfg.node, proto::node_fail_atom::value, sender,
                 ctx->request_id, err);
    // The node numbers parts 0 (the whole request) or 1..layers.
    std::uint32_t first = parts > 1 ? 1 : 0, last = parts > 1 ? parts : 0;
    if (may_be_quarantined(err))
      for (auto part = first; part <= last; ++part)
        settle_part(self, ctx, sender, transfer_id_of(ctx->request_id, part));
    auto named = name_node_error(self->state, *ctx, sender, err);
    on_part_failed(self, ctx, named);
  };
  auto on_report = [self, ctx](const proto::node_report& rep) {
    on_landed(self, ctx, rep);
  };
  auto limit = milliseconds(node_reply_ms(st));
  if (pull && pulls_via_transfer(st.cfg.self)) // the node is off its path
    self->request(st.cfg.transfer, limit, proto::node_pull_atom::value,
                  std::move(r))
        .then(on_report, on_error);
  else if (pull)
    self->request(st.cfg.node, limit, proto::node_pull_atom::value,
                  std::move(r))
        .then(on_report, on_error);
  else
    self->request(st.cfg.node, limit, proto::node_receive_atom::value,
                  std::move(r))
        .then(on_report, on_error);
}

bool in_flight_or_waiting(const consumer_state& st, std::uint64_t id) {
  return st.requests.count(id) != 0 ||
         std::any_of(st.queue.begin(), st.queue.end(),
                     [id](const waiter& w) { return w.request_id == id; });
}

void arm_timer(self_ptr self);

// The producer's send, our node's report (node_reply_ms) and the
// producer's `arrived` each take at most timeout_ms: a request open longer
// than this waits for a message that will not come.
std::uint64_t request_deadline_ms(const consumer_state& st) {
  return 3 * std::uint64_t{st.cfg.timeout_ms} + 1000;
}

// An open request, in `requests` until it is done; it fails at the latest
// at request_deadline_ms from now.
void track(self_ptr self, const ctx_ptr& ctx) {
  auto& st = self->state;
  ctx->deadline = self->clock().now() + milliseconds(request_deadline_ms(st));
  st.requests.emplace(ctx->request_id, ctx);
  auto& failed = st.failed_unanswered; // an earlier request's, now stale
  failed.erase(std::remove_if(failed.begin(), failed.end(),
                              [&ctx](const auto& f) {
                                return f.first == ctx->request_id;
                              }),
               failed.end());
  arm_timer(self);
}

// Takes `w`'s blocks from the pool (they are free) and opens its request.
ctx_ptr open_request(self_ptr self, const waiter& w) {
  auto& st = self->state;
  auto ctx = std::make_shared<request_ctx>();
  ctx->request_id = w.request_id;
  ctx->producer = w.producer;
  ctx->from = w.from;
  ctx->requester = w.requester;
  ctx->opened_ns = w.arrived_ns;
  st.pool->allocate(w.blocks, ctx->blocks);
  track(self, ctx);
  return ctx;
}

// Why `w` fails without waiting: a duplicate id, more blocks than the
// whole pool, or a full queue. None when it may run or wait.
caf::error refuse_at_once(const consumer_state& st, const waiter& w) {
  if (in_flight_or_waiting(st, w.request_id))
    return make_error(ec::duplicate,
                      fmt::format("consumer '{}': request {} is already "
                                  "in flight",
                                  st.cfg.name, w.request_id));
  if (w.blocks > st.pool->block_count())
    return make_error(
        ec::invalid_argument,
        fmt::format("consumer '{}': block pool exhausted: request {} needs {} "
                    "blocks, the pool has {} (raise --pool-blocks)",
                    st.cfg.name, w.request_id, layer_blocks(st, w.blocks),
                    layer_blocks(st, st.pool->block_count())));
  bool runs_now = st.queue.empty() && st.pool->free_blocks() >= w.blocks;
  if (!runs_now && st.queue.size() >= st.cfg.queue_limit)
    return make_error(
        ec::invalid_argument,
        fmt::format("consumer '{}': block pool exhausted: request {} from "
                    "producer '{}' needs {} blocks, {} of {} free, and {} "
                    "requests already wait for blocks (queue limit {})",
                    st.cfg.name, w.request_id, w.producer,
                    layer_blocks(st, w.blocks),
                    layer_blocks(st, st.pool->free_blocks()),
                    layer_blocks(st, st.pool->block_count()), st.queue.size(),
                    st.cfg.queue_limit));
  return {};
}

// While requests are open, the sweep runs at least this often to expire
// them: periodic rather than one message per deadline, since CAF 0.17 keeps
// an actor alive until its delayed messages fire (a stopping worker would
// wait out every request's deadline).
constexpr auto request_sweep_period = seconds(1);

// Arms the sweep for the queue's first wait or, while requests are open,
// the next periodic check, whichever comes first. A message armed before
// for a later time is stale when it fires (on_sweep ignores it).
void arm_timer(self_ptr self) {
  auto& st = self->state;
  auto now = self->clock().now();
  std::optional<caf::actor_clock::time_point> next;
  if (!st.queue.empty())
    next = st.queue.front().deadline;
  if (!st.requests.empty())
    next = std::min(next.value_or(now + request_sweep_period),
                    now + request_sweep_period);
  if (!next || (st.timer_armed && st.timer_at <= *next))
    return;
  st.timer_armed = true;
  st.timer_at = *next;
  self->delayed_send(self, std::max(caf::timespan{0}, *next - now),
                     proto::sweep_atom::value);
}

// Runs `w` now if the pool has its blocks and nobody waits before it, else
// queues it (bounded); fails it when it can never run or the queue is full.
void admit(self_ptr self, waiter w) {
  auto& st = self->state;
  if (auto err = refuse_at_once(st, w)) {
    ++st.stats.wait_failed;
    spdlog::warn("consumer {}: {}", st.cfg.name, render(err));
    return w.fail(std::move(err));
  }
  if (st.queue.empty() && st.pool->free_blocks() >= w.blocks) {
    auto ctx = open_request(self, w);
    return w.start(ctx);
  }
  w.deadline = self->clock().now() + milliseconds(st.cfg.queue_wait_ms);
  ++st.stats.waited;
  st.queue.push_back(std::move(w));
  arm_timer(self);
}

// Starts waiting requests, oldest first, while their blocks are free.
void serve_queue(self_ptr self) {
  auto& st = self->state;
  while (!st.queue.empty() &&
         st.queue.front().blocks <= st.pool->free_blocks()) {
    auto w = std::move(st.queue.front());
    st.queue.pop_front();
    w.start(open_request(self, w));
  }
}

// Fails (and forgets) the waiting requests that `pred` selects, with the
// error `why(w)` gives.
template<class Pred, class Why>
void drop_waiting(self_ptr self, Pred pred, Why why) {
  auto& st = self->state;
  std::vector<waiter> hit;
  for (auto i = st.queue.begin(); i != st.queue.end();) {
    if (pred(*i)) {
      hit.push_back(std::move(*i));
      i = st.queue.erase(i);
    } else {
      ++i;
    }
  }
  for (auto& w : hit) {
    ++st.stats.wait_failed;
    auto err = why(w);
    spdlog::warn("consumer {}: {}", st.cfg.name, render(err));
    w.fail(std::move(err));
  }
  serve_queue(self); // a dropped head may have held smaller ones back
}

// Requests whose wait for blocks ran out fail, naming the shortage.
void expire_waiters(self_ptr self, caf::actor_clock::time_point now) {
  auto& st = self->state;
  drop_waiting(
      self, [now](const waiter& w) { return w.deadline <= now; },
      [&st](const waiter& w) {
        return make_error(
            ec::timeout,
            fmt::format("consumer '{}': request {} from producer '{}' waited "
                        "{} ms for {} free blocks (queue_wait_ms); {} of {} "
                        "free, the rest held by {} requests in flight and "
                        "lent to producers",
                        st.cfg.name, w.request_id, w.producer,
                        st.cfg.queue_wait_ms, layer_blocks(st, w.blocks),
                        layer_blocks(st, st.pool->free_blocks()),
                        layer_blocks(st, st.pool->block_count()),
                        st.requests.size()));
      });
}

// What an open request still waits for, for its deadline's error.
std::string waiting_for(const request_ctx& ctx) {
  std::string what;
  if (ctx.pending > 0)
    what = fmt::format("{} transfer reply(s) for its parts", ctx.pending);
  if (!ctx.notice)
    what += fmt::format("{}the `arrived` notice of producer '{}'",
                        what.empty() ? "" : " and ", ctx.producer);
  return what.empty() ? std::string{"nothing"} : what;
}

// Last resort, whatever message went missing: a request still open at its
// deadline fails naming what it waited for, and its id is free at once.
// Its blocks return once no transfer reply is outstanding (a receive still
// ordered may write them); every such reply has its own timeout.
void expire_requests(self_ptr self, caf::actor_clock::time_point now) {
  auto& st = self->state;
  std::vector<ctx_ptr> late;
  for (auto& [id, ctx] : st.requests)
    if (ctx->deadline <= now)
      late.push_back(ctx);
  for (auto& ctx : late) {
    auto err = make_error(
        ec::timeout,
        fmt::format("consumer '{}': request {} of producer '{}' was not done "
                    "after {} ms (3 x timeout_ms + 1 s); it still waited for "
                    "{}",
                    st.cfg.name, ctx->request_id, ctx->producer,
                    request_deadline_ms(st), waiting_for(*ctx)));
    spdlog::warn("consumer {}: {}", st.cfg.name, render(err));
    if (!ctx->failure)
      ctx->failure = std::move(err);
    if (ctx->pending == 0)
      release_blocks(self, *ctx);
    finish_failed(self, ctx);
  }
}

// The sweep: waits for blocks and requests past their deadlines fail.
void on_sweep(self_ptr self) {
  auto& st = self->state;
  auto now = self->clock().now();
  if (st.timer_armed && now < st.timer_at)
    return; // stale: armed for a later time before an earlier one
  st.timer_armed = false;
  expire_waiters(self, now);
  expire_requests(self, now);
  arm_timer(self);
}

// Monitors producer actor `who` (once per actor): its death fails its
// requests at once.
void watch_producer(self_ptr self, const caf::actor& who,
                    const std::string& producer) {
  if (who && self->state.producers.emplace(who.address(), producer).second)
    self->monitor(who);
}

// Monitors `who`, who waits for the answer of a request here (once per
// actor): its death cancels its requests (cancel_requests). Returns its
// address; none for an empty handle.
caf::actor_addr watch_requester(self_ptr self, const caf::actor& who) {
  if (who && self->state.requesters.insert(who.address()).second)
    self->monitor(who);
  return who ? who.address() : caf::actor_addr{};
}

// A waiter for a request of producer actor `from` (named `producer`), both
// it and `requester` (the router behind the producer) monitored.
waiter waiter_for(self_ptr self, std::uint64_t request_id, std::uint64_t blocks,
                  const std::string& producer, const caf::actor& from,
                  const caf::actor& requester) {
  waiter w;
  w.request_id = request_id;
  w.blocks = blocks;
  w.producer = producer;
  w.from = from ? from.address() : caf::actor_addr{};
  w.requester = watch_requester(self, requester);
  w.arrived_ns = steady_ns();
  watch_producer(self, from, producer);
  return w;
}

// Answers `rp` with the error a waiter fails with.
template<class T>
std::function<void(caf::error)>
fail_through(caf::typed_response_promise<T> rp) {
  return [rp](caf::error err) mutable { rp.deliver(std::move(err)); };
}

caf::error check_geometry(const consumer_state& st, const std::string& producer,
                          std::uint32_t layers,
                          std::uint64_t layer_block_bytes) {
  auto bb = st.cfg.geometry.layer_block_bytes();
  if (layer_block_bytes == bb && layers == st.cfg.geometry.layers)
    return {};
  return make_error(
      ec::mismatch,
      fmt::format("consumer '{}': producer '{}' uses {} layers of {}-byte "
                  "blocks, this worker {} layers of {}-byte blocks (check "
                  "the geometry flags)",
                  st.cfg.name, producer, layers, layer_block_bytes,
                  st.cfg.geometry.layers, bb));
}

caf::result<proto::grant> on_allocate(self_ptr self,
                                      proto::allocate_request& a) {
  auto& st = self->state;
  if (auto err = check_geometry(st, a.producer, a.layers, a.layer_block_bytes))
    return err;
  if (a.parts == 0 || a.parts > max_parts)
    return make_error(ec::invalid_argument, fmt::format("request {}: {} parts",
                                                        a.request_id, a.parts));
  auto w = waiter_for(self, a.request_id, a.blocks_per_layer, a.producer,
                      caf::actor_cast<caf::actor>(self->current_sender()),
                      a.requester); // ids: each a block of every layer
  auto rp = self->make_response_promise<proto::grant>();
  w.fail = fail_through(rp);
  w.start = [self, rp, producer = a.producer,
             parts = a.parts](const ctx_ptr& ctx) mutable {
    ++self->state.stats.negotiated;
    expect_request(self, ctx, producer, parts, false);
    proto::grant g;
    g.request_id = ctx->request_id;
    g.receiver = self->state.cfg.self;
    g.block_offsets = ctx->blocks;
    rp.deliver(std::move(g));
  };
  admit(self, std::move(w));
  return rp;
}

caf::result<proto::ready_report> on_arrived(self_ptr self,
                                            proto::arrival_notice& n) {
  auto& st = self->state;
  auto i = st.requests.find(n.request_id);
  auto failed =
      std::find_if(st.failed_unanswered.begin(), st.failed_unanswered.end(),
                   [&n](const auto& f) { return f.first == n.request_id; });
  if (i == st.requests.end() && failed != st.failed_unanswered.end()) {
    auto err = std::move(failed->second);
    st.failed_unanswered.erase(failed);
    return err;
  }
  if (i == st.requests.end())
    return make_error(ec::not_found,
                      fmt::format("consumer '{}': arrived for request {}, "
                                  "which is not in flight here (never "
                                  "allocated, or failed already: see its log)",
                                  st.cfg.name, n.request_id));
  auto ctx = i->second;
  ctx->notice = std::move(n);
  ctx->promise = self->make_response_promise<proto::ready_report>();
  auto promise = *ctx->promise;
  maybe_complete(self, ctx);
  return promise;
}

caf::result<proto::ready_report> on_advertise(self_ptr self,
                                              proto::arrival_notice& n) {
  auto& st = self->state;
  // Delegated by the producer, which the notice names (the sender is the
  // router); an advert the producer sent itself names none.
  auto producer = n.producer
                      ? n.producer
                      : caf::actor_cast<caf::actor>(self->current_sender());
  auto bytes_per_id =
      st.cfg.geometry.layers * st.cfg.geometry.layer_block_bytes();
  auto count = n.block_offsets.size(); // the producer's ids
  if (count == 0 || n.bytes != count * bytes_per_id) {
    auto err = make_error(ec::mismatch,
                          fmt::format("consumer '{}': advert of request {} "
                                      "({} blocks, {} bytes) does not fit "
                                      "blocks of {} bytes ({} layers)",
                                      st.cfg.name, n.request_id, count, n.bytes,
                                      bytes_per_id, st.cfg.geometry.layers));
    refuse_pull(self, producer, n.request_id, err);
    return err;
  }
  auto w = waiter_for(self, n.request_id, count, n.source.name, producer,
                      n.requester);
  auto rp = self->make_response_promise<proto::ready_report>();
  w.fail = [self, rp, producer, id = n.request_id](caf::error err) mutable {
    refuse_pull(self, producer, id, err);
    rp.deliver(std::move(err));
  };
  w.start = [self, rp, producer, notice = std::move(n)](const ctx_ptr& ctx) {
    // The producer's node is named as its transfer actor (the worker).
    expect_request(self, ctx, notice.source.name, 1, true);
    ctx->advertiser = producer;
    ctx->producer_compute_ns = notice.compute_ns;
    ctx->producer_fill_gpu_ns = notice.fill_gpu_ns;
    ctx->notice = notice;
    ctx->promise = rp;
  };
  admit(self, std::move(w));
  return rp;
}

// ---- credit

// Ends a loan: the blocks the producer held or that wait here go back to the
// pool now; those inside requests follow when their requests finish.
void end_loan(self_ptr self, std::uint32_t id, const std::string& why) {
  auto& st = self->state;
  auto& l = loan_by_id(st, id);
  if (!l.alive)
    return;
  l.alive = false;
  std::vector<std::uint64_t> back;
  for (std::uint64_t b = 0; b < st.loan_of_block.size(); ++b)
    if (st.loan_of_block[b] == id && !st.block_in_request[b]) {
      st.loan_of_block[b] = 0;
      back.push_back(b);
    }
  l.lent -= back.size();
  l.held = 0;
  l.returning.clear();
  spdlog::info("consumer {}: loan to producer '{}' ended ({}): {} blocks back "
               "in the pool, {} still in requests",
               st.cfg.name, l.producer, why, back.size(), l.lent);
  to_pool(self, back);
}

std::uint32_t find_loan(const consumer_state& st, const std::string& producer) {
  for (std::size_t i = 0; i < st.loans.size(); ++i)
    if (st.loans[i].alive && st.loans[i].producer == producer)
      return static_cast<std::uint32_t>(i + 1);
  return 0;
}

// The live loan of `producer` held by actor `who`; a loan under that name
// held by another actor (a restarted producer) ends first.
std::uint32_t loan_for(self_ptr self, const std::string& producer,
                       const caf::actor& who) {
  auto& st = self->state;
  if (auto id = find_loan(st, producer); id != 0) {
    if (loan_by_id(st, id).producer_actor == who)
      return id;
    end_loan(self, id, "a new actor took over the name");
  }
  loan l;
  l.producer = producer;
  l.producer_actor = who;
  st.loans.push_back(std::move(l));
  self->monitor(who);
  return static_cast<std::uint32_t>(st.loans.size());
}

caf::result<proto::grant> on_reserve(self_ptr self, proto::reserve_request& r) {
  auto& st = self->state;
  if (auto err = check_geometry(st, r.producer, r.layers, r.layer_block_bytes))
    return err;
  auto who = caf::actor_cast<caf::actor>(self->current_sender());
  if (!who || r.producer.empty())
    return make_error(ec::invalid_argument,
                      fmt::format("consumer '{}': a reserve needs a named "
                                  "producer actor as its sender",
                                  st.cfg.name));
  auto id = loan_for(self, r.producer, who);
  auto& l = loan_by_id(st, id);
  auto cap = st.pool->block_count() * st.cfg.lend_percent / 100;
  auto room = cap > l.lent ? cap - l.lent : 0;
  // Requests waiting for blocks come first: lend nothing while any waits.
  auto spare = st.queue.empty() ? st.pool->free_blocks() : 0;
  auto lend = std::min({r.blocks, room, spare});
  proto::grant g;
  g.receiver = st.cfg.self;
  st.pool->allocate(lend, g.block_offsets);
  for (auto off : g.block_offsets)
    st.loan_of_block[off] = id;
  l.lent += lend;
  l.held += lend;
  l.returning.reserve(l.lent);
  return g;
}

// Why block `b` may not carry a delegated request of loan `id`; empty if it
// may. Marks it in use when it may.
std::string claim_lent_block(consumer_state& st, std::uint32_t id,
                             std::uint64_t b) {
  if (b >= st.loan_of_block.size() || st.loan_of_block[b] != id)
    return "is not a block lent to it";
  if (st.block_in_request[b])
    return "is already in use by another of its requests";
  st.block_in_request[b] = true;
  return {};
}

caf::expected<ctx_ptr> open_credit_request(self_ptr self,
                                           proto::credit_notice& n) {
  auto& st = self->state;
  auto layers = st.cfg.geometry.layers;
  auto bytes_per_id = layers * st.cfg.geometry.layer_block_bytes();
  auto count = n.block_offsets.size(); // ids
  if (count == 0 || (n.parts != 1 && n.parts != layers) ||
      n.bytes != count * bytes_per_id)
    return make_error(ec::mismatch,
                      fmt::format("consumer '{}': request {} from producer "
                                  "'{}' ({} blocks, {} parts, {} bytes) does "
                                  "not fit blocks of {} bytes in {} layers",
                                  st.cfg.name, n.request_id, n.producer, count,
                                  n.parts, n.bytes, bytes_per_id, layers));
  if (in_flight_or_waiting(st, n.request_id))
    return make_error(ec::duplicate,
                      fmt::format("consumer '{}': request {} is already in "
                                  "flight",
                                  st.cfg.name, n.request_id));
  auto id = find_loan(st, n.producer);
  if (id == 0)
    return make_error(ec::invalid_extent,
                      fmt::format("consumer '{}': request {} from producer "
                                  "'{}' uses credit, but nothing is lent to "
                                  "that producer",
                                  st.cfg.name, n.request_id, n.producer));
  for (std::size_t k = 0; k < count; ++k) {
    auto why = claim_lent_block(st, id, n.block_offsets[k]);
    if (why.empty())
      continue;
    for (std::size_t j = 0; j < k; ++j) // undo the claims made so far
      st.block_in_request[n.block_offsets[j]] = false;
    return make_error(ec::invalid_extent,
                      fmt::format("consumer '{}': request {} from producer "
                                  "'{}' names block {}, which {}",
                                  st.cfg.name, n.request_id, n.producer,
                                  n.block_offsets[k], why));
  }
  auto& l = loan_by_id(st, id);
  l.held = l.held > count ? l.held - count : 0;
  auto ctx = std::make_shared<request_ctx>();
  ctx->request_id = n.request_id;
  ctx->blocks = std::move(n.block_offsets);
  ctx->loan_id = id;
  ctx->producer = n.producer;
  ctx->producer_compute_ns = n.compute_ns;
  ctx->producer_fill_gpu_ns = n.fill_gpu_ns;
  ctx->opened_ns = steady_ns();
  track(self, ctx);
  return ctx;
}

caf::result<proto::ready_report> on_incoming(self_ptr self,
                                             proto::credit_notice& n) {
  auto made = open_credit_request(self, n);
  if (!made) {
    // The producer spent these blocks of its credit on a request we refuse:
    // they stay lent to it until the loan ends (its bytes may still land
    // in them, so they cannot go back to its credit).
    ++self->state.stats.refused;
    spdlog::warn("consumer {}: refused a request on credit: {}",
                 self->state.cfg.name, render(made.error()));
    return made.error();
  }
  ++self->state.stats.delegated;
  auto ctx = *made;
  // Delegated: the sender is the router, whose request this answers. (A
  // producer that parked the request asks itself: its loan watches it.)
  auto who = caf::actor_cast<caf::actor>(self->current_sender());
  if (ctx->loan_id == 0 ||
      loan_by_id(self->state, ctx->loan_id).producer_actor != who)
    ctx->requester = watch_requester(self, who);
  expect_request(self, ctx, n.producer, n.parts, false);
  proto::arrival_notice expected;
  expected.request_id = n.request_id;
  expected.bytes = n.bytes;
  expected.xxhash = n.xxhash;
  expected.has_xxhash = n.has_xxhash;
  expected.pattern_seed = n.pattern_seed;
  expected.sampled_verify = n.sampled_verify;
  expected.producer_at = n.producer_at;
  ctx->notice = std::move(expected);
  ctx->promise = self->make_response_promise<proto::ready_report>();
  return *ctx->promise;
}

// The producer actor that sent request `ctx` here: its credit's borrower,
// or its advertiser (pull); none for a negotiated push.
caf::actor_addr sender_of(consumer_state& st, const request_ctx& ctx) {
  const auto& a = ctx.loan_id != 0 ? loan_by_id(st, ctx.loan_id).producer_actor
                                   : ctx.advertiser;
  return a ? a.address() : caf::actor_addr{};
}

// The producer's send (credit) or offer (pull) failed after it delegated:
// answer the router now; the blocks come back when the transfer actor has
// resolved the receives. A pull still waiting for blocks fails at once.
// Only the actor that sent the request may abort it: the name in the
// message (`producer`) is only for the log.
void on_abort(self_ptr self, std::uint64_t request_id,
              const std::string& producer, caf::error& err) {
  auto& st = self->state;
  const auto from = caf::actor_cast<caf::actor_addr>(self->current_sender());
  drop_waiting(
      self,
      [&](const waiter& w) {
        return w.request_id == request_id && from && w.from == from;
      },
      [&](const waiter&) { return err; });
  auto i = st.requests.find(request_id);
  if (i == st.requests.end())
    return; // finished or failed already
  auto ctx = i->second;
  const auto sender = sender_of(st, *ctx);
  if (!sender || sender != from) {
    spdlog::warn("consumer {}: ignoring an abort of request {} from '{}', "
                 "which did not send it",
                 st.cfg.name, request_id, producer);
    return;
  }
  ctx->advertiser = {}; // it knows: no abort back
  if (!ctx->failure)
    ctx->failure = err;
  if (ctx->promise && !ctx->answered) {
    ctx->answered = true;
    ctx->promise->deliver(std::move(err));
  }
  maybe_complete(self, ctx);
}

// A producer is gone: what waits for its blocks fails, its requests in
// flight fail at once naming it (their blocks return when the transfer
// actor let go of them: it drops the peer too). `from` selects by actor (a
// down message), else by name (the directory's left). Only a down message
// ends its loan: `left` may mean no more than a lost lease, and a producer
// still alive would go on writing into the blocks it was lent.
void on_producer_gone(self_ptr self, const std::string& name,
                      const caf::actor_addr& from, const std::string& why) {
  auto& st = self->state;
  auto hit = [&](const std::string& producer, const caf::actor_addr& a) {
    return from ? a == from : producer == name;
  };
  auto error_for = [&](std::uint64_t request_id) {
    return make_error(ec::peer_down,
                      fmt::format("consumer '{}': producer '{}' of request {} "
                                  "is gone: {}",
                                  st.cfg.name, name, request_id, why));
  };
  drop_waiting(
      self, [&](const waiter& w) { return hit(w.producer, w.from); },
      [&](const waiter& w) { return error_for(w.request_id); });
  for (std::size_t i = 0; from && i < st.loans.size(); ++i) {
    auto& l = st.loans[i];
    if (l.alive && l.producer_actor.address() == from)
      end_loan(self, static_cast<std::uint32_t>(i + 1), why);
  }
  std::vector<ctx_ptr> lost;
  for (auto& [id, ctx] : st.requests) {
    auto by_loan = ctx->loan_id != 0 &&
                   hit(loan_by_id(st, ctx->loan_id).producer,
                       loan_by_id(st, ctx->loan_id).producer_actor.address());
    if (by_loan || hit(ctx->producer, ctx->from))
      lost.push_back(ctx);
  }
  if (!lost.empty())
    spdlog::warn("consumer {}: producer '{}' is gone ({}): failing its {} "
                 "request(s) in flight",
                 st.cfg.name, name, why, lost.size());
  for (auto& ctx : lost) {
    ctx->orphaned = true;
    if (!ctx->failure)
      ctx->failure = error_for(ctx->request_id);
    if (ctx->promise && !ctx->answered) {
      ctx->answered = true;
      ctx->promise->deliver(ctx->failure);
    }
    maybe_complete(self, ctx);
  }
}

void on_producer_down(self_ptr self, const caf::down_msg& dm) {
  auto& st = self->state;
  std::string name;
  if (auto i = st.producers.find(dm.source); i != st.producers.end()) {
    name = i->second;
    st.producers.erase(i);
  }
  for (auto& l : st.loans)
    if (l.alive && l.producer_actor.address() == dm.source)
      name = l.producer;
  if (!name.empty())
    on_producer_gone(self, name, dm.source, "it is down: " + render(dm.reason));
}

// The requester (router) of some requests is gone: nobody takes their
// answers, so they are cancelled now rather than held to their deadline (a
// producer stalled past its router's end may never send `arrived`). Their
// blocks return as soon as no transfer can still write them: at once when
// none is outstanding.
void cancel_requests(self_ptr self, const caf::down_msg& dm) {
  auto& st = self->state;
  if (st.requesters.erase(dm.source) == 0)
    return;
  auto who = caf::to_string(dm.source);
  auto error_for = [&](std::uint64_t request_id) {
    return make_error(ec::peer_down,
                      fmt::format("consumer '{}': request {} cancelled: its "
                                  "requester {} is gone ({})",
                                  st.cfg.name, request_id, who,
                                  render(dm.reason)));
  };
  auto waiting = st.queue.size();
  drop_waiting(
      self, [&](const waiter& w) { return w.requester == dm.source; },
      [&](const waiter& w) { return error_for(w.request_id); });
  waiting -= st.queue.size();
  std::vector<ctx_ptr> open;
  for (auto& [id, ctx] : st.requests)
    if (ctx->requester == dm.source && !ctx->failure)
      open.push_back(ctx);
  if (open.empty() && waiting == 0)
    return; // the usual end of a router: every request answered
  spdlog::warn("consumer {}: requester {} is gone ({}): cancelled its {} "
               "open request(s) and {} waiting for blocks",
               st.cfg.name, who, render(dm.reason), open.size(), waiting);
  for (auto& ctx : open) {
    ctx->orphaned = true; // nobody to tell, a late `arrived` included
    ctx->failure = error_for(ctx->request_id);
    if (ctx->promise && !ctx->answered) {
      ctx->answered = true;
      ctx->promise->deliver(ctx->failure);
    }
    maybe_complete(self, ctx);
  }
}

proto::consumer_stats stats_now(const consumer_state& st) {
  auto stats = st.stats;
  stats.lent_blocks = 0;
  for (auto& l : st.loans)
    stats.lent_blocks += layer_blocks(st, l.alive ? l.lent : 0);
  stats.pool_blocks = layer_blocks(st, st.pool->block_count());
  stats.free_blocks = layer_blocks(st, st.pool->free_blocks());
  stats.in_flight = st.requests.size();
  stats.waiting = st.queue.size();
  return stats;
}

consumer_actor::behavior_type consumer_impl(self_ptr self, app_config cfg) {
  self->state.layout = pool_layout(cfg.geometry, cfg.region->size());
  auto blocks = self->state.layout.num_blocks();
  // block_bytes 1: the pool's "offsets" are the layout's block ids.
  self->state.pool = std::make_unique<block_pool>(blocks, 1);
  if (cfg.lend_percent > 0) { // the credit's tables: only when it lends
    self->state.loan_of_block.assign(blocks, 0);
    self->state.block_in_request.assign(blocks, false);
  }
  self->state.pattern = std::make_unique<kv_pattern>(cfg.region);
  self->state.workers = pattern_detail::pattern_workers{
      self, cfg.region, cfg.geometry.layer_block_bytes()};
  self->state.cfg = std::move(cfg);
  if (self->state.cfg.node)
    self->link_to(self->state.cfg.node);
  self->set_down_handler([self](caf::down_msg& dm) {
    on_producer_down(self, dm);
    cancel_requests(self, dm);
  });
  return {
      [self](proto::allocate_atom, proto::allocate_request& a) {
        return on_allocate(self, a);
      },
      [self](proto::arrived_atom, proto::arrival_notice& n) {
        return on_arrived(self, n);
      },
      [self](proto::advertise_atom, proto::arrival_notice& n) {
        return on_advertise(self, n);
      },
      [self](proto::reserve_atom, proto::reserve_request& r) {
        return on_reserve(self, r);
      },
      [self](proto::incoming_atom, proto::credit_notice& n) {
        return on_incoming(self, n);
      },
      [self](proto::abort_atom, std::uint64_t request_id,
             const std::string& producer,
             caf::error& err) { on_abort(self, request_id, producer, err); },
      [self](proto::stats_atom) { return stats_now(self->state); },
      [](joined_atom, const worker_info&) {},
      [self](left_atom, const std::string& name, const caf::error& why) {
        on_producer_gone(self, name, {},
                         "it left the directory: " + render(why));
      },
      [self](proto::sweep_atom) { on_sweep(self); },
      [self](proto::decoded_atom, std::uint64_t id) { on_decoded(self, id); },
      [self](proto::node_hello_atom, proto::node_hello& h) {
        return self->delegate(self->state.cfg.node,
                              proto::node_hello_atom::value, std::move(h));
      },
  };
}

} // namespace

consumer_actor spawn_consumer(caf::actor_system& sys, app_config cfg) {
  return sys.spawn(consumer_impl, std::move(cfg));
}

} // namespace kvferry
