// Certificates and TLS settings without any process: `ensure_pki` makes a CA
// and per-process certificates with private file modes, `check_identity`
// names the file at fault, `system_config::secure` explains a missing TLS
// dir, and the topology's `tls:` section parses.
#include <filesystem>
#include <fstream>
#include <string>
#include <sys/stat.h>
#include <thread>

#include <doctest/doctest.h>

#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/runtime/tls.hpp"
#include "kvferry/runtime/topology.hpp"
#include "scratch_dir.hpp"

using namespace kvferry;
namespace fs = std::filesystem;

namespace {

unsigned mode_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 0777;
}

} // namespace

TEST_CASE("ensure_pki issues what is missing, private files private") {
  test::scratch_dir scratch{"kvferry-tls-unit"};
  auto dir = scratch.path / "pki";
  std::vector<std::string> issued;
  REQUIRE(!runtime::ensure_pki(dir.string(), {"directory", "w-0"}, &issued));
  CHECK(issued == std::vector<std::string>{"directory", "w-0"});
  CHECK(mode_of(dir) == 0700);
  CHECK(mode_of(dir / "ca.key") == 0600);
  CHECK(mode_of(dir / "w-0.key") == 0600);
  CHECK(!runtime::check_identity(runtime::identity_in(dir.string(), "w-0")));
  // Again: the CA and existing certificates are kept, only new names issued.
  issued.clear();
  REQUIRE(!runtime::ensure_pki(dir.string(), {"w-0", "w-1"}, &issued));
  CHECK(issued == std::vector<std::string>{"w-1"});
  CHECK(!runtime::check_identity(runtime::identity_in(dir.string(), "w-1")));
  // A name that cannot be a file name is refused.
  auto bad = runtime::ensure_pki(dir.string(), {"../escape"});
  REQUIRE(bad);
  CHECK(render(bad).find("../escape") != std::string::npos);
}

TEST_CASE("ensure_pki from two launches at once makes one CA") {
  test::scratch_dir scratch{"kvferry-tls-unit"};
  auto dir = (scratch.path / "pki").string();
  caf::error first, second;
  std::thread a{[&] { first = runtime::ensure_pki(dir, {"directory", "a"}); }};
  std::thread b{[&] { second = runtime::ensure_pki(dir, {"directory", "b"}); }};
  a.join();
  b.join();
  CHECK_MESSAGE(!first, render(first));
  CHECK_MESSAGE(!second, render(second));
  // Both certificates verify against the one CA that is there.
  CHECK(!runtime::check_identity(runtime::identity_in(dir, "a")));
  CHECK(!runtime::check_identity(runtime::identity_in(dir, "b")));
  CHECK(!runtime::check_identity(runtime::identity_in(dir, "directory")));
}

TEST_CASE("check_identity names the file at fault") {
  test::scratch_dir scratch{"kvferry-tls-unit"};
  auto dir = (scratch.path / "pki").string();
  REQUIRE(!runtime::ensure_pki(dir, {"a"}));
  auto id = runtime::identity_in(dir, "a");
  std::ofstream(id.cert_file) << "not a certificate\n";
  auto err = runtime::check_identity(id);
  REQUIRE(err);
  CHECK(render(err).find(id.cert_file + " is not a PEM certificate") !=
        std::string::npos);
  fs::remove(id.key_file);
  id = runtime::identity_in(dir, "nobody");
  err = runtime::check_identity(id);
  REQUIRE(err);
  CHECK(render(err).find("cannot read the certificate " + id.cert_file) !=
        std::string::npos);
}

TEST_CASE("secure() without a TLS dir says what to pass") {
  test::scratch_dir scratch{"kvferry-tls-unit"};
  runtime::system_config cfg;
  runtime::tls_options tls;
  tls.dir = (scratch.path / "absent").string();
  auto err = cfg.secure(tls, "decode-0");
  REQUIRE(err);
  auto text = render(err);
  CHECK(text.find("no TLS certificates") != std::string::npos);
  CHECK(text.find("--tls-dir") != std::string::npos);
  CHECK(text.find("--insecure-plaintext") != std::string::npos);
  tls.insecure_plaintext = true;
  CHECK(!cfg.secure(tls, "decode-0"));
}

TEST_CASE("the topology's tls section") {
  const std::string base = "workers:\n"
                           "  - {name: p, role: prefill}\n"
                           "  - {name: d, role: decode}\n";
  topology::load_options options;
  options.allow_missing_plugins = true;
  auto on = topology::parse(base, "t.yaml", options);
  REQUIRE(on.ok());
  CHECK(on.topology->tls.enabled);
  CHECK(on.topology->tls.dir.empty());
  auto off = topology::parse(base + "tls: off\n", "t.yaml", options);
  REQUIRE(off.ok());
  CHECK(!off.topology->tls.enabled);
  auto dir = topology::parse(base + "tls: {dir: /etc/kvferry/pki}\n", "t.yaml",
                             options);
  REQUIRE(dir.ok());
  CHECK(dir.topology->tls.dir == "/etc/kvferry/pki");
  auto bad = topology::parse(base + "tls: maybe\n", "t.yaml", options);
  CHECK(!bad.ok());
  CHECK(bad.report().find("t.yaml:4") != std::string::npos);
  auto unknown = topology::parse(base + "tls: {ca: x}\n", "t.yaml", options);
  CHECK(!unknown.ok());
}
