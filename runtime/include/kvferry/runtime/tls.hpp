// Mutual TLS on the control plane (docs/security.md): which certificate a
// process presents, checking those files before CAF sees them, and the
// publish/connect calls that go through CAF's OpenSSL middleman when TLS is
// on and through the plain one only under --insecure-plaintext.
//
// A folder of certificates ("TLS dir", made by `kvferry pki init`) holds
//   ca.crt            the deployment CA every process trusts
//   ca.key            the CA's key (only where certificates are issued)
//   NAME.crt NAME.key one process's certificate and key: "directory", each
//                     worker's name, "client" for status and demo
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <caf/actor_cast.hpp>
#include <caf/actor_system.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>
#include <caf/io/middleman_actor.hpp>

namespace CLI {
class App;
}

namespace kvferry::runtime {

/// How a process secures its control plane.
struct tls_options {
  /// The TLS dir; empty: $KVFERRY_TLS_DIR, else ./kvferry-pki.
  std::string dir;
  /// Plain TCP: anyone who reaches a port may talk to it. Logged at warn.
  bool insecure_plaintext = false;
};

/// Adds --tls-dir and --insecure-plaintext to a CLI11 (sub)command.
void add_tls_options(CLI::App& cmd, tls_options& options);

/// $KVFERRY_TLS_DIR, else "./kvferry-pki".
std::string default_tls_dir();

/// The three files one process of a TLS dir uses.
struct tls_identity {
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
};

/// `dir`/ca.crt, `dir`/`name`.crt, `dir`/`name`.key.
tls_identity identity_in(const std::string& dir, const std::string& name);

/// Checks what CAF would otherwise find out by throwing on its I/O thread:
/// each file is readable and parses, the key belongs to the certificate and
/// the CA verifies it (not expired, not another deployment's). The error
/// names the file at fault. Error code: invalid_argument.
caf::error check_identity(const tls_identity& id);

/// True where the actor system runs its control plane over TLS.
bool tls_enabled(const caf::actor_system& sys);

/// The middleman actor for control connections: CAF's OpenSSL one where TLS
/// is on, the plain one otherwise. Its connect_atom takes a deadline through
/// request(); use it from actors instead of blocking calls.
caf::io::middleman_actor control_middleman(caf::actor_system& sys);

/// Publishes `whom` on addr:port (0: any free port) through
/// control_middleman. Returns the port.
caf::expected<std::uint16_t> publish_control(caf::actor_system& sys,
                                             caf::strong_actor_ptr whom,
                                             std::set<std::string> interface,
                                             std::uint16_t port,
                                             const std::string& addr);

template<class Handle>
caf::expected<std::uint16_t> publish_control(const Handle& whom,
                                             std::uint16_t port,
                                             const std::string& addr) {
  auto& sys = whom.home_system();
  return publish_control(sys, caf::actor_cast<caf::strong_actor_ptr>(whom),
                         sys.message_types(whom), port, addr);
}

/// Stops accepting connections on `port` (what publish_control opened).
void unpublish_control(caf::actor_system& sys, const caf::actor_addr& whom,
                       std::uint16_t port);

// ---- certificates for local use (`kvferry pki init`, launch, demo) ---------

/// Makes sure `dir` (created 0700 if absent) holds a deployment CA and a
/// certificate for each of `names`, issuing what is missing: EC P-256 keys
/// (files 0600), certificates valid for `days`. An existing CA is reused
/// (its ca.key must be there to issue new certificates). `issued` gets the
/// names whose certificates were created now. Errors name the file at fault.
caf::error ensure_pki(const std::string& dir,
                      const std::vector<std::string>& names,
                      std::vector<std::string>* issued = nullptr,
                      int days = 365);

/// A name usable as a certificate file name: [A-Za-z0-9._-], not starting
/// with '.', not "ca".
bool valid_identity_name(const std::string& name);

} // namespace kvferry::runtime
