#include "kvferry/runtime/system_config.hpp"

#include <filesystem>
#include <future>
#include <thread>

#include <CLI/CLI.hpp>
#include <caf/io/middleman.hpp>
#include <caf/logger.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/scheduler/coordinator.hpp>
#include <caf/scoped_actor.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/hot_sharing.hpp"
#include "kvferry/runtime/type_ids.hpp"
#include "kvferry/runtime/version.hpp"

namespace kvferry::runtime {

namespace detail {
void link_openssl_error_queue_fix(); // openssl_error_queue.cpp
} // namespace detail

void add_runtime_options(CLI::App& cmd, runtime_options& options) {
  cmd.add_option("--log-level", options.log_level,
                 "trace|debug|info|warn|error|critical|off (default: "
                 "$KVFERRY_LOG or info)");
  cmd.add_option("--log-file", options.log_file,
                 "also append the log to this file");
  cmd.add_option("--scheduler", options.scheduler_policy,
                 "CAF scheduler policy: sharing (default) or stealing")
      ->check(CLI::IsMember({"sharing", "stealing"}));
  cmd.add_option("--threads", options.threads,
                 "scheduler threads (0 = one per core)");
  cmd.add_option("--io-workers", options.io_workers,
                 "middleman deserialisation threads (0 = on the I/O thread, "
                 "-1 = CAF's default)");
  cmd.add_option("--heartbeat-ms", options.heartbeat_ms,
                 "heartbeat between connected processes (0 = off)");
  add_tls_options(cmd, options.tls);
}

system_config::system_config() {
  register_types();
  apply(runtime_options{});
}

system_config::system_config(const runtime_options& options) {
  register_types();
  apply(options);
}

void system_config::register_types() {
  load<caf::io::middleman>();
  add_message_types<caf::id_block::kvferry_runtime>();
  add_message_types<caf::id_block::kvferry_protocol>();
  add_error_category(
      ec_category, [](uint8_t code, caf::atom_value, const caf::message& ctx) {
        // kvferry::render: unqualified, the static
        // actor_system_config::render would be found.
        return kvferry::render(caf::error{code, ec_category, ctx});
      });
}

void system_config::apply(const runtime_options& options) {
  set("scheduler.policy", caf::atom_from_string(options.scheduler_policy));
  // CAF builds its own scheduler unless a module of that kind is loaded:
  // the sharing policy gets a hot window where it has one (hot_sharing).
  const auto window = scheduler_hot_window(options.scheduler_hot_window);
  if (options.scheduler_policy == "sharing" && window.count() > 0) {
    hot_scheduler_ = module_factories.size();
    module_factories.push_back([window](caf::actor_system& sys) {
      auto* sched = new caf::scheduler::coordinator<hot_sharing>(sys);
      sched->data().window = window;
      return static_cast<caf::actor_system::module*>(sched);
    });
  }
  if (options.threads > 0)
    set("scheduler.max-threads", options.threads);
  if (options.io_workers >= 0)
    set("middleman.workers", static_cast<size_t>(options.io_workers));
  set("middleman.heartbeat-interval",
      caf::timespan{std::chrono::milliseconds(options.heartbeat_ms)});
  set("middleman.connection-timeout",
      caf::timespan{std::chrono::milliseconds(options.connection_timeout_ms)});
  // CAF's handshake refuses a peer whose wire identity differs (a process
  // of another kvferry build): render() explains that error.
  set("middleman.app-identifiers", std::vector<std::string>{wire_id});
  // CAF's own logger stays quiet: kvferry logs through spdlog.
  set("logger.file-verbosity", caf::atom("quiet"));
  set("logger.console-verbosity", caf::atom("quiet"));
}

caf::error system_config::secure(const tls_options& tls,
                                 const std::string& name) {
  if (tls.insecure_plaintext) {
    spdlog::warn("{}: TLS is OFF (--insecure-plaintext): the control plane "
                 "is plain TCP and anyone who reaches its ports can read and "
                 "drive this deployment (docs/security.md)",
                 name);
    return caf::none;
  }
  auto dir = tls.dir.empty() ? default_tls_dir() : tls.dir;
  auto id = identity_in(dir, name);
  if (!std::filesystem::exists(id.ca_file))
    return make_error(
        ec::invalid_argument,
        fmt::format("{}: no TLS certificates: {} does not exist. Pass "
                    "--tls-dir DIR (a folder made by `kvferry pki init DIR "
                    "{}`, or by `kvferry launch`), set $KVFERRY_TLS_DIR, or "
                    "opt out with --insecure-plaintext",
                    name, id.ca_file, name));
  if (auto err = check_identity(id))
    return err;
  auto key_mode = std::filesystem::status(id.key_file).permissions();
  using perms = std::filesystem::perms;
  if ((key_mode & (perms::group_all | perms::others_all)) != perms::none)
    spdlog::warn("{}: the private key {} is readable by other users (chmod "
                 "600 it)",
                 name, id.key_file);
  // CAF's OpenSSL module needs the error-queue fix linked in (see there).
  detail::link_openssl_error_queue_fix();
  load<caf::openssl::manager>();
  // Any of these set turns on CAF's peer authentication: certificates
  // required on both sides, verified against the CA file.
  openssl_certificate = id.cert_file;
  openssl_key = id.key_file;
  openssl_cafile = id.ca_file;
  spdlog::debug("{}: control plane over mutual TLS ({}, CA {})", name,
                id.cert_file, id.ca_file);
  return caf::none;
}

void system_config::use_test_coordinator() {
  if (hot_scheduler_) {
    module_factories.erase(module_factories.begin() +
                           static_cast<std::ptrdiff_t>(*hot_scheduler_));
    hot_scheduler_.reset();
  }
  set("scheduler.policy", caf::atom("testing"));
  set("middleman.network-backend", caf::atom("testing"));
  set("middleman.manual-multiplexing", true);
  set("middleman.heartbeat-interval", caf::timespan{0});
  set("middleman.workers", size_t{0});
}

bool stop_actor(caf::scoped_actor& self, const caf::actor_addr& who,
                std::chrono::milliseconds limit, const std::string& what) {
  if (!who)
    return true;
  self->monitor(who);
  self->send_exit(who, caf::exit_reason::user_shutdown);
  bool down = false;
  bool in_time = true;
  self->receive_while([&] { return !down; })(
      [&](const caf::down_msg& dm) { down = dm.source == who; },
      caf::after(limit) >>
          [&] {
            spdlog::warn("{} did not stop within {} ms", what, limit.count());
            down = true;
            in_time = false;
          });
  self->system().registry().erase(who.id());
  return in_time;
}

bool close_actor_system(std::unique_ptr<caf::actor_system> sys,
                        std::unique_ptr<caf::actor_system_config> cfg,
                        std::chrono::milliseconds limit,
                        const std::string& who) {
  if (!sys)
    return true;
  // This thread's reference to the system's logger (CAF keeps one per
  // thread that started a system) would keep ~actor_system waiting for it.
  caf::logger::set_current_actor_system(nullptr);
  std::promise<void> closed;
  auto done = closed.get_future();
  std::thread closer{[s = std::move(sys), c = std::move(cfg),
                      p = std::move(closed)]() mutable {
    s.reset();
    c.reset();
    p.set_value();
  }};
  if (done.wait_for(limit) == std::future_status::ready) {
    closer.join();
    return true;
  }
  spdlog::warn("{}: its actor system did not shut down within {} ms (CAF "
               "0.17, actor-framework issue #1196); leaving it to a thread "
               "of its own",
               who, limit.count());
  closer.detach();
  return false;
}

} // namespace kvferry::runtime
