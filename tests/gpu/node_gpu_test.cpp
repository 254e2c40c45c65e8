// kvferry::node on one GPU across two processes (issue #15): the decode's
// pull of a prefill that advertised GPU blocks on the same host is a
// one-sided CUDA IPC read (request_stats::ipc), layer by layer as the
// prefill's model stream writes each layer: even layers with interprocess
// CUDA events (the read's copy waits on the GPU), odd ones with plain events
// (the prefill's node polls them before its ready note). The model stream
// starts late (a host function holds it), so a read that did not wait
// would find the prefill's sentinel. Every byte checked against a reference
// copy; with use_ipc off the same pull takes the plugin path (ipc false).
// This binary runs itself a second time as the prefill process.
#include <doctest/doctest.h>

// Without CUDA (the sanitizer build) there are no cases: the GPU test main
// reports the test skipped.
#ifdef KVFERRY_HAVE_CUDA
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

#include "../support/cuda_upload.hpp"
#include "node_cache.hpp"
#include "node_peer_process.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using kvferry::test::host_cache;

namespace {

constexpr int gpu = 0;
constexpr std::uint32_t layers = 4;
constexpr std::uint64_t blocks = 64;
constexpr std::uint64_t half_bytes = 16384;
constexpr std::uint64_t seed = 23;
constexpr auto patience = 30s;
const std::vector<std::uint64_t> src_ids{0, 1, 2, 9, 17, 30, 31, 63, 40};
const std::vector<std::uint64_t> dst_ids{5, 6, 7, 1, 33, 12, 13, 0, 62};

void cuda_ok(cudaError_t err, const char* what) {
  REQUIRE_MESSAGE(err == cudaSuccess, what, ": ", cudaGetErrorString(err));
}

kv_layout prefill_layout() {
  return kv_layout::vllm_per_layer(layers, blocks, half_bytes);
}
kv_layout decode_layout() {
  return kv_layout::block_major(layers, blocks, half_bytes);
}

// A KV cache in GPU memory, one allocation per region, every byte
// `fill` at first.
struct gpu_cache {
  kv_layout layout;
  std::vector<void*> regions;
  gpu_cache(kv_layout l, std::uint8_t fill) : layout(std::move(l)) {
    cuda_ok(cudaSetDevice(gpu), "cudaSetDevice");
    for (std::size_t r = 0; r < layout.region_count(); ++r) {
      void* p = nullptr;
      cuda_ok(cudaMalloc(&p, layout.region_bytes()), "cudaMalloc");
      cuda_ok(cudaMemset(p, fill, layout.region_bytes()), "cudaMemset");
      regions.push_back(p);
    }
  }
  ~gpu_cache() {
    for (auto* p : regions)
      cudaFree(p);
  }
  kv_cache cache() const { return {layout, regions, gpu}; }
  std::vector<std::vector<std::uint8_t>> read_back() const {
    std::vector<std::vector<std::uint8_t>> out;
    for (auto* p : regions) {
      std::vector<std::uint8_t> bytes(layout.region_bytes());
      cuda_ok(cudaMemcpy(bytes.data(), p, bytes.size(), cudaMemcpyDeviceToHost),
              "read back");
      out.push_back(std::move(bytes));
    }
    return out;
  }
};

void CUDART_CB hold_stream(void*) {
  // Holds the model stream, so that the layers are written well after
  // layer_ready was called: a read that did not wait reads the sentinel.
  std::this_thread::sleep_for(200ms);
}

// The prefill's "model": writes request layers out of order on its own
// stream (from the reference pattern, staged on the GPU), recording an
// event per layer (interprocess on even layers) that it hands to
// layer_ready at once, before the stream ran.
struct model {
  host_cache pattern{prefill_layout(), seed};
  std::vector<void*> staged;
  cudaStream_t stream = nullptr;
  std::vector<cudaEvent_t> events;
  model() {
    for (auto& r : pattern.regions) {
      void* p = nullptr;
      cuda_ok(cudaMalloc(&p, r.size()), "cudaMalloc");
      cuda_ok(test::upload(p, r.data(), r.size()), "stage");
      staged.push_back(p);
    }
    cuda_ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
            "stream");
    for (std::uint32_t l = 0; l < layers; ++l) {
      cudaEvent_t e = nullptr;
      auto flags = l % 2 == 0 ? cudaEventInterprocess | cudaEventDisableTiming
                              : cudaEventDisableTiming;
      cuda_ok(cudaEventCreateWithFlags(&e, flags), "event");
      events.push_back(e);
    }
  }
  ~model() {
    cudaStreamSynchronize(stream);
    for (auto e : events)
      cudaEventDestroy(e);
    cudaStreamDestroy(stream);
    for (auto* p : staged)
      cudaFree(p);
  }
  void run(node& n, std::uint64_t id, const gpu_cache& cache) {
    cuda_ok(cudaLaunchHostFunc(stream, &hold_stream, nullptr), "hold");
    for (std::uint32_t l = layers; l-- > 0;) { // last layer first
      cuda_ok(cudaMemcpyAsync(cache.regions[l], staged[l],
                              cache.layout.region_bytes(),
                              cudaMemcpyDeviceToDevice, stream),
              "write layer");
      cuda_ok(cudaEventRecord(events[l], stream), "cudaEventRecord");
      auto ok = n.layer_ready(id, l, events[l]);
      REQUIRE_MESSAGE(ok.ok(), ok.message());
    }
  }
};

