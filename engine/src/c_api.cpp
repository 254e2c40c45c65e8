// kvferry.h over kvferry::endpoint. Every function goes through `guard`:
// nothing thrown escapes (std::bad_alloc and anything else become
// KVF_INTERNAL with the reason), and every failure leaves its reason in the
// thread-local last error.
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "kvferry.h"
#include "kvferry/endpoint.hpp"
#include "kvferry/runtime/version.hpp"

struct kvf_endpoint {
  kvferry::endpoint ep;
  std::mutex mu; // guards `taken`
  std::deque<kvferry::notification> taken;
};

namespace {

using kvferry::ec;
using kvferry::status;

thread_local std::string last_error;

int fail(const status& s) {
  last_error = s.message();
  return static_cast<int>(s.code());
}

int fail(ec code, std::string why) {
  return fail(status{code, std::move(why)});
}

int ok() {
  last_error.clear();
  return KVF_OK;
}

template<class F>
int guard(const char* call, F&& f) noexcept {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return fail(ec::internal, std::string{call} + ": out of memory");
  } catch (const std::exception& e) {
    return fail(ec::internal, std::string{call} + ": " + e.what());
  } catch (...) {
    return fail(ec::internal, std::string{call} + ": unknown exception");
  }
}

// Each pointer argument that must not be NULL, named in the error.
bool missing(const void* p, const char* call, const char* arg, int& code) {
  if (p != nullptr)
    return false;
  code = fail(ec::invalid_argument,
              std::string{call} + ": argument '" + arg + "' is NULL");
  return true;
}

template<class T>
int give(const kvferry::result<T>& r, T* out) {
  if (!r.ok())
    return fail(r.error());
  if (out != nullptr)
    *out = *r;
  return ok();
}

kvferry::items<kvferry::slice> slices(const kvf_slice* local, size_t count,
                                      std::vector<kvferry::slice>& buf) {
  buf.resize(count);
  for (size_t i = 0; i < count; ++i)
    buf[i] = {local[i].region, local[i].offset, local[i].size};
  return buf;
}

// Descriptors in wire form, parsed; the error names which.
int descriptors(const uint8_t* blobs, size_t count,
                std::vector<kvferry::descriptor>& out) {
  out.clear();
  for (size_t i = 0; i < count; ++i) {
    auto d = kvferry::descriptor::parse(blobs + i * KVF_DESCRIPTOR_BYTES,
                                        KVF_DESCRIPTOR_BYTES);
    if (!d.ok())
      return fail(d.error().code(), "descriptor #" + std::to_string(i) + ": " +
                                        d.error().reason());
    out.push_back(*d);
  }
  return KVF_OK;
}

template<class Start>
int one_sided(const char* call, kvf_endpoint* e, const kvf_slice* local,
              const uint8_t* blobs, size_t count, uint64_t* xfer,
              Start&& start) {
  return guard(call, [&] {
    int code = 0;
    if (missing(e, call, "endpoint", code) ||
        missing(xfer, call, "xfer", code) ||
        (count > 0 && (missing(local, call, "local", code) ||
                       missing(blobs, call, "descriptors", code))))
      return code;
    std::vector<kvferry::slice> buf;
    std::vector<kvferry::descriptor> remote;
    if (int bad = descriptors(blobs, count, remote))
      return bad;
    return give<kvferry::xfer_id>(start(slices(local, count, buf), remote),
                                  xfer);
  });
}

template<class Start>
int two_sided(const char* call, kvf_endpoint* e, const kvf_slice* local,
              size_t count, uint64_t* xfer, Start&& start) {
  return guard(call, [&] {
    int code = 0;
    if (missing(e, call, "endpoint", code) ||
        missing(xfer, call, "xfer", code) ||
        (count > 0 && missing(local, call, "local", code)))
      return code;
    std::vector<kvferry::slice> buf;
    return give<kvferry::xfer_id>(start(slices(local, count, buf)), xfer);
  });
}

} // namespace

