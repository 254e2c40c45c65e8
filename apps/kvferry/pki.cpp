// `kvferry pki init DIR [NAME...]` and the certificate set-up of launch and
// demo (pki.hpp).
#include "pki.hpp"

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "commands.hpp"
#include "kvferry/runtime/error.hpp"

namespace kvferry::app {

namespace fs = std::filesystem;

runtime::tls_options tls_for(const topology::deployment& t) {
  runtime::tls_options tls;
  tls.insecure_plaintext = !t.tls.enabled;
  auto dir = t.tls.dir.empty() ? runtime::default_tls_dir() : t.tls.dir;
  std::error_code ec;
  auto absolute = fs::absolute(dir, ec);
  tls.dir = ec ? dir : absolute.lexically_normal().string();
  return tls;
}

std::vector<std::string> tls_args(const runtime::tls_options& tls) {
  if (tls.insecure_plaintext)
    return {"--insecure-plaintext"};
  return {"--tls-dir", tls.dir};
}

caf::expected<std::string>
prepare_launch_tls(const topology::deployment& t,
                   const std::vector<std::string>& names) {
  auto tls = tls_for(t);
  if (tls.insecure_plaintext)
    return fmt::format("WARNING: TLS is OFF (tls: off in {}): the control "
                       "plane is plain TCP; anyone who reaches its ports can "
                       "drive the deployment (docs/security.md)",
                       t.source_file);
  std::vector<std::string> issued;
  if (auto err = runtime::ensure_pki(tls.dir, names, &issued))
    return err;
  // The client certificate only where certificates can be issued: a host
  // that was handed its own files only needs none.
  if (fs::exists(fs::path{tls.dir} / "ca.key"))
    if (auto err = runtime::ensure_pki(tls.dir, {client_identity}, &issued))
      return err;
  return fmt::format("control plane over mutual TLS, certificates in {}{}",
                     tls.dir,
                     issued.empty() ? std::string{}
                                    : fmt::format(" (issued now: {})",
                                                  fmt::join(issued, ", ")));
}

throwaway_pki::~throwaway_pki() {
  if (dir_.empty())
    return;
  std::error_code ignored;
  fs::remove_all(dir_, ignored);
}

caf::error throwaway_pki::create(const std::vector<std::string>& names) {
  auto base = fs::temp_directory_path() / "kvferry-pki-XXXXXX";
  std::string pattern = base.string();
  if (::mkdtemp(pattern.data()) == nullptr)
    return make_error(ec::invalid_argument,
                      "cannot create a temp dir for the demo's certificates "
                      "under " +
                          fs::temp_directory_path().string());
  dir_ = pattern; // mkdtemp: mode 0700
  auto all = names;
  all.push_back(client_identity);
  return runtime::ensure_pki(dir_, all);
}

namespace {

struct pki_command {
  std::string dir;
  std::vector<std::string> names;
  int days = 365;
};

int run_pki_init(const pki_command& cmd) {
  auto names = cmd.names;
  if (names.empty())
    names = {"directory", client_identity};
  std::vector<std::string> issued;
  if (auto err = runtime::ensure_pki(cmd.dir, names, &issued, cmd.days)) {
    std::cerr << "kvferry pki init: " << render(err) << "\n";
    return 1;
  }
  std::cout << fmt::format(
      "{}: CA ca.crt, certificates for {}{}\n", cmd.dir, fmt::join(names, ", "),
      issued.size() == names.size() ? ""
                                    : fmt::format(" ({} new)", issued.size()));
  return 0;
}

} // namespace

void add_pki(CLI::App& root, int& exit_code) {
  auto* pki = root.add_subcommand(
      "pki", "Certificates for the control plane's mutual TLS");
  pki->require_subcommand(1);
  auto cmd = std::make_shared<pki_command>();
  auto* init = pki->add_subcommand(
      "init", "Create a deployment CA in DIR (if absent) and a certificate "
              "for each NAME that has none (default: directory, client)");
  init->add_option("dir", cmd->dir, "the TLS dir (created 0700)")->required();
  init->add_option("names", cmd->names,
                   "process names: directory, each worker's --name, client");
  init->add_option("--days", cmd->days, "validity of new certificates")
      ->capture_default_str()
      ->check(CLI::Range(1, 3650));
  init->callback([cmd, &exit_code] { exit_code = run_pki_init(*cmd); });
}

} // namespace kvferry::app
