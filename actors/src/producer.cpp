// The producer: a prefill worker's app actor.
//
// For each request it takes blocks from its pool (blocks[l * bpl + b] holds
// block b of layer l), "prefills" them with a deterministic pattern, gets
// destination blocks from the consumer (push) and hands one plan per part to
// its transfer actor — the whole request, or one layer at a time as soon as
// that layer is written (--layerwise). In pull mode it advertises its blocks
// and the consumer's side asks our transfer actor to send. Blocks return to
// the pool once no plugin request can touch them any more.
#include <algorithm>
#include <chrono>
#include <memory>
#include <unordered_map>
#include <unordered_set>

#include <caf/all.hpp>
#include <fmt/format.h>
#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/kv_pattern.hpp"
#include "kvferry/actors/plan.hpp"
#include "kvferry/runtime/error.hpp"

namespace kvferry {

void fill_pattern(std::uint8_t* data, std::uint64_t bytes, std::uint64_t seed,
                  std::uint64_t request_id, std::uint32_t layer,
                  std::uint32_t block) {
  // splitmix64 of the coordinates, then an arithmetic sequence: unique per
  // block, and as cheap as a memset.
  std::uint64_t x = seed ^ (request_id * 0x9E3779B97F4A7C15ull) ^
                    (std::uint64_t{layer} << 32) ^ block;
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  auto words = bytes / 8;
  for (std::uint64_t i = 0; i < words; ++i) {
    std::uint64_t v = x + i * 0xD1B54A32D192ED03ull;
    std::memcpy(data + i * 8, &v, 8);
  }
  for (auto i = words * 8; i < bytes; ++i)
    data[i] = static_cast<std::uint8_t>(x >> (8 * (i % 8)));
}

std::uint64_t hash_blocks(const std::uint8_t* base,
                          const std::vector<std::uint64_t>& offsets,
                          std::uint64_t block_bytes) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  for (auto off : offsets)
    XXH3_64bits_update(&state, base + off, block_bytes);
  return XXH3_64bits_digest(&state);
}

