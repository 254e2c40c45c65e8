// Two real transfer actors in one process over kvsock (loopback), each with a
// table of several regions of the *caller's* memory (memory_region::wrap),
// for the region-table tests on host memory (tests/unit) and GPU memory
// (tests/gpu). `Memory` says how the caller allocates, writes and reads its
// memory:
//   static constexpr memory_kind kind; static constexpr int gpu;
//   static void* allocate(std::size_t); static void release(void*);
//   static void write(void*, const std::vector<std::uint8_t>&);
//   static std::vector<std::uint8_t> read(const void*, std::size_t);
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/all.hpp>
#include <doctest/doctest.h>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/plan.hpp"
#include "kvferry/actors/transfer.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/transport/plugin.hpp"

namespace kvferry::test {

/// An extent in (region, offset) terms, as a test writes it.
struct table_move {
  std::size_t src_region;
  std::uint64_t src_offset;
  std::size_t dst_region;
  std::uint64_t dst_offset;
  std::uint64_t length;
  proto::extent virt() const {
    return {table_offset(src_region, src_offset),
            table_offset(dst_region, dst_offset), length};
  }
};

inline std::vector<proto::extent>
virtual_extents(const std::vector<table_move>& moves) {
  std::vector<proto::extent> out;
  for (const auto& m : moves)
    out.push_back(m.virt());
  return out;
}

constexpr std::uint8_t table_sentinel = 0x5a;

template<class Memory>
struct region_table_pair {
  // Sizes that are not page multiples, different per side.
  std::vector<std::uint64_t> src_sizes{24576, 10000, 40960};
  std::vector<std::uint64_t> dst_sizes{32768, 12288, 20000};
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  std::vector<void*> src_memory, dst_memory; // the caller's allocations
  std::vector<std::vector<std::uint8_t>> src_bytes, dst_before;
  transfer_actor sender, receiver;

  region_table_pair() { start(); }
  region_table_pair(std::vector<std::uint64_t> src,
                    std::vector<std::uint64_t> dst)
      : src_sizes(std::move(src)), dst_sizes(std::move(dst)) {
    start();
  }

  void start() {
    auto net = transport::plugin::load("kvsock"); // KVFERRY_PLUGIN_PATH
    for (std::size_t r = 0; r < src_sizes.size(); ++r) {
      std::vector<std::uint8_t> bytes(src_sizes[r]);
      for (std::size_t i = 0; i < bytes.size(); ++i)
        bytes[i] = static_cast<std::uint8_t>(i * 131 + r * 71 + i / 251);
      src_memory.push_back(Memory::allocate(bytes.size()));
      Memory::write(src_memory.back(), bytes);
      src_bytes.push_back(std::move(bytes));
    }
    for (auto size : dst_sizes) {
      std::vector<std::uint8_t> bytes(size, table_sentinel);
      dst_memory.push_back(Memory::allocate(size));
      Memory::write(dst_memory.back(), bytes);
      dst_before.push_back(std::move(bytes));
    }
    sender = spawn_transfer(
        sys, config("prefill-0", net, src_memory, src_sizes, "prefill layer"));
    receiver = spawn_transfer(
        sys, config("decode-0", net, dst_memory, dst_sizes, "decode layer"));
  }

  ~region_table_pair() {
    for (auto* a : {&sender, &receiver}) {
      self->send_exit(*a, caf::exit_reason::user_shutdown);
      self->wait_for(*a); // before the caller frees what they registered
    }
    for (auto* p : src_memory)
      Memory::release(p);
    for (auto* p : dst_memory)
      Memory::release(p);
  }

  static transfer_config config(std::string name,
                                std::shared_ptr<transport::plugin> net,
                                const std::vector<void*>& memory,
                                const std::vector<std::uint64_t>& sizes,
                                const std::string& region_name) {
    transfer_config tc;
    tc.name = std::move(name);
    tc.net = std::move(net);
    for (std::size_t r = 0; r < memory.size(); ++r) {
      auto region =
          memory_region::wrap(memory[r], sizes[r], Memory::kind, Memory::gpu,
                              region_name + " " + std::to_string(r));
      if (r == 0)
        tc.region = std::move(region);
      else
        tc.more_regions.push_back(std::move(region));
    }
    tc.comms_per_peer = 2;
    tc.chunk_bytes = 8 << 10; // several chunks per extent
    tc.open_timeout_ms = 5000;
    return tc; // no host_id: never CUDA IPC
  }

  proto::endpoint receiver_endpoint() {
    proto::endpoint ep;
    self->request(receiver, std::chrono::seconds(10),
                  proto::endpoint_atom::value)
        .receive([&](proto::endpoint& e) { ep = std::move(e); },
                 [&](caf::error& err) { FAIL(render(err)); });
    return ep;
  }

  caf::expected<std::uint64_t> send(const proto::endpoint& peer,
                                    std::uint64_t id,
                                    std::vector<proto::extent> extents) {
    proto::send_order o;
    o.transfer_id = id;
    o.peer = peer;
    o.extents = std::move(extents);
    o.timeout_ms = 10000;
    caf::expected<std::uint64_t> result{make_error(ec::timeout, "no reply")};
    self->request(sender, std::chrono::seconds(30), proto::send_atom::value, o)
        .receive([&](std::uint64_t bytes) { result = bytes; },
                 [&](caf::error& err) { result = std::move(err); });
    return result;
  }

  caf::expected<proto::recv_report> recv(std::uint64_t id) {
    proto::recv_order o;
    o.transfer_id = id;
    o.peer_name = "prefill-0";
    o.timeout_ms = 10000;
    caf::expected<proto::recv_report> result{
        make_error(ec::timeout, "no reply")};
    self->request(receiver, std::chrono::seconds(30), proto::recv_atom::value,
                  o)
        .receive([&](proto::recv_report& r) { result = r; },
                 [&](caf::error& err) { result = std::move(err); });
    return result;
  }

  /// The receiver's regions as they should be after `moves` (the oracle: a
  /// byte-by-byte copy of the sender's bytes over what was there).
  std::vector<std::vector<std::uint8_t>>
  expected_after(const std::vector<table_move>& moves) const {
    auto dst = dst_before;
    for (const auto& m : moves)
      for (std::uint64_t i = 0; i < m.length; ++i)
        dst[m.dst_region][m.dst_offset + i] =
            src_bytes[m.src_region][m.src_offset + i];
    return dst;
  }

  std::vector<std::vector<std::uint8_t>> receiver_bytes() const {
    std::vector<std::vector<std::uint8_t>> out;
    for (std::size_t r = 0; r < dst_memory.size(); ++r)
      out.push_back(Memory::read(dst_memory[r], dst_sizes[r]));
    return out;
  }
};

/// A plan over three regions on each side: extents that end exactly where
/// a region ends next to extents that start the next region (coalescing must
/// not merge them), runs that do coalesce inside one region, out-of-order
/// destinations, and pieces several chunks long.
inline std::vector<table_move> scattered_moves() {
  return {
      {0, 24576 - 4096, 1, 0, 4096}, // the end of source region 0 ...
      {1, 0, 1, 4096, 4096},         // ... then the start of region 1
      {2, 0, 2, 0, 8192},            // two pieces that coalesce
      {2, 8192, 2, 8192, 8192},
      {1, 9000, 0, 32768 - 1000, 1000}, // to the very end of region 0
      {2, 20000, 0, 0, 20000},          // several chunks
      {0, 100, 2, 19000, 1000},
      {1, 4096, 2, 16384, 2000},
  };
}

} // namespace kvferry::test
