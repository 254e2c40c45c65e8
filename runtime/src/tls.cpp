#include "kvferry/runtime/tls.hpp"

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <memory>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/scoped_actor.hpp>
#include <fmt/format.h>

#include "kvferry/runtime/error.hpp"

namespace kvferry::runtime {

namespace {

namespace fs = std::filesystem;

// Owning handles for the OpenSSL objects used here.
struct x509_free {
  void operator()(X509* x) const { X509_free(x); }
};
struct pkey_free {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct store_free {
  void operator()(X509_STORE* s) const { X509_STORE_free(s); }
};
struct store_ctx_free {
  void operator()(X509_STORE_CTX* c) const { X509_STORE_CTX_free(c); }
};
struct file_close {
  void operator()(FILE* f) const { std::fclose(f); }
};
using x509_ptr = std::unique_ptr<X509, x509_free>;
using pkey_ptr = std::unique_ptr<EVP_PKEY, pkey_free>;
using file_ptr = std::unique_ptr<FILE, file_close>;

caf::error tls_error(std::string what) {
  return make_error(ec::invalid_argument, std::move(what));
}

// The oldest OpenSSL error queued, as text; clears the queue.
std::string openssl_reason() {
  auto code = ERR_get_error();
  ERR_clear_error();
  if (code == 0)
    return "no details";
  char buf[256];
  ERR_error_string_n(code, buf, sizeof(buf));
  return buf;
}

caf::expected<file_ptr> open_for_reading(const std::string& path,
                                         const char* what) {
  file_ptr f{std::fopen(path.c_str(), "r")};
  if (!f)
    return tls_error(fmt::format("cannot read the {} {}: {}", what, path,
                                 std::strerror(errno)));
  return f;
}

caf::expected<x509_ptr> read_cert(const std::string& path, const char* what) {
  auto f = open_for_reading(path, what);
  if (!f)
    return f.error();
  x509_ptr cert{PEM_read_X509(f->get(), nullptr, nullptr, nullptr)};
  if (!cert)
    return tls_error(fmt::format("the {} {} is not a PEM certificate ({})",
                                 what, path, openssl_reason()));
  return cert;
}

caf::expected<pkey_ptr> read_key(const std::string& path) {
  auto f = open_for_reading(path, "private key");
  if (!f)
    return f.error();
  pkey_ptr key{PEM_read_PrivateKey(f->get(), nullptr, nullptr, nullptr)};
  if (!key)
    return tls_error(fmt::format("the private key {} is not an unencrypted "
                                 "PEM private key ({})",
                                 path, openssl_reason()));
  return key;
}

// Verifies `cert` against the single trusted `ca` (chain, validity dates).
caf::error verify_with(X509* ca, X509* cert, const tls_identity& id) {
  std::unique_ptr<X509_STORE, store_free> store{X509_STORE_new()};
  std::unique_ptr<X509_STORE_CTX, store_ctx_free> ctx{X509_STORE_CTX_new()};
  if (!store || !ctx || X509_STORE_add_cert(store.get(), ca) != 1 ||
      X509_STORE_CTX_init(ctx.get(), store.get(), cert, nullptr) != 1)
    return tls_error("cannot set up certificate verification: " +
                     openssl_reason());
  if (X509_verify_cert(ctx.get()) == 1)
    return caf::none;
  auto code = X509_STORE_CTX_get_error(ctx.get());
  return tls_error(fmt::format(
      "the certificate {} does not verify against the CA {}: {}", id.cert_file,
      id.ca_file, X509_verify_cert_error_string(code)));
}

} // namespace

void add_tls_options(CLI::App& cmd, tls_options& options) {
  cmd.add_option("--tls-dir", options.dir,
                 "folder with ca.crt and this process's NAME.crt/NAME.key "
                 "(default: $KVFERRY_TLS_DIR, else ./kvferry-pki; made by "
                 "`kvferry pki init`)");
  cmd.add_flag("--insecure-plaintext", options.insecure_plaintext,
               "control plane over plain TCP: anyone who reaches a port can "
               "drive the deployment (docs/security.md)");
}

std::string default_tls_dir() {
  if (const char* env = std::getenv("KVFERRY_TLS_DIR"); env && *env)
    return env;
  return "./kvferry-pki";
}

tls_identity identity_in(const std::string& dir, const std::string& name) {
  auto base = fs::path{dir};
  return {(base / "ca.crt").string(), (base / (name + ".crt")).string(),
          (base / (name + ".key")).string()};
}

caf::error check_identity(const tls_identity& id) {
  auto ca = read_cert(id.ca_file, "CA certificate");
  if (!ca)
    return ca.error();
  auto cert = read_cert(id.cert_file, "certificate");
  if (!cert)
    return cert.error();
  auto key = read_key(id.key_file);
  if (!key)
    return key.error();
  if (X509_check_private_key(cert->get(), key->get()) != 1) {
    ERR_clear_error();
    return tls_error(fmt::format("the private key {} does not belong to the "
                                 "certificate {}",
                                 id.key_file, id.cert_file));
  }
  return verify_with(ca->get(), cert->get(), id);
}

bool tls_enabled(const caf::actor_system& sys) {
  return sys.has_openssl_manager();
}

caf::io::middleman_actor control_middleman(caf::actor_system& sys) {
  return tls_enabled(sys) ? sys.openssl_manager().actor_handle()
                          : sys.middleman().actor_handle();
}

caf::expected<std::uint16_t> publish_control(caf::actor_system& sys,
                                             caf::strong_actor_ptr whom,
                                             std::set<std::string> interface,
                                             std::uint16_t port,
                                             const std::string& addr) {
  caf::scoped_actor self{sys};
  caf::expected<std::uint16_t> result{caf::sec::request_timeout};
  // Binding a socket is local and quick: 10 s only guards against a stuck
  // middleman.
  self->request(control_middleman(sys), std::chrono::seconds(10),
                caf::publish_atom::value, port, std::move(whom),
                std::move(interface), addr, true)
      .receive([&](std::uint16_t bound) { result = bound; },
               [&](caf::error& err) { result = std::move(err); });
  return result;
}

void unpublish_control(caf::actor_system& sys, const caf::actor_addr& whom,
                       std::uint16_t port) {
  caf::anon_send(control_middleman(sys), caf::unpublish_atom::value, whom,
                 port);
}

// ---- certificates

namespace {

struct x509_ext_free {
  void operator()(X509_EXTENSION* e) const { X509_EXTENSION_free(e); }
};

pkey_ptr new_p256_key() {
  return pkey_ptr{EVP_EC_gen("P-256")};
}

bool add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  std::unique_ptr<X509_EXTENSION, x509_ext_free> ext{
      X509V3_EXT_conf_nid(nullptr, &ctx, nid, value)};
  return ext && X509_add_ext(cert, ext.get(), -1) == 1;
}

// A certificate for `subject`'s key, signed by the issuer (itself for the
// CA: issuer == nullptr).
x509_ptr make_cert(const std::string& common_name, EVP_PKEY* subject_key,
                   X509* issuer, EVP_PKEY* issuer_key, int days) {
  x509_ptr cert{X509_new()};
  if (!cert)
    return nullptr;
  X509* c = cert.get();
  bool is_ca = issuer == nullptr;
  // A random 127-bit serial: unique without keeping a serial file.
  std::unique_ptr<BIGNUM, decltype(&BN_free)> serial{BN_new(), BN_free};
  bool ok =
      serial &&
      BN_rand(serial.get(), 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1 &&
      BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(c)) &&
      X509_set_version(c, 2) == 1 &&
      // An hour's slack for clocks of other hosts running behind.
      X509_gmtime_adj(X509_getm_notBefore(c), -3600) &&
      X509_gmtime_adj(X509_getm_notAfter(c), 86400L * days) &&
      X509_set_pubkey(c, subject_key) == 1;
  X509_NAME* name = X509_get_subject_name(c);
  ok = ok &&
       X509_NAME_add_entry_by_txt(
           name, "O", MBSTRING_ASC,
           reinterpret_cast<const unsigned char*>("kvferry deployment"), -1, -1,
           0) == 1 &&
       X509_NAME_add_entry_by_txt(
           name, "CN", MBSTRING_ASC,
           reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
           0) == 1;
  X509* signer = is_ca ? c : issuer;
  ok = ok && X509_set_issuer_name(c, X509_get_subject_name(signer)) == 1;
  if (is_ca)
    ok =
        ok &&
        add_extension(c, signer, NID_basic_constraints, "critical,CA:TRUE") &&
        add_extension(c, signer, NID_key_usage, "critical,keyCertSign,cRLSign");
  else
    ok = ok &&
         add_extension(c, signer, NID_basic_constraints, "critical,CA:FALSE") &&
         add_extension(c, signer, NID_key_usage,
                       "critical,digitalSignature,keyAgreement") &&
         add_extension(c, signer, NID_ext_key_usage, "serverAuth,clientAuth");
  ok = ok && add_extension(c, signer, NID_subject_key_identifier, "hash") &&
       X509_sign(c, is_ca ? subject_key : issuer_key, EVP_sha256()) > 0;
  return ok ? std::move(cert) : nullptr;
}

// Writes through `write` to a new file of mode `mode` (never replacing one).
template<class Write>
caf::error write_new_file(const fs::path& path, mode_t mode, Write write) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0)
    return tls_error(fmt::format("cannot create {}: {}", path.string(),
                                 std::strerror(errno)));
  file_ptr f{::fdopen(fd, "w")};
  if (!f) {
    ::close(fd);
    return tls_error(fmt::format("cannot write {}", path.string()));
  }
  if (!write(f.get()) || std::fflush(f.get()) != 0)
    return tls_error(
        fmt::format("cannot write {}: {}", path.string(), openssl_reason()));
  return caf::none;
}