extern "C" {

const char* kvf_last_error(void) {
  return last_error.c_str();
}

const char* kvf_status_name(int code) {
  if (code == KVF_PENDING)
    return "pending";
  if (code < 0 || code > static_cast<int>(ec::internal))
    return "unknown";
  return kvferry::to_string(static_cast<ec>(code));
}

const char* kvf_version(void) {
  return kvferry::version;
}

void kvf_options_init(kvf_options* options) {
  if (options == nullptr)
    return;
  std::memset(options, 0, sizeof *options);
  options->gpu = -1;
}

int kvf_endpoint_create(const kvf_options* options, kvf_endpoint** out) {
  return guard("kvf_endpoint_create", [&] {
    int code = 0;
    if (missing(out, "kvf_endpoint_create", "out", code))
      return code;
    *out = nullptr;
    kvferry::endpoint_options o;
    if (options != nullptr) {
      o.gpu = options->gpu;
      if (options->plugin != nullptr)
        o.plugin = options->plugin;
      if (options->address != nullptr && options->address[0] != '\0')
        o.address = options->address;
      o.port = options->port;
      if (options->name != nullptr)
        o.name = options->name;
      if (options->transfer_timeout_ms != 0)
        o.transfer_timeout =
            std::chrono::milliseconds(options->transfer_timeout_ms);
      if (options->connect_timeout_ms != 0)
        o.connect_timeout =
            std::chrono::milliseconds(options->connect_timeout_ms);
      if (options->tls_dir != nullptr)
        o.tls_dir = options->tls_dir;
      if (options->tls_name != nullptr)
        o.tls_name = options->tls_name;
    }
    auto ep = kvferry::endpoint::create(o);
    if (!ep.ok())
      return fail(ep.error());
    *out = new kvf_endpoint{std::move(ep).value(), {}, {}};
    return ok();
  });
}

void kvf_endpoint_destroy(kvf_endpoint* endpoint) {
  guard("kvf_endpoint_destroy", [&] {
    delete endpoint;
    return ok();
  });
}

int kvf_metadata(kvf_endpoint* e, uint8_t* buf, size_t capacity, size_t* size) {
  return guard("kvf_metadata", [&] {
    int code = 0;
    if (missing(e, "kvf_metadata", "endpoint", code) ||
        missing(size, "kvf_metadata", "size", code))
      return code;
    auto blob = e->ep.metadata();
    *size = blob.size();
    if (buf == nullptr || capacity < blob.size())
      return fail(ec::invalid_argument,
                  "kvf_metadata: the blob has " + std::to_string(blob.size()) +
                      " bytes, the buffer " + std::to_string(capacity));
    std::memcpy(buf, blob.data(), blob.size());
    return ok();
  });
}

int kvf_connect(kvf_endpoint* e, const uint8_t* metadata, size_t size,
                uint64_t* conn) {
  return guard("kvf_connect", [&] {
    int code = 0;
    if (missing(e, "kvf_connect", "endpoint", code) ||
        missing(metadata, "kvf_connect", "metadata", code))
      return code;
    return give<kvferry::conn_id>(e->ep.connect({metadata, size}), conn);
  });
}

int kvf_accept(kvf_endpoint* e, uint32_t timeout_ms, uint64_t* conn) {
  return guard("kvf_accept", [&] {
    int code = 0;
    if (missing(e, "kvf_accept", "endpoint", code))
      return code;
    return give<kvferry::conn_id>(
        e->ep.accept(std::chrono::milliseconds(timeout_ms)), conn);
  });
}

int kvf_reg(kvf_endpoint* e, void* ptr, size_t size, int gpu,
            uint64_t* region) {
  return guard("kvf_reg", [&] {
    int code = 0;
    if (missing(e, "kvf_reg", "endpoint", code))
      return code;
    return give<kvferry::region_id>(gpu == KVF_DEVICE_DEFAULT
                                        ? e->ep.reg(ptr, size)
                                        : e->ep.reg(ptr, size, gpu),
                                    region);
  });
}

int kvf_dereg(kvf_endpoint* e, uint64_t region) {
  return guard("kvf_dereg", [&] {
    int code = 0;
    if (missing(e, "kvf_dereg", "endpoint", code))
      return code;
    auto s = e->ep.dereg(region);
    return s.ok() ? ok() : fail(s);
  });
}

int kvf_advertise(kvf_endpoint* e, uint64_t region, uint64_t offset,
                  uint64_t size, uint8_t descriptor[KVF_DESCRIPTOR_BYTES]) {
  return guard("kvf_advertise", [&] {
    int code = 0;
    if (missing(e, "kvf_advertise", "endpoint", code) ||
        missing(descriptor, "kvf_advertise", "descriptor", code))
      return code;
    auto d = e->ep.advertise(region, offset, size);
    if (!d.ok())
      return fail(d.error());
    auto blob = d->to_bytes();
    std::memcpy(descriptor, blob.data(), blob.size());
    return ok();
  });
}

int kvf_descriptor_sub(const uint8_t descriptor[KVF_DESCRIPTOR_BYTES],
                       uint64_t offset, uint64_t size,
                       uint8_t out[KVF_DESCRIPTOR_BYTES]) {
  return guard("kvf_descriptor_sub", [&] {
    int code = 0;
    if (missing(descriptor, "kvf_descriptor_sub", "descriptor", code) ||
        missing(out, "kvf_descriptor_sub", "out", code))
      return code;
    auto d = kvferry::descriptor::parse(descriptor, KVF_DESCRIPTOR_BYTES);
    if (!d.ok())
      return fail(d.error());
    auto s = d->sub(offset, size);
    if (!s.ok())
      return fail(s.error());
    auto blob = s->to_bytes();
    std::memcpy(out, blob.data(), blob.size());
    return ok();
  });
}

int kvf_write(kvf_endpoint* e, uint64_t conn, const kvf_slice* local,
              const uint8_t* descriptors, size_t count, uint64_t* xfer) {
  return one_sided("kvf_write", e, local, descriptors, count, xfer,
                   [&](auto l, auto& r) { return e->ep.write(conn, l, r); });
}

int kvf_read(kvf_endpoint* e, uint64_t conn, const kvf_slice* local,
             const uint8_t* descriptors, size_t count, uint64_t* xfer) {
  return one_sided("kvf_read", e, local, descriptors, count, xfer,
                   [&](auto l, auto& r) { return e->ep.read(conn, l, r); });
}

int kvf_send(kvf_endpoint* e, uint64_t conn, const kvf_slice* local,
             size_t count, uint64_t* xfer) {
  return two_sided("kvf_send", e, local, count, xfer,
                   [&](auto l) { return e->ep.send(conn, l); });
}

int kvf_recv(kvf_endpoint* e, uint64_t conn, const kvf_slice* local,
             size_t count, uint64_t* xfer) {
  return two_sided("kvf_recv", e, local, count, xfer,
                   [&](auto l) { return e->ep.recv(conn, l); });
}

int kvf_poll(kvf_endpoint* e, uint64_t xfer, uint64_t* bytes) {
  return guard("kvf_poll", [&] {
    int code = 0;
    if (missing(e, "kvf_poll", "endpoint", code))
      return code;
    auto r = e->ep.poll(xfer);
    if (!r.ok())
      return fail(r.error());
    if (!r->has_value()) {
      last_error.clear();
      return static_cast<int>(KVF_PENDING);
    }
    if (bytes != nullptr)
      *bytes = **r;
    return ok();
  });
}

int kvf_stats_get(kvf_endpoint* e, kvf_stats* out) {
  return guard("kvf_stats_get", [&] {
    int code = 0;
    if (missing(e, "kvf_stats_get", "endpoint", code) ||
        missing(out, "kvf_stats_get", "out", code))
      return code;
    auto s = e->ep.stats();
    out->plugin_transfers = s.plugin_transfers;
    out->plugin_bytes = s.plugin_bytes;
    out->ipc_transfers = s.ipc_transfers;
    out->ipc_bytes = s.ipc_bytes;
    return ok();
  });
}

int kvf_wait(kvf_endpoint* e, uint64_t xfer, uint32_t timeout_ms,
             uint64_t* bytes) {
  return guard("kvf_wait", [&] {
    int code = 0;
    if (missing(e, "kvf_wait", "endpoint", code))
      return code;
    return give<std::uint64_t>(
        e->ep.wait(xfer, std::chrono::milliseconds(timeout_ms)), bytes);
  });
}

int kvf_notify(kvf_endpoint* e, uint64_t conn, const uint8_t* bytes,
               size_t size) {
  return guard("kvf_notify", [&] {
    int code = 0;
    if (missing(e, "kvf_notify", "endpoint", code) ||
        (size > 0 && missing(bytes, "kvf_notify", "bytes", code)))
      return code;
    auto s = e->ep.notify(conn, {bytes, size});
    return s.ok() ? ok() : fail(s);
  });
}

int kvf_take_notification(kvf_endpoint* e, uint64_t* conn, uint8_t* buf,
                          size_t capacity, size_t* size) {
  return guard("kvf_take_notification", [&] {
    int code = 0;
    if (missing(e, "kvf_take_notification", "endpoint", code) ||
        missing(size, "kvf_take_notification", "size", code))
      return code;
    std::lock_guard<std::mutex> lock(e->mu);
    for (auto& n : e->ep.take_notifications())
      e->taken.push_back(std::move(n));
    if (e->taken.empty())
      return fail(ec::not_found, "kvf_take_notification: none received");
    auto& n = e->taken.front();
    *size = n.bytes.size();
    if (capacity < n.bytes.size() || (buf == nullptr && !n.bytes.empty()))
      return fail(ec::invalid_argument,
                  "kvf_take_notification: the notification has " +
                      std::to_string(n.bytes.size()) + " bytes, the buffer " +
                      std::to_string(capacity));
    if (!n.bytes.empty())
      std::memcpy(buf, n.bytes.data(), n.bytes.size());
    if (conn != nullptr)
      *conn = n.conn;
    e->taken.pop_front();
    return ok();
  });
}

} // extern "C"
