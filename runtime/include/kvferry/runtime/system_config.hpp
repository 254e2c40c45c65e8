// The actor-system configuration every kvferry process uses: loads the io
// module (middleman), registers kvferry's message types and error category,
// and applies the runtime options (scheduler policy, heartbeats, threads).
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/fwd.hpp>
#include <caf/timespan.hpp>

#include "kvferry/runtime/tls.hpp"

namespace CLI {
class App;
}

namespace kvferry::runtime {

/// Options shared by every kvferry process (see add_runtime_options).
struct runtime_options {
  /// "sharing" (one shared queue; the faster choice for request/response
  /// traffic across processes, measured in docs/benchmarks.md) or
  /// "stealing" (CAF's default; better for many busy actors).
  std::string scheduler_policy = "sharing";
  /// Scheduler worker threads; 0 = CAF's default (number of cores).
  size_t threads = 0;
  /// With the sharing policy, how long an idle scheduler thread keeps
  /// looking for work before it sleeps (runtime/hot_sharing.hpp); 0 = off,
  /// CAF's own policy. $KVFERRY_SCHED_HOT_US overrides it. Off by default:
  /// kvferry::endpoint turns it on for its one-thread system.
  std::chrono::microseconds scheduler_hot_window{0};
  /// Middleman threads that deserialise incoming messages; 0 = do it on
  /// the I/O thread, -1 = CAF's default (min(3, cores/4) + 1). 0 saves a
  /// thread hop per message (~20% of a round trip, docs/benchmarks.md);
  /// our messages are small descriptors, so the I/O thread keeps up.
  int io_workers = 0;
  /// BASP heartbeat interval between connected nodes; 0 disables.
  size_t heartbeat_ms = 1000;
  /// A connection silent for this long is closed and its peer's actors are
  /// reported down (needs heartbeats on).
  size_t connection_timeout_ms = 10000;
  /// trace, debug, info, warn, error, critical, off; empty = $KVFERRY_LOG or
  /// "info".
  std::string log_level;
  /// Also write the log to this file (appends); empty = stderr only.
  std::string log_file;
  /// Mutual TLS on the control plane (the default) or plain TCP.
  tls_options tls;
};

/// Adds --log-level, --log-file, --scheduler, --threads, --io-workers,
/// --heartbeat-ms, --tls-dir and --insecure-plaintext to a CLI11
/// (sub)command.
void add_runtime_options(CLI::App& cmd, runtime_options& options);

/// kvferry's actor_system_config. Construct, then pass to caf::actor_system.
class system_config : public caf::actor_system_config {
public:
  system_config();
  explicit system_config(const runtime_options& options);

  /// Switches to CAF's deterministic test coordinator (virtual time, no
  /// threads, no network backend): for unit tests (tests/support).
  void use_test_coordinator();

  /// Secures the control plane as `tls` says, presenting the certificate
  /// `name` of the TLS dir (docs/security.md): checks the files first
  /// (errors name the file at fault) and loads CAF's OpenSSL module, which
  /// then refuses any peer without a certificate of the deployment CA before
  /// a byte of it reaches CAF's BASP parser. Under --insecure-plaintext it
  /// warns instead. Call before constructing the actor_system; log set up.
  caf::error secure(const tls_options& tls, const std::string& name);

private:
  void register_types();
  void apply(const runtime_options& options);

  /// Where module_factories holds the hot_sharing scheduler, if it does.
  std::optional<size_t> hot_scheduler_;
};

/// The bounds kvferry's own teardowns (endpoint, node, bench node) give
/// stop_actor for each actor and close_actor_system for the system.
inline constexpr std::chrono::milliseconds actor_stop_limit{5000};
inline constexpr std::chrono::milliseconds system_close_limit{2000};

/// Asks `who` to exit (user_shutdown) and waits for it to be down, at most
/// `limit` (warning that `what` did not stop), then takes it out of the
/// registry: CAF 0.17 keeps there every actor whose handle went to another
/// node, and ~actor_system waits for a detached one until it is gone
/// (actor-framework issue #1110). Returns whether it went down in time.
bool stop_actor(caf::scoped_actor& self, const caf::actor_addr& who,
                std::chrono::milliseconds limit, const std::string& what);

/// Destroys an actor system (then its config), waiting at most `limit`.
/// CAF 0.17's ~actor_system can wait forever for a detached actor (a
/// transfer actor, a directory agent) once its handle went to another actor
/// system, even after the caller erased it from the registry (likely a
/// remote monitor's late message putting it back; actor-framework issues
/// #1110, #1196, fixed in CAF 0.18). Call it once every actor of the system is
/// down and nothing of the caller's is touched any more: a system that does not
/// finish in time is left to finish (or not) on a thread of its own, with a
/// warning naming `who`. Returns whether it finished in time.
bool close_actor_system(std::unique_ptr<caf::actor_system> sys,
                        std::unique_ptr<caf::actor_system_config> cfg,
                        std::chrono::milliseconds limit,
                        const std::string& who);

} // namespace kvferry::runtime
