// The consumer: a decode worker's app actor.
//
// Push: `allocate` reserves destination blocks and tells the transfer actor
// to expect one transfer per part; the grant goes back to the producer. When
// every part has landed and the producer's `arrived` notice is in, the
// consumer hashes what arrived, compares it with what the producer says it
// sent, returns the blocks (there is no real decode here) and answers ready.
// Pull: `advertise` does the same, but the consumer asks the producer's
// transfer actor to send into the blocks it just allocated.
#include <chrono>
#include <memory>
#include <unordered_map>

#include <caf/all.hpp>
#include <fmt/format.h>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/kv_pattern.hpp"
#include "kvferry/actors/plan.hpp"
#include "kvferry/runtime/error.hpp"

namespace kvferry {
namespace {

using namespace std::chrono;
using clock_type = steady_clock;

struct request_ctx {
  std::uint64_t request_id = 0;
  std::vector<std::uint64_t> blocks;
  std::uint32_t pending = 0;  // replies still expected from transfer actors
  std::uint64_t bytes = 0;
  caf::error failure;
  std::optional<proto::arrival_notice> notice;
  std::optional<caf::typed_response_promise<proto::ready_report>> promise;
  clock_type::time_point start = clock_type::now();
  std::int64_t transfer_ns = 0;
  bool released = false;
};
using ctx_ptr = std::shared_ptr<request_ctx>;

struct consumer_state {
  app_config cfg;
  std::unique_ptr<block_pool> pool;
  std::unique_ptr<kv_pattern> pattern;  // verifies GPU memory on the GPU
  std::unordered_map<std::uint64_t, ctx_ptr> requests;
  static inline const char* name = "kvferry.consumer";
};

using self_ptr = consumer_actor::stateful_pointer<consumer_state>;

void release_blocks(self_ptr self, request_ctx& ctx) {
  if (!ctx.released) {
    ctx.released = true;
    self->state.pool->release(ctx.blocks);
  }
}

// Hash host memory and compare with the producer's XXH3 when it sent one;
// otherwise (GPU memory on either side) regenerate the pattern and compare,
// on the GPU for a cuda region.
caf::error verify(self_ptr self, request_ctx& ctx) {
  auto& st = self->state;
  auto& n = *ctx.notice;
  auto bb = st.cfg.geometry.layer_block_bytes();
  if (ctx.bytes != n.bytes)
    return make_error(ec::mismatch,
                      fmt::format("consumer '{}': request {}: {} bytes "
                                  "arrived, the producer sent {}",
                                  st.cfg.name, ctx.request_id, ctx.bytes,
                                  n.bytes));
  if (n.has_xxhash && st.cfg.region->host_accessible()) {
    auto got = hash_blocks(st.cfg.region->data(), ctx.blocks, bb);
    if (got == n.xxhash)
      return {};
    return make_error(
      ec::mismatch,
      fmt::format("consumer '{}': request {}: {} bytes arrived with xxhash "
                  "{:016x}, the producer sent {} bytes with xxhash {:016x}",
                  st.cfg.name, ctx.request_id, ctx.bytes, got, n.bytes,
                  n.xxhash));
  }
  auto layers = st.cfg.geometry.layers;
  auto bpl = static_cast<std::uint32_t>(ctx.blocks.size() / layers);
  try {
    auto first_bad = st.pattern->check(
      ctx.blocks, {n.pattern_seed, ctx.request_id, 0, bpl, bb});
    if (!first_bad)
      return {};
    return make_error(
      ec::mismatch,
      fmt::format("consumer '{}': request {}: block {} of layer {} (offset "
                  "{} in {} memory) differs from what the producer wrote "
                  "(pattern seed {})",
                  st.cfg.name, ctx.request_id, *first_bad % bpl,
                  *first_bad / bpl, ctx.blocks[*first_bad],
                  st.cfg.region->host_accessible()
                    ? std::string{"host"}
                    : fmt::format("GPU {}", st.cfg.region->gpu()),
                  n.pattern_seed));
  } catch (const std::exception& e) {
    return make_error(ec::cuda_error,
                      fmt::format("consumer '{}': verifying request {}: {}",
                                  st.cfg.name, ctx.request_id, e.what()));
  }
}

// Runs whenever a part lands or the notice comes in; finishes the request
// once both are there.
void maybe_complete(self_ptr self, const ctx_ptr& ctx) {
  if (ctx->pending > 0)
    return;
  // No transfer can touch the blocks now; keep them only until verified.
  if (ctx->failure)
    release_blocks(self, *ctx);
  if (!ctx->promise || !ctx->notice)
    return;
  auto& st = self->state;
  st.requests.erase(ctx->request_id);
  if (ctx->failure) {
    ctx->promise->deliver(ctx->failure);
    return;
  }
  auto t0 = clock_type::now();
  auto bad = verify(self, *ctx);
  auto verify_ns = duration_cast<nanoseconds>(clock_type::now() - t0).count();
  release_blocks(self, *ctx);
  if (bad) {
    ctx->promise->deliver(std::move(bad));
    return;
  }
  proto::ready_report r;
  r.request_id = ctx->request_id;
  r.bytes = ctx->bytes;
  r.verified = true;
  r.transfer_ns = ctx->transfer_ns;
  r.compute_ns = verify_ns;
  ctx->promise->deliver(std::move(r));
}

void on_part_done(self_ptr self, const ctx_ptr& ctx, std::uint64_t bytes,
                  bool counts_bytes) {
  if (counts_bytes)
    ctx->bytes += bytes;
  if (--ctx->pending == 0)
    ctx->transfer_ns =
      duration_cast<nanoseconds>(clock_type::now() - ctx->start).count();
  maybe_complete(self, ctx);
}

void on_part_failed(self_ptr self, const ctx_ptr& ctx, caf::error& err) {
  if (!ctx->failure)
    ctx->failure = std::move(err);
  --ctx->pending;
  maybe_complete(self, ctx);
}

void expect_part(self_ptr self, const ctx_ptr& ctx, const std::string& sender,
                 std::uint32_t part) {
  auto& cfg = self->state.cfg;
  proto::recv_order o;
  o.transfer_id = transfer_id_of(ctx->request_id, part);
  o.peer_name = sender;
  o.timeout_ms = cfg.timeout_ms;
  ++ctx->pending;
  self
    ->request(cfg.transfer, milliseconds(cfg.timeout_ms + 1000),
              proto::recv_atom::value, std::move(o))
    .then([self, ctx](std::uint64_t bytes) { on_part_done(self, ctx, bytes, true); },
          [self, ctx](caf::error& err) { on_part_failed(self, ctx, err); });
}

caf::expected<ctx_ptr> new_request(self_ptr self, std::uint64_t request_id,
                                   std::uint64_t blocks) {
  auto& st = self->state;
  if (st.requests.count(request_id) != 0)
    return make_error(ec::duplicate,
                      fmt::format("consumer '{}': request {} is already "
                                  "in flight",
                                  st.cfg.name, request_id));
  auto ctx = std::make_shared<request_ctx>();
  ctx->request_id = request_id;
  if (!st.pool->allocate(blocks, ctx->blocks))
    return make_error(
      ec::invalid_argument,
      fmt::format("consumer '{}': block pool exhausted: request {} needs {} "
                  "blocks, {} of {} free (raise --pool-blocks)",
                  st.cfg.name, request_id, blocks, st.pool->free_blocks(),
                  st.pool->block_count()));
  st.requests.emplace(request_id, ctx);
  return ctx;
}

caf::result<proto::grant> on_allocate(self_ptr self,
                                      proto::allocate_request& a) {
  auto& st = self->state;
  auto bb = st.cfg.geometry.layer_block_bytes();
  if (a.layer_block_bytes != bb || a.layers != st.cfg.geometry.layers)
    return make_error(
      ec::mismatch,
      fmt::format("consumer '{}': producer '{}' uses {} layers of {}-byte "
                  "blocks, this worker {} layers of {}-byte blocks (check "
                  "the geometry flags)",
                  st.cfg.name, a.producer, a.layers, a.layer_block_bytes,
                  st.cfg.geometry.layers, bb));
  if (a.parts == 0 || a.parts > max_parts)
    return make_error(ec::invalid_argument,
                      fmt::format("request {}: {} parts", a.request_id,
                                  a.parts));
  auto ctx = new_request(self, a.request_id,
                         std::uint64_t{a.blocks_per_layer} * a.layers);
  if (!ctx)
    return ctx.error();
  for (std::uint32_t part = 0; part < a.parts; ++part)
    expect_part(self, *ctx, a.producer, part);
  proto::grant g;
  g.request_id = a.request_id;
  g.receiver = st.cfg.self;
  g.block_offsets = (*ctx)->blocks;
  return g;
}

caf::result<proto::ready_report> on_arrived(self_ptr self,
                                            proto::arrival_notice& n) {
  auto& st = self->state;
  auto i = st.requests.find(n.request_id);
  if (i == st.requests.end())
    return make_error(ec::not_found,
                      fmt::format("consumer '{}': arrived for unknown request "
                                  "{}",
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
  auto bb = st.cfg.geometry.layer_block_bytes();
  std::uint32_t parts = std::max<std::uint32_t>(1, n.layers);
  auto count = n.block_offsets.size();
  if (count == 0 || count % parts != 0 || parts > max_parts ||
      n.bytes != count * bb)
    return make_error(ec::mismatch,
                      fmt::format("consumer '{}': advert of request {} ({} "
                                  "blocks, {} parts, {} bytes) does not fit "
                                  "{}-byte blocks",
                                  st.cfg.name, n.request_id, count, parts,
                                  n.bytes, bb));
  auto made = new_request(self, n.request_id, count);
  if (!made)
    return made.error();
  auto ctx = *made;
  auto per_part = count / parts;
  auto source = caf::actor_cast<transfer_actor>(n.source.transfer);
  for (std::uint32_t part = 0; part < parts; ++part) {
    expect_part(self, ctx, n.source.name, part);
    std::vector<std::uint64_t> src(n.block_offsets.begin() + part * per_part,
                                   n.block_offsets.begin() +
                                     (part + 1) * per_part);
    std::vector<std::uint64_t> dst(ctx->blocks.begin() + part * per_part,
                                   ctx->blocks.begin() + (part + 1) * per_part);
    proto::send_order o;
    o.transfer_id = transfer_id_of(n.request_id, part);
    o.peer = st.cfg.self;
    o.extents = plan_blocks(src, dst, bb);
    o.timeout_ms = st.cfg.timeout_ms;
    ++ctx->pending;
    self
      ->request(source, milliseconds(st.cfg.timeout_ms + 1000),
                proto::send_atom::value, std::move(o))
      .then(
        [self, ctx](std::uint64_t bytes) { on_part_done(self, ctx, bytes, false); },
        [self, ctx](caf::error& err) { on_part_failed(self, ctx, err); });
  }
  ctx->notice = std::move(n);
  ctx->promise = self->make_response_promise<proto::ready_report>();
  return *ctx->promise;
}

consumer_actor::behavior_type consumer_impl(self_ptr self, app_config cfg) {
  auto blocks = cfg.region->size() / cfg.geometry.layer_block_bytes();
  self->state.pool =
    std::make_unique<block_pool>(blocks, cfg.geometry.layer_block_bytes());
  self->state.pattern = std::make_unique<kv_pattern>(cfg.region);
  self->state.cfg = std::move(cfg);
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
  };
}

}  // namespace

consumer_actor spawn_consumer(caf::actor_system& sys, app_config cfg) {
  return sys.spawn(consumer_impl, std::move(cfg));
}

}  // namespace kvferry
