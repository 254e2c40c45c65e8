// The router: drives a stream of requests through prefill and decode
// workers and tallies what came back.
//
// Given the requests (prompt tokens each), the producers and the consumers,
// it sends each request to the producer and consumer its routing policy
// picks (route_policy.hpp; round-robin by default: request i to producer
// i % P bound for consumer i % C), keeps at most `inflight` requests open
// (and, with arrival times, starts none before its time: a trace replay),
// and records each one's latency, bytes and data
// window. It watches the directory: a worker that leaves fails the
// requests that go through it at once, naming the worker; a directory that
// dies stops the run (nobody could tell of a worker's death any more). After
// the first failure no new request starts and the run only drains.
//
// Time comes from CAF's actor clock only (never the wall clock), so the
// router runs unchanged under the deterministic test coordinator (virtual
// time: the unit tests, the simulator). `kvferry demo` is its command-line
// front end.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <caf/actor_clock.hpp>
#include <caf/actor_system.hpp>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/route_policy.hpp"

namespace kvferry {

/// The router's interface: a directory watcher (it learns of workers that
/// leave from the directory, which sees a process die first), and its own
/// timer (internal: the next request's arrival time has come).
using router_actor =
    directory_watcher_actor::extend<caf::reacts_to<proto::sweep_atom>>;

/// A named worker the router sends to.
template<class Handle>
struct router_worker {
  std::string name;
  Handle app;
};

/// One request as a `router_config::source` gives it.
struct router_input {
  std::uint32_t tokens = 0; // prompt length
  /// When it arrives, after the measured run's start (as `arrivals`).
  caf::timespan arrival{};
  std::vector<std::uint64_t> prefix_ids; // as `prefix_ids`
};

/// One measured request that was answered (or failed): router_request below.
struct router_request;

struct router_config {
  /// One entry per request: its prompt length in tokens.
  std::vector<std::uint32_t> tokens;
  /// Empty, or one entry per request (non-decreasing): when request i
  /// arrives, after the measured run's start. It is sent then, or once
  /// fewer than `inflight` are open if that is later (`kvferry demo
  /// --trace`). Empty: every request is due at once.
  std::vector<caf::timespan> arrivals;
  /// The id of the first request; request i gets first_request_id + i, the
  /// warm-up requests the ids after the last one.
  std::uint64_t first_request_id = 1;
  std::vector<router_worker<producer_actor>> producers;
  std::vector<router_worker<caf::actor>> consumers;
  /// Which producer and consumer each request goes to (route_policy.hpp).
  /// The router's loads are prompt tokens routed and not yet answered, per
  /// worker (it cannot see a prefill end or a decode finish).
  routing routing_policy = routing::round_robin;
  /// Empty, or one entry per request: its leading prefix ids (a trace's
  /// `hash_ids`), for prefix-aware routing; the router remembers, per
  /// consumer, up to `prefix_capacity` ids of the requests answered there.
  std::vector<std::vector<std::uint64_t>> prefix_ids;
  std::size_t prefix_capacity = 65536;
  /// Instead of `tokens`, `arrivals` and `prefix_ids` (then left empty):
  /// fills in the next request, in arrival order (request i is the i-th
  /// call's), or returns false after the last. The router reads at most one
  /// request ahead of those it has sent, so that a trace of any length
  /// streams through in flat memory (the simulator). Arrivals must not
  /// decrease. Warm-up requests then take the ids from first_request_id +
  /// 2^32 on.
  std::function<bool(router_input&)> source;
  /// Called (on the router's thread) with each measured request's row as it
  /// is answered or fails. When set, the results keep no per-request rows
  /// or samples (`requests`, `latency_us`, `control_us`, `data_windows`,
  /// `gpu_queued_us`, `after_kernel_us`), so that memory stays flat however
  /// many requests run; the counts, bytes and errors are kept.
  std::function<void(const router_request&)> on_request;
  /// Watched for workers that leave; a null handle watches nothing.
  directory_actor directory;
  std::string directory_name; // for messages, e.g. "127.0.0.1:7470"
  bool layerwise = false;
  bool pull = false;
  std::uint64_t seed = 1; // of the KV pattern the producers fill
  /// Sampled verification: the producers write, and the consumers check,
  /// one 16-byte stamp per 4 KiB page (kv_stamp.hpp) instead of every byte.
  bool sampled_verify = false;
  std::uint32_t inflight = 2;
  /// After a failed request, go on issuing the rest (a serving router, the
  /// simulator) instead of stopping the run (the demo's rule).
  bool go_on_after_failure = false;
  /// The workers' own deadline; the router allows 3x this plus 5 s for a
  /// reply, so that the workers' deadlines fire first and name the cause.
  std::uint32_t timeout_ms = 10000;
  /// Tokens of the one warm-up request per producer/consumer pair that runs
  /// before the clock starts (first contact: credit, channels, mapping a
  /// peer's pool); 0: none.
  std::uint32_t warm_up_tokens = 0;
  /// Called (on the router's thread) once every warm-up request succeeded:
  /// how many there were and how long they took.
  std::function<void(std::size_t, caf::timespan)> on_warm_up;
};

/// One measured request that was answered (or failed), for a per-request
/// report. Times are since the measured run's start (router_results::start).
struct router_request {
  std::size_t index = 0; // into router_config::tokens (or the source's)
  std::size_t producer = 0, consumer = 0;
  caf::timespan due{};      // its arrival (0 without arrivals)
  caf::timespan sent{};     // the router sent it to the producer
  caf::timespan answered{}; // the answer (or failure) came
  bool ok = false;
  proto::ready_report report; // zeros when it failed
};

/// What a run produced so far.
struct router_results {
  std::uint64_t done = 0;   // answered, failed ones included
  std::uint64_t failed = 0; // warm-up failures included
  std::uint64_t bytes = 0;
  std::vector<double> latency_us;
  std::vector<double> control_us; // latency minus data movement and hashing
  // Per request: the producer's fill + hash and the consumer's verification
  // (ready_report::compute_ns), us.
  std::vector<double> compute_us;
  // Each request's data window (consumer index, start, end: the consumer
  // host's steady clock, ns). Requests in flight together share time, so the
  // data rate divides by the union of each consumer's windows, not the sum.
  struct data_window {
    std::size_t consumer;
    std::int64_t start, end;
  };
  std::vector<data_window> data_windows;
  // CUDA IPC: the copy kernels' GPU time (ready_report::gpu_copy_ns) and the
  // bytes of the requests that have one; per request, the launch-to-kernel
  // time and the rest of its data window after the kernels (us).
  std::int64_t gpu_copy_ns = 0;
  std::uint64_t gpu_copy_bytes = 0;
  std::vector<double> gpu_queued_us;
  std::vector<double> after_kernel_us;
  /// The measured requests, in the order they were answered.
  std::vector<router_request> requests;
  /// "request 7 (to decode worker 'decode-0'): kvferry.mismatch: ...", in
  /// the order the failures came.
  std::vector<std::string> errors;
  /// Why the run stopped before its end when no request says it (e.g. the
  /// directory died between requests); empty otherwise.
  std::string stopped_because;
  /// The actor clock when the measured requests began (after the warm-up)
  /// and when the last one ended.
  caf::actor_clock::time_point start, end;
};

/// Bytes over the time during which some request's bytes were moving: the
/// union of the data windows, per consumer (each has its own clock), summed.
/// Bytes per ns = GB/s; 0 without windows.
double data_rate_gbps(const router_results& r);

/// A run's results, shared between the router (which writes them) and its
/// owner (which may read them from another thread while the run goes on).
class router_run {
public:
  /// A copy of the results so far.
  router_results snapshot() const;
  /// Whether the run has ended (every request answered, or stopped).
  bool finished() const;
  /// Waits up to `timeout` for the end of the run; true once it ended.
  bool wait_finished(std::chrono::milliseconds timeout) const;

  // The router's side.
  template<class F>
  void update(F&& f) {
    std::lock_guard<std::mutex> guard{mtx_};
    f(results_);
  }
  void finish(caf::actor_clock::time_point end);

private:
  mutable std::mutex mtx_;
  mutable std::condition_variable cv_;
  router_results results_;
  bool finished_ = false;
};

/// Spawns a router that starts `cfg`'s requests at once and quits when the
/// run ends; `run` receives its results.
router_actor spawn_router(caf::actor_system& sys, router_config cfg,
                          std::shared_ptr<router_run> run);

} // namespace kvferry