caf::error write_pair(const fs::path& dir, const std::string& name, X509* cert,
                      EVP_PKEY* key) {
  if (auto err = write_new_file(dir / (name + ".key"), 0600, [&](FILE* f) {
        return PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr,
                                    nullptr) == 1;
      }))
    return err;
  return write_new_file(dir / (name + ".crt"), 0644,
                        [&](FILE* f) { return PEM_write_X509(f, cert) == 1; });
}

caf::error make_dir(const fs::path& dir) {
  if (fs::is_directory(dir))
    return caf::none;
  std::error_code ec;
  fs::create_directories(
      dir.parent_path().empty() ? fs::path{"."} : dir.parent_path(), ec);
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return tls_error(fmt::format("cannot create the TLS dir {}: {}",
                                 dir.string(), std::strerror(errno)));
  return caf::none;
}

// An exclusive flock on DIR/.lock, released when the returned fd closes.
struct fd_close {
  void operator()(int* fd) const {
    ::close(*fd);
    delete fd;
  }
};
using fd_ptr = std::unique_ptr<int, fd_close>;

caf::expected<fd_ptr> lock_dir(const fs::path& dir) {
  auto path = dir / ".lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0 || ::flock(fd, LOCK_EX) != 0) {
    auto why = std::strerror(errno);
    if (fd >= 0)
      ::close(fd);
    return tls_error(fmt::format("cannot lock {}: {}", path.string(), why));
  }
  return fd_ptr{new int{fd}};
}

} // namespace

