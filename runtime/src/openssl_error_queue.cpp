// Works around a CAF 0.17.6 bug that lets one stranger break every other TLS
// connection of a process (found by test_control_tls; docs/security.md).
//
// OpenSSL keeps an error queue per thread, and SSL_get_error() reports
// SSL_ERROR_SSL whenever that queue is not empty, so OpenSSL asks callers to
// empty it before each SSL_read/SSL_write/SSL_accept/SSL_connect. CAF's
// OpenSSL module does not: it only drains the queue inside a log statement
// that Debian's build compiles out. After one peer fails its handshake (junk
// bytes, a wrong certificate) the error stays queued on the I/O thread, and
// the next "would block" of any healthy connection on that thread is taken
// for a failure: the connection is dropped. Measured: a client doing
// lookups stalled for good after one junk connection to the directory.
//
// These definitions interpose on libssl's (the dynamic linker resolves
// libcaf_openssl's calls to the executable's symbols first): each empties
// the queue, then calls the real function.
#include <dlfcn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

namespace {

template<class F>
F real_function(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

} // namespace

extern "C" {

int SSL_read(SSL* ssl, void* buf, int num) {
  static auto real = real_function<int (*)(SSL*, void*, int)>("SSL_read");
  ERR_clear_error();
  return real(ssl, buf, num);
}

int SSL_write(SSL* ssl, const void* buf, int num) {
  static auto real =
      real_function<int (*)(SSL*, const void*, int)>("SSL_write");
  ERR_clear_error();
  return real(ssl, buf, num);
}

int SSL_accept(SSL* ssl) {
  static auto real = real_function<int (*)(SSL*)>("SSL_accept");
  ERR_clear_error();
  return real(ssl);
}

int SSL_connect(SSL* ssl) {
  static auto real = real_function<int (*)(SSL*)>("SSL_connect");
  ERR_clear_error();
  return real(ssl);
}

} // extern "C"

namespace kvferry::runtime::detail {

// Called by system_config::secure so that the linker keeps this object (it
// comes from a static library) in every program that turns TLS on.
void link_openssl_error_queue_fix() {
}

} // namespace kvferry::runtime::detail