namespace {

using namespace std::chrono;
using clock_type = steady_clock;

// One request in flight at the producer.
struct request_ctx {
  proto::prefill_request req;
  std::string consumer_name;  // known once granted
  std::uint32_t bpl = 0;
  std::uint32_t parts = 1;
  std::vector<std::uint64_t> blocks;
  caf::typed_response_promise<proto::ready_report> promise;
  std::uint64_t hash = 0;
  bool hashed = false;  // only host memory is hashed (on the CPU)
  std::uint64_t bytes = 0;
  std::int64_t compute_ns = 0;
  clock_type::time_point send_start;
  std::int64_t transfer_ns = 0;
  std::uint32_t sends_left = 0;
  bool failed = false;
  bool released = false;
};
using ctx_ptr = std::shared_ptr<request_ctx>;

struct producer_state {
  app_config cfg;
  std::unique_ptr<block_pool> pool;
  std::unique_ptr<kv_pattern> pattern;  // "prefill" on host or GPU memory
  // Requests not yet answered, to fail them at once when their consumer
  // dies (down message) or leaves the directory.
  std::unordered_map<std::uint64_t, ctx_ptr> active;
  std::unordered_set<caf::actor_addr> monitored;
  static inline const char* name = "kvferry.producer";
};

using self_ptr = producer_actor::stateful_pointer<producer_state>;

void answer(self_ptr self, const ctx_ptr& ctx, proto::ready_report r) {
  self->state.active.erase(ctx->req.request_id);
  ctx->promise.deliver(std::move(r));
}

std::int64_t since(clock_type::time_point t0) {
  return duration_cast<nanoseconds>(clock_type::now() - t0).count();
}

void release_blocks(self_ptr self, request_ctx& ctx) {
  if (!ctx.released) {
    ctx.released = true;
    self->state.pool->release(ctx.blocks);
  }
}

void fail_request(self_ptr self, const ctx_ptr& ctx, caf::error err) {
  if (!ctx->failed) {
    ctx->failed = true;
    self->state.active.erase(ctx->req.request_id);
    ctx->promise.deliver(std::move(err));
  }
  if (ctx->sends_left == 0)
    release_blocks(self, *ctx);
}

// Writes the pattern of layers [first, first + count): one kernel on a GPU.
// False (the request failed) when the GPU refused.
bool fill_layers(self_ptr self, const ctx_ptr& ctx, std::uint32_t first,
                 std::uint32_t count) {
  auto& st = self->state;
  auto begin = ctx->blocks.begin() + std::size_t{first} * ctx->bpl;
  std::vector<std::uint64_t> offsets(begin,
                                     begin + std::size_t{count} * ctx->bpl);
  try {
    st.pattern->fill(offsets,
                     {ctx->req.pattern_seed, ctx->req.request_id, first,
                      ctx->bpl, st.cfg.geometry.layer_block_bytes()});
    return true;
  } catch (const std::exception& e) {
    fail_request(self, ctx,
                 make_error(ec::cuda_error,
                            fmt::format("producer '{}': request {}: {}",
                                        st.cfg.name, ctx->req.request_id,
                                        e.what())));
    return false;
  }
}

// XXH3 of the request for the consumer, where the CPU can read the blocks.
void hash_request(self_ptr self, request_ctx& ctx) {
  auto& cfg = self->state.cfg;
  if (!cfg.region->host_accessible())
    return;
  ctx.hash = hash_blocks(cfg.region->data(), ctx.blocks,
                         cfg.geometry.layer_block_bytes());
  ctx.hashed = true;
}

// Block offsets of one part (one layer when layerwise, else all).
std::vector<std::uint64_t> part_of(const request_ctx& ctx,
                                   const std::vector<std::uint64_t>& all,
                                   std::uint32_t part) {
  if (ctx.parts == 1)
    return all;
  auto first = all.begin() + std::size_t{part} * ctx.bpl;
  return {first, first + ctx.bpl};
}

void notify_arrived(self_ptr self, const ctx_ptr& ctx) {
  auto& cfg = self->state.cfg;
  proto::arrival_notice n;
  n.request_id = ctx->req.request_id;
  n.bytes = ctx->bytes;
  n.xxhash = ctx->hash;
  n.has_xxhash = ctx->hashed;
  n.pattern_seed = ctx->req.pattern_seed;
  self
    ->request(caf::actor_cast<consumer_actor>(ctx->req.consumer),
              milliseconds(cfg.timeout_ms), proto::arrived_atom::value,
              std::move(n))
    .then(
      [self, ctx](proto::ready_report& r) {
        if (ctx->failed)
          return;
        // Data time: the longer of the sender's view (first send ordered to
        // last send done) and the receiver's (grant to last byte landed).
        r.transfer_ns = std::max(r.transfer_ns, ctx->transfer_ns);
        r.compute_ns += ctx->compute_ns;
        answer(self, ctx, std::move(r));
      },
      [self, ctx](caf::error& err) { fail_request(self, ctx, std::move(err)); });
}

void send_part(self_ptr self, const ctx_ptr& ctx, const proto::grant& g,
               std::uint32_t part) {
  auto& cfg = self->state.cfg;
  proto::send_order o;
  o.transfer_id = transfer_id_of(ctx->req.request_id, part);
  o.peer = g.receiver;
  o.timeout_ms = cfg.timeout_ms;
  o.extents = plan_blocks(part_of(*ctx, ctx->blocks, part),
                          part_of(*ctx, g.block_offsets, part),
                          cfg.geometry.layer_block_bytes());
  ++ctx->sends_left;
  self
    ->request(cfg.transfer, milliseconds(cfg.timeout_ms + 1000),
              proto::send_atom::value, std::move(o))
    .then(
      [self, ctx](std::uint64_t) {
        if (--ctx->sends_left > 0 || ctx->failed) {
          if (ctx->failed && ctx->sends_left == 0)
            release_blocks(self, *ctx);
          return;
        }
        ctx->transfer_ns = since(ctx->send_start);
        release_blocks(self, *ctx);
        notify_arrived(self, ctx);
      },
      [self, ctx](caf::error& err) {
        --ctx->sends_left;
        fail_request(self, ctx, std::move(err));
      });
}

void on_grant(self_ptr self, const ctx_ptr& ctx, proto::grant& g) {
  if (ctx->failed)
    return;
  if (g.block_offsets.size() != ctx->blocks.size())
    return fail_request(
      self, ctx,
      make_error(ec::mismatch,
                 fmt::format("request {}: consumer granted {} blocks, the "
                             "producer needs {}",
                             ctx->req.request_id, g.block_offsets.size(),
                             ctx->blocks.size())));
  ctx->send_start = clock_type::now();
  ctx->consumer_name = g.receiver.name;
  if (!ctx->req.layerwise) {  // filled and hashed before allocate
    send_part(self, ctx, g, 0);
    return;
  }
  // Layer by layer: each layer goes as soon as it is written.
  std::int64_t fill_ns = 0;
  for (std::uint32_t l = 0; l < ctx->parts; ++l) {
    auto tf = clock_type::now();
    if (!fill_layers(self, ctx, l, 1))
      return;
    fill_ns += since(tf);
    send_part(self, ctx, g, l);
  }
  auto th = clock_type::now();
  hash_request(self, *ctx);
  ctx->compute_ns += fill_ns + since(th);
}

caf::result<proto::ready_report> on_prefill(self_ptr self,
                                            proto::prefill_request& req) {
  auto& st = self->state;
  auto& geo = st.cfg.geometry;
  if (!req.consumer)
    return make_error(ec::invalid_argument,
                      fmt::format("request {}: no consumer named",
                                  req.request_id));
  auto bpl = geo.blocks_for_tokens(req.prompt_tokens);
  if (bpl == 0)
    return make_error(ec::invalid_argument,
                      fmt::format("request {}: empty prompt", req.request_id));
  auto ctx = std::make_shared<request_ctx>();
  ctx->bpl = bpl;
  ctx->parts = req.layerwise || st.cfg.layerwise ? geo.layers : 1;
  if (ctx->parts > max_parts)
    return make_error(ec::invalid_argument,
                      fmt::format("--layerwise supports at most {} layers",
                                  max_parts));
  std::uint64_t n = std::uint64_t{bpl} * geo.layers;
  if (!st.pool->allocate(n, ctx->blocks))
    return make_error(
      ec::invalid_argument,
      fmt::format("producer '{}': block pool exhausted: request {} needs {} "
                  "blocks, {} of {} free (raise --pool-blocks)",
                  st.cfg.name, req.request_id, n, st.pool->free_blocks(),
                  st.pool->block_count()));
  ctx->req = std::move(req);
  ctx->req.layerwise |= st.cfg.layerwise;
  ctx->req.pull |= st.cfg.pull;
  ctx->bytes = n * geo.layer_block_bytes();
  ctx->promise = self->make_response_promise<proto::ready_report>();
  st.active.emplace(ctx->req.request_id, ctx);
  if (st.monitored.insert(ctx->req.consumer.address()).second)
    self->monitor(ctx->req.consumer);
  auto& r = ctx->req;
  if (!r.layerwise || r.pull) {
    auto t0 = clock_type::now();
    if (!fill_layers(self, ctx, 0, geo.layers))
      return ctx->promise;
    hash_request(self, *ctx);
    ctx->compute_ns = since(t0);
  }
  auto consumer = caf::actor_cast<consumer_actor>(r.consumer);
  if (r.pull) {
    proto::arrival_notice n_;
    n_.request_id = r.request_id;
    n_.bytes = ctx->bytes;
    n_.xxhash = ctx->hash;
    n_.has_xxhash = ctx->hashed;
    n_.pattern_seed = r.pattern_seed;
    n_.source = st.cfg.self;
    n_.block_offsets = ctx->blocks;
    n_.blocks_per_layer = bpl;
    n_.layers = r.layerwise ? geo.layers : 0;  // 0: one part
    self
      ->request(consumer, milliseconds(st.cfg.timeout_ms),
                proto::advertise_atom::value, std::move(n_))
      .then(
        [self, ctx](proto::ready_report& rep) {
          release_blocks(self, *ctx);
          if (ctx->failed)
            return;
          rep.compute_ns += ctx->compute_ns;
          answer(self, ctx, std::move(rep));
        },
        [self, ctx](caf::error& err) {
          // The consumer's side fails only after its transfers resolved
          // (or its deadline closed the channel), so the blocks are free.
          fail_request(self, ctx, std::move(err));
        });
    return ctx->promise;
  }
  proto::allocate_request a;
  a.request_id = r.request_id;
  a.blocks_per_layer = bpl;
  a.layers = geo.layers;
  a.layer_block_bytes = geo.layer_block_bytes();
  a.producer = st.cfg.name;
  a.parts = ctx->parts;
  self
    ->request(consumer, milliseconds(st.cfg.timeout_ms),
              proto::allocate_atom::value, std::move(a))
    .then([self, ctx](proto::grant& g) { on_grant(self, ctx, g); },
          [self, ctx](caf::error& err) {
            fail_request(self, ctx, std::move(err));
          });
  return ctx->promise;
}

template <class Pred>
void fail_where(self_ptr self, Pred pred, const caf::error& err) {
  std::vector<ctx_ptr> hit;
  for (auto& [id, ctx] : self->state.active)
    if (pred(*ctx))
      hit.push_back(ctx);
  for (auto& ctx : hit)
    fail_request(self, ctx, err);
}

producer_actor::behavior_type producer_impl(self_ptr self, app_config cfg) {
  auto blocks = cfg.region->size() / cfg.geometry.layer_block_bytes();
  self->state.pool =
    std::make_unique<block_pool>(blocks, cfg.geometry.layer_block_bytes());
  self->state.pattern = std::make_unique<kv_pattern>(cfg.region);
  self->state.cfg = std::move(cfg);
  self->set_down_handler([self](caf::down_msg& dm) {
    self->state.monitored.erase(dm.source);
    std::vector<ctx_ptr> hit;
    for (auto& [id, ctx] : self->state.active)
      if (ctx->req.consumer.address() == dm.source)
        hit.push_back(ctx);
    for (auto& ctx : hit) {
      auto who = ctx->consumer_name.empty()
                   ? "of request " + std::to_string(ctx->req.request_id)
                   : "'" + ctx->consumer_name + "'";
      fail_request(self, ctx,
                   make_error(ec::peer_down,
                              fmt::format("consumer {} is down: {}", who,
                                          render(dm.reason))));
    }
  });
  return {
    [self](proto::prefill_atom, proto::prefill_request& req) {
      return on_prefill(self, req);
    },
    [](joined_atom, const worker_info&) {},
    [self](left_atom, const std::string& name, const caf::error& why) {
      fail_where(self,
                 [&](const request_ctx& c) { return c.consumer_name == name; },
                 make_error(ec::peer_down,
                            fmt::format("consumer '{}' left the directory: {}",
                                        name, render(why))));
    },
  };
}

}  // namespace

producer_actor spawn_producer(caf::actor_system& sys, app_config cfg) {
  return sys.spawn(producer_impl, std::move(cfg));
}

}  // namespace kvferry
