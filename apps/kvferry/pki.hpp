// Certificates for the control plane's mutual TLS as the commands use them
// (docs/security.md): `kvferry pki init`, the TLS dir `kvferry launch` fills
// for its processes, the throwaway CA of a self-contained `kvferry demo`.
#pragma once

#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "kvferry/runtime/tls.hpp"
#include "kvferry/runtime/topology.hpp"

namespace kvferry::app {

/// The name whose certificate `kvferry status` and `kvferry demo` present.
constexpr const char* client_identity = "client";

/// The TLS options a topology gives its processes: its `tls:` section, the
/// dir made absolute (children may run elsewhere).
runtime::tls_options tls_for(const topology::deployment& t);

/// The flags that carry `tls` to a child process: --tls-dir DIR or
/// --insecure-plaintext.
std::vector<std::string> tls_args(const runtime::tls_options& tls);

/// Before `kvferry launch` starts `names` (its processes on this host): makes
/// sure the topology's TLS dir holds a certificate for each of them, and one
/// for clients where the CA key is at hand, creating the deployment CA when
/// the dir has none. Returns the line for launch to say (where the
/// certificates are, what was issued, or a warning that TLS is off). Errors
/// name the file at fault.
caf::expected<std::string>
prepare_launch_tls(const topology::deployment& t,
                   const std::vector<std::string>& names);

/// A CA and certificates in a fresh private temp dir, removed with this
/// object: for a demo that starts its own processes.
class throwaway_pki {
public:
  throwaway_pki() = default;
  throwaway_pki(const throwaway_pki&) = delete;
  throwaway_pki& operator=(const throwaway_pki&) = delete;
  ~throwaway_pki();

  /// Creates the dir and certificates for `names` and client_identity.
  caf::error create(const std::vector<std::string>& names);

  const std::string& dir() const { return dir_; }

private:
  std::string dir_;
};

} // namespace kvferry::app
