// The endpoint's two blobs that travel out of band, little-endian:
//
// metadata (variable size):
//   0  "KVFM"   4  u16 version   6  u64 instance   14 u16 port   16 i32 gpu
//   20 name, address, plugin, host_id: each u16 length + bytes
// descriptor (descriptor::wire_bytes = 48):
//   0  "KVFD"   4  u16 version   6  u16 0   8  u64 owner   16 u64 region
//   24 u64 region_bytes   32 u64 offset   40 u64 size
//
// Parsers name the byte offset and the field at fault.
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "kvferry/endpoint.hpp"

namespace kvferry {
namespace {

constexpr std::uint16_t descriptor_version = 1;

class writer {
public:
  explicit writer(std::vector<std::uint8_t>& out) : out_(out) {}
  template<class T>
  void put(T value) {
    auto v = static_cast<std::uint64_t>(value);
    for (std::size_t i = 0; i < sizeof(T); ++i)
      out_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  void put_text(const std::string& s) {
    put<std::uint16_t>(static_cast<std::uint16_t>(s.size()));
    out_.insert(out_.end(), s.begin(), s.end());
  }
  // Byte by byte, as put() writes: GCC 12 at -O3 misreads a range insert
  // into the still-empty vector as an overflow (-Wstringop-overflow).
  void put_magic(const char* magic) {
    for (int i = 0; i < 4; ++i)
      out_.push_back(static_cast<std::uint8_t>(magic[i]));
  }

private:
  std::vector<std::uint8_t>& out_;
};

class reader {
public:
  reader(const char* what, const std::uint8_t* data, std::size_t size)
      : what_(what), data_(data), size_(size) {}

  template<class T>
  bool get(const char* field, T& value) {
    if (!need(field, sizeof(T)))
      return false;
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i)
      v |= std::uint64_t{data_[at_ + i]} << (8 * i);
    value = static_cast<T>(v);
    at_ += sizeof(T);
    return true;
  }
  bool get_text(const char* field, std::string& value) {
    std::uint16_t n = 0;
    auto start = at_;
    if (!get(field, n))
      return false;
    if (!need(field, n)) {
      error_ = status{ec::invalid_argument,
                      fmt::format("{}: field '{}' at byte {} says {} bytes, "
                                  "but only {} follow (of {} in all)",
                                  what_, field, start, n, size_ - at_, size_)};
      return false;
    }
    value.assign(reinterpret_cast<const char*>(data_ + at_), n);
    at_ += n;
    return true;
  }
  bool magic(const char* expected) {
    if (size_ < 4 || std::memcmp(data_, expected, 4) != 0) {
      error_ = status{ec::invalid_argument,
                      fmt::format("{}: bytes 0-3 are not the magic '{}' (got "
                                  "{} bytes; is this a kvferry {}?)",
                                  what_, expected, size_, what_)};
      return false;
    }
    at_ = 4;
    return true;
  }
  bool version(std::uint16_t known) {
    std::uint16_t v = 0;
    if (!get("version", v))
      return false;
    if (v != known) {
      error_ = status{ec::mismatch,
                      fmt::format("{}: bytes 4-5: version {}, but this build "
                                  "of kvferry reads version {}",
                                  what_, v, known)};
      return false;
    }
    return true;
  }
  bool finished() {
    if (at_ == size_)
      return true;
    error_ = status{ec::invalid_argument,
                    fmt::format("{}: {} unexpected bytes after the last field "
                                "(byte {} of {})",
                                what_, size_ - at_, at_, size_)};
    return false;
  }
  std::size_t at() const { return at_; }
  status error() const { return error_; }

private:
  bool need(const char* field, std::size_t n) {
    if (size_ - at_ >= n)
      return true;
    error_ = status{ec::invalid_argument,
                    fmt::format("{}: truncated at byte {} in field '{}' "
                                "({} bytes needed, {} left)",
                                what_, at_, field, n, size_ - at_)};
    return false;
  }

  const char* what_;
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t at_ = 0;
  status error_;
};

} // namespace

std::vector<std::uint8_t> endpoint_metadata::to_bytes() const {
  std::vector<std::uint8_t> out;
  writer w{out};
  w.put_magic("KVFM");
  w.put<std::uint16_t>(version);
  w.put<std::uint64_t>(instance);
  w.put<std::uint16_t>(port);
  w.put<std::int32_t>(gpu);
  w.put_text(name);
  w.put_text(address);
  w.put_text(plugin);
  w.put_text(host_id);
  return out;
}

result<endpoint_metadata> endpoint_metadata::parse(const std::uint8_t* bytes,
                                                   std::size_t size) {
  endpoint_metadata m;
  reader r{"endpoint metadata", bytes, size};
  bool ok = r.magic("KVFM") && r.version(version) &&
            r.get("instance", m.instance) && r.get("port", m.port) &&
            r.get("gpu", m.gpu) && r.get_text("name", m.name) &&
            r.get_text("address", m.address) &&
            r.get_text("plugin", m.plugin) &&
            r.get_text("host_id", m.host_id) && r.finished();
  if (!ok)
    return r.error();
  if (m.name.empty() || m.address.empty() || m.port == 0)
    return status{ec::invalid_argument,
                  fmt::format("endpoint metadata: name '{}', address '{}' and "
                              "port {}: none may be empty or 0",
                              m.name, m.address, m.port)};
  return m;
}

std::array<std::uint8_t, descriptor::wire_bytes> descriptor::to_bytes() const {
  std::vector<std::uint8_t> out;
  writer w{out};
  w.put_magic("KVFD");
  w.put<std::uint16_t>(descriptor_version);
  w.put<std::uint16_t>(0);
  w.put<std::uint64_t>(owner);
  w.put<std::uint64_t>(region);
  w.put<std::uint64_t>(region_bytes);
  w.put<std::uint64_t>(offset);
  w.put<std::uint64_t>(size);
  std::array<std::uint8_t, wire_bytes> blob{};
  std::memcpy(blob.data(), out.data(), blob.size());
  return blob;
}

result<descriptor> descriptor::parse(const std::uint8_t* bytes,
                                     std::size_t size) {
  if (size != wire_bytes)
    return status{ec::invalid_argument,
                  fmt::format("descriptor: {} bytes, but a descriptor has {}",
                              size, wire_bytes)};
  descriptor d;
  std::uint16_t reserved = 0;
  reader r{"descriptor", bytes, size};
  bool ok = r.magic("KVFD") && r.version(descriptor_version) &&
            r.get("reserved", reserved) && r.get("owner", d.owner) &&
            r.get("region", d.region) &&
            r.get("region_bytes", d.region_bytes) &&
            r.get("offset", d.offset) && r.get("size", d.size) && r.finished();
  if (!ok)
    return r.error();
  if (d.offset > d.region_bytes || d.size > d.region_bytes - d.offset)
    return status{ec::invalid_extent,
                  fmt::format("descriptor: bytes 32-47: range at {} of {} "
                              "bytes leaves its region of {} bytes",
                              d.offset, d.size, d.region_bytes)};
  return d;
}

result<descriptor> descriptor::sub(std::uint64_t at,
                                   std::uint64_t bytes) const {
  if (at > size || bytes > size - at)
    return status{ec::invalid_argument,
                  fmt::format("sub-range at {} of {} bytes leaves the "
                              "descriptor's {} bytes (region {})",
                              at, bytes, size, region)};
  auto d = *this;
  d.offset += at;
  d.size = bytes;
  return d;
}

} // namespace kvferry