// The prefill process: obeys "advertise ID" (layerwise, written by the
// model) and "quit"; its cache starts as the sentinel.
void serve_as_prefill(const std::string& name) {
  gpu_cache cache{prefill_layout(), test::node_sentinel};
  model m;
  node_options o;
  o.name = name;
  o.cache = cache.cache();
  auto n = node::start(std::move(o));
  REQUIRE_MESSAGE(n.ok(), n.error().message());
  test::serve_orders(*n, [&](const test::node_order& order) {
    auto offer = n->advertise(order.id, order.from, src_ids, true);
    m.run(*n, order.id, cache);
    auto r = offer.wait(patience);
    REQUIRE_MESSAGE(r.ok(), r.error().message());
    // The source is free once the read finished: the reset cannot race it.
    cuda_ok(cudaStreamSynchronize(m.stream), "model stream");
    for (auto* p : cache.regions)
      cuda_ok(cudaMemset(p, test::node_sentinel, cache.layout.region_bytes()),
              "reset");
    REQUIRE(n->notify(order.from, "done " + std::to_string(order.id) +
                                      (r->ipc ? " ipc" : " plugin"))
                .ok());
  });
}

struct decode_side {
  host_cache reference{prefill_layout(), seed};
  host_cache sentinel{decode_layout(), 0};
  gpu_cache dst{decode_layout(), test::node_sentinel};
  test::note_log log;

  node start(bool use_ipc) {
    node_options o;
    o.name = "decode-0";
    o.cache = dst.cache();
    o.use_ipc = use_ipc;
    auto n = node::start(std::move(o));
    REQUIRE_MESSAGE(n.ok(), n.error().message());
    log.listen(*n);
    return std::move(*n);
  }

  // Pulls request `id` layer by layer from a new prefill process; checks
  // every byte and the path both sides say the request took.
  void pull_and_check(bool use_ipc, std::uint64_t id) {
    auto decode = start(use_ipc);
    auto prefill = test::spawn_peer_process(decode, "prefill-1", patience);
    auto before = dst.read_back();
    auto pulled = decode.pull(id, "prefill-1", dst_ids);
    REQUIRE(decode.notify("prefill-1", "advertise " + std::to_string(id)).ok());
    auto r = pulled.wait(patience);
    REQUIRE_MESSAGE(r.ok(), r.error().message());
    CHECK(r->ipc == use_ipc);
    CHECK(r->bytes == src_ids.size() * layers * 2 * half_bytes);
    auto want = sentinel.expected(before, reference, src_ids, dst_ids);
    auto got = dst.read_back();
    for (std::size_t k = 0; k < want.size(); ++k) {
      CAPTURE(k);
      CHECK(got[k] == want[k]);
    }
    auto done = "done " + std::to_string(id) + (use_ipc ? " ipc" : " plugin");
    CHECK(log.heard(done, patience));
    CHECK(decode.notify("prefill-1", "quit").ok());
    CHECK(prefill->wait_exit(patience) == 0);
    std::printf("node GPU pull %llu: %s, %llu bytes, data %.1f us, control "
                "%.1f us\n",
                static_cast<unsigned long long>(id),
                r->ipc ? "one-sided CUDA IPC read" : "plugin path",
                static_cast<unsigned long long>(r->bytes),
                r->data.count() / 1e3, r->control.count() / 1e3);
  }
};

} // namespace

TEST_CASE("node peer process (run by the tests below)") {
  const char* name = std::getenv("KVFERRY_NODE_PEER");
  if (name != nullptr)
    serve_as_prefill(name);
}

TEST_CASE_FIXTURE(decode_side, "one host, GPU caches: a layer-by-layer pull "
                               "is a one-sided CUDA IPC read that waits for "
                               "each layer's event, byte for byte") {
  pull_and_check(true, 1);
}

TEST_CASE_FIXTURE(decode_side, "use_ipc off: the same pull takes the plugin "
                               "path, byte for byte") {
  pull_and_check(false, 2);
}
#endif