bool valid_identity_name(const std::string& name) {
  if (name.empty() || name.front() == '.' || name == "ca" || name.size() > 200)
    return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
          c == '-'))
      return false;
  return true;
}

caf::error ensure_pki(const std::string& dir_name,
                      const std::vector<std::string>& names,
                      std::vector<std::string>* issued, int days) {
  fs::path dir{dir_name};
  for (auto& name : names)
    if (!valid_identity_name(name))
      return tls_error(fmt::format(
          "'{}' cannot name a certificate (letters, digits, '.', '_', '-')",
          name));
  if (auto err = make_dir(dir))
    return err;
  // Two launches on one host starting at once: one issues, the other then
  // finds everything there.
  auto lock = lock_dir(dir);
  if (!lock)
    return lock.error();
  auto ca_crt = (dir / "ca.crt").string();
  auto ca_key_file = (dir / "ca.key").string();
  x509_ptr ca;
  pkey_ptr ca_key;
  if (!fs::exists(ca_crt)) {
    ca_key = new_p256_key();
    ca = ca_key ? make_cert("kvferry deployment CA", ca_key.get(), nullptr,
                            nullptr, days * 10)
                : nullptr;
    if (!ca)
      return tls_error("cannot create a CA certificate: " + openssl_reason());
    if (auto err = write_pair(dir, "ca", ca.get(), ca_key.get()))
      return err;
  }
  for (auto& name : names) {
    if (fs::exists(dir / (name + ".crt")))
      continue;
    if (!ca) {
      auto read_ca = read_cert(ca_crt, "CA certificate");
      if (!read_ca)
        return read_ca.error();
      auto read_ca_key = read_key(ca_key_file);
      if (!read_ca_key)
        return read_ca_key.error();
      ca = std::move(*read_ca);
      ca_key = std::move(*read_ca_key);
    }
    auto key = new_p256_key();
    auto cert = key ? make_cert(name, key.get(), ca.get(), ca_key.get(), days)
                    : nullptr;
    if (!cert)
      return tls_error(fmt::format("cannot issue a certificate for '{}': {}",
                                   name, openssl_reason()));
    // A stale key of a removed certificate would block O_EXCL.
    std::error_code ignored;
    fs::remove(dir / (name + ".key"), ignored);
    if (auto err = write_pair(dir, name, cert.get(), key.get()))
      return err;
    if (issued)
      issued->push_back(name);
  }
  return caf::none;
}

} // namespace kvferry::runtime
