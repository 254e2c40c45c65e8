// CUDA IPC over region tables, the CPU side (issue #15): a plan's virtual
// offsets turned into offsets from one origin per side (one kernel launch
// over any number of regions), the text form of an exported table (and the
// one-region form it keeps), the data path with tables, and a transfer
// actor's refusals of a one-sided read and of a CUDA event sent from another
// process. The GPU side: tests/gpu/ipc_table_gpu_test.cpp.
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <doctest/doctest.h>

#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/ipc_table.hpp"
#include "kvferry/actors/plan.hpp"
#include "kvferry/actors/transfer.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/system_config.hpp"
#include "kvferry/transport/gpu_memory.hpp"
#include "why.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using transport::ipc_region;

namespace {

// Three regions in an order unlike their addresses (the origin is the
// lowest base, region 2's here).
address_table three_regions() {
  return {{0x7f0000100000, 0x7f0000900000, 0x7f0000000000},
          {0x10000, 0x4000, 0x8000}};
}

std::string hex_digits(char digit) {
  return std::string(128, digit);
}

ipc_region whole(int device, std::uint64_t bytes, char digit) {
  ipc_region r;
  r.handle = transport::ipc_handle::from_hex(std::to_string(device) + ":" +
                                             std::to_string(bytes) + ":" +
                                             hex_digits(digit));
  r.bytes = bytes;
  return r;
}

} // namespace

TEST_CASE("a plan over region tables becomes offsets from one origin per "
          "side") {
  const auto src = three_regions();
  const address_table dst{{0x7e0000000000, 0x7e0000200000}, {0x20000, 0x1000}};
  CHECK(src.origin() == 0x7f0000000000);
  CHECK(src.span() == 0x900000 + 0x4000);
  CHECK(dst.span() == 0x200000 + 0x1000);
  const std::vector<extent> virt{
      {table_offset(0, 0x100), table_offset(1, 0x800), 0x200},
      {table_offset(2, 0x8000 - 16), table_offset(0, 0), 16}, // a region's end
      {table_offset(1, 0), table_offset(0, 0x1f000), 0x1000},
  };
  const auto plan = to_address_plan(virt, src, dst);
  CHECK(plan.src_origin == 0x7f0000000000);
  CHECK(plan.dst_origin == 0x7e0000000000);
  CHECK(plan.src_span == src.span());
  CHECK(plan.dst_span == dst.span());
  REQUIRE(plan.extents.size() == 3);
  // origin + offset is the region's base + the offset in the region.
  CHECK(plan.src_origin + plan.extents[0].src_offset == 0x7f0000100100);
  CHECK(plan.dst_origin + plan.extents[0].dst_offset == 0x7e0000200800);
  CHECK(plan.src_origin + plan.extents[1].src_offset ==
        0x7f0000000000 + 0x8000 - 16);
  CHECK(plan.dst_origin + plan.extents[1].dst_offset == 0x7e0000000000);
  CHECK(plan.src_origin + plan.extents[2].src_offset == 0x7f0000900000);
  CHECK(plan.dst_origin + plan.extents[2].dst_offset == 0x7e000001f000);
  for (std::size_t i = 0; i < virt.size(); ++i)
    CHECK(plan.extents[i].length == virt[i].length);
  // Every translated extent lies inside the span the engine checks.
  for (const auto& e : plan.extents) {
    CHECK(e.src_offset + e.length <= plan.src_span);
    CHECK(e.dst_offset + e.length <= plan.dst_span);
  }
}

TEST_CASE("layout_of hands the copy engine's one packing pass the same "
          "offsets to_address_plan computes") {
  const auto src = three_regions();
  const address_table dst{{0x7e0000000000, 0x7e0000200000}, {0x20000, 0x1000}};
  std::vector<std::uint64_t> src_offsets{7}, dst_offsets; // reused, resized
  const auto s = layout_of(src, src_offsets);
  const auto d = layout_of(dst, dst_offsets);
  REQUIRE(s.count == 3);
  CHECK(src_offsets ==
        std::vector<std::uint64_t>{0x100000, 0x900000, 0}); // from the origin
  CHECK(s.span() == src.span());
  CHECK(d.span() == dst.span());
  CHECK(s.shift == region_shift);
  const std::vector<extent> virt{
      {table_offset(0, 0x100), table_offset(1, 0x800), 0x200},
      {table_offset(2, 0x8000 - 16), table_offset(0, 0), 16},
      {table_offset(1, 0), table_offset(0, 0x1e000), 0x1000},
      {table_offset(1, 0x1000), table_offset(0, 0x1f000), 0x100},
  };
  const auto plan = to_address_plan(virt, src, dst);
  std::vector<std::uint64_t> fused(64), reference(64);
  const auto a = transport::pack_plan(virt, 8192, s, d, fused.data());
  const auto b = transport::pack_plan(plan.extents, 8192, plan.src_span,
                                      plan.dst_span, reference.data());
  CHECK(a.extents == 3); // the last two continue each other
  CHECK(a.extents == b.extents);
  CHECK(a.items == b.items);
  CHECK(std::memcmp(fused.data(), reference.data(), a.bytes()) == 0);
  // A fault is named as to_address_plan names it.
  const std::vector<extent> bad{{table_offset(1, 0x4000 - 16), 0, 32}};
  std::string message;
  try {
    transport::pack_plan(bad, 8192, s, d, fused.data());
  } catch (const std::invalid_argument& e) {
    message = e.what();
  }
  CHECK_MESSAGE(message.find("extent #0") != std::string::npos, message);
  CHECK_MESSAGE(message.find("source region 1 of 16384 bytes") !=
                    std::string::npos,
                message);
}

TEST_CASE("a one-region table keeps its offsets") {
  const address_table src{{0x1000}, {0x100000}}, dst{{0x900000}, {0x80000}};
  const std::vector<extent> virt{{0x400, 0x7f000, 0x1000}, {0, 0, 64}};
  const auto plan = to_address_plan(virt, src, dst);
  CHECK(plan.src_origin == 0x1000);
  CHECK(plan.dst_origin == 0x900000);
  CHECK(plan.extents[0].src_offset == 0x400);
  CHECK(plan.extents[0].dst_offset == 0x7f000);
  CHECK(plan.extents[1].length == 64);
}

TEST_CASE("an extent leaving its region, or naming a region the table has "
          "not, is refused by name") {
  const auto src = three_regions();
  const address_table dst{{0x7e0000000000}, {0x20000}};
  auto message = [&](const std::vector<extent>& virt) -> std::string {
    try {
      to_address_plan(virt, src, dst);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "accepted";
  };
  // Region 1 has 0x4000 bytes: 16 bytes too many.
  auto m = message(
      {{table_offset(0, 0), 0, 16}, {table_offset(1, 0x4000 - 16), 0x100, 32}});
  CHECK_MESSAGE(m.find("extent #1") != std::string::npos, m);
  CHECK_MESSAGE(m.find("source region 1 of 16384 bytes") != std::string::npos,
                m);
  m = message({{table_offset(3, 0), 0, 16}});
  CHECK_MESSAGE(m.find("names region 3") != std::string::npos, m);
  m = message({{0, 0x20000 - 8, 16}}); // the destination's one region
  CHECK_MESSAGE(m.find("extent #0") != std::string::npos, m);
  CHECK_THROWS_AS(to_address_plan({}, address_table{{1, 2}, {3}}, dst),
                  std::invalid_argument);
}

TEST_CASE("the text of an exported table: one whole allocation is the old "
          "single handle, regions inside one carry offset and size") {
  const auto a = whole(0, 1 << 20, 'a');
  CHECK(transport::ipc_table_to_text({a}) == a.handle.to_hex());
  auto back = transport::ipc_table_from_text(a.handle.to_hex());
  REQUIRE(back.size() == 1);
  CHECK(back[0].offset == 0);
  CHECK(back[0].bytes == a.handle.region_bytes);

  // Two regions inside one allocation (sharing its handle) and a third on
  // its own.
  auto inside1 = a, inside2 = a;
  inside1.offset = 4096;
  inside1.bytes = 8192;
  inside2.offset = 65536;
  inside2.bytes = (1 << 20) - 65536; // to the allocation's very end
  const auto b = whole(1, 12288, 'b');
  const auto text = transport::ipc_table_to_text({inside1, inside2, b});
  CHECK(text == a.handle.to_hex() + "@4096+8192," + a.handle.to_hex() +
                    "@65536+983040," + b.handle.to_hex());
  back = transport::ipc_table_from_text(text);
  REQUIRE(back.size() == 3);
  CHECK(back[0].offset == 4096);
  CHECK(back[0].bytes == 8192);
  CHECK(back[1].offset == 65536);
  CHECK(back[1].bytes == 983040);
  CHECK(back[0].handle.bytes == back[1].handle.bytes);
  CHECK(back[2].handle.device == 1);
  CHECK(back[2].bytes == 12288);
}

TEST_CASE("malformed table text is refused naming the entry") {
  const auto h = whole(0, 65536, 'c').handle.to_hex();
  auto message = [](const std::string& text) -> std::string {
    try {
      transport::ipc_table_from_text(text);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "accepted";
  };
  auto m = message(h + "," + h + "@4096+65536"); // leaves its allocation
  CHECK_MESSAGE(m.find("entry 1") != std::string::npos, m);
  CHECK_MESSAGE(m.find("leaves its allocation of 65536") != std::string::npos,
                m);
  m = message(h + "@x+16");
  CHECK_MESSAGE(m.find("offset 'x' is not a number") != std::string::npos, m);
  m = message(h + "@16");
  CHECK_MESSAGE(m.find("@<offset>+<bytes>") != std::string::npos, m);
  m = message(h + ",");
  CHECK_MESSAGE(m.find("entry 1") != std::string::npos, m);
  m = message(h + "@-1+16");
  CHECK_MESSAGE(m.find("not a number") != std::string::npos, m);
}

TEST_CASE("host memory is never exported, and says why") {
  std::vector<std::byte> host(4096);
  transport::memory_view view{memory_kind::host, -1, host.data(), host.size(),
                              false};
  try {
    transport::export_ipc_region(view);
    FAIL("host memory was exported");
  } catch (const transport::gpu_error& e) {
    CHECK_MESSAGE(std::string{e.what()}.find("host memory") !=
                      std::string::npos,
                  e.what());
  }
}

TEST_CASE("data path: a peer's table of several regions takes CUDA IPC like "
          "one region") {
  proto::endpoint peer;
  peer.name = "decode-0";
  peer.host_id = "hostA/boot1";
  peer.gpu = 0;
  peer.region_bytes = 1 << 20;
  peer.more_region_sizes = {8192, 1 << 20};
  const auto a = whole(0, 1 << 20, 'a');
  auto inside = a;
  inside.offset = 0;
  inside.bytes = 8192;
  peer.ipc_handle = transport::ipc_table_to_text({a, inside, a});
  CHECK(choose_data_path(true, memory_kind::cuda, "hostA/boot1", peer) ==
        data_path::cuda_ipc);
  // Our table not all on the GPU (transfer_state::ipc_kind is host then).
  CHECK(choose_data_path(true, memory_kind::host, "hostA/boot1", peer) ==
        data_path::plugin);
  CHECK(choose_data_path(true, memory_kind::cuda, "hostB/boot1", peer) ==
        data_path::plugin);
  peer.ipc_handle.clear(); // a region of its table cannot be shared
  CHECK(choose_data_path(true, memory_kind::cuda, "hostA/boot1", peer) ==
        data_path::plugin);
}

namespace {

// A transfer actor whose table claims GPU memory (wrapped at addresses no
// copy ever touches: every order below is refused before a copy), on host
// "hostA/boot1", and a way to order it.
struct read_refusals {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  transfer_actor reader;

  read_refusals() {
    transfer_config tc;
    tc.name = "decode-0";
    tc.region = memory_region::wrap(reinterpret_cast<void*>(0x7f0000000000),
                                    1 << 20, memory_kind::cuda, 0, "layer 0");
    tc.more_regions.push_back(
        memory_region::wrap(reinterpret_cast<void*>(0x7f0000200000), 1 << 20,
                            memory_kind::cuda, 0, "layer 1"));
    tc.use_ipc = true;
    tc.host_id = "hostA/boot1";
    reader = spawn_transfer(sys, tc);
  }
  ~read_refusals() {
    self->send_exit(reader, caf::exit_reason::user_shutdown);
    self->wait_for(reader);
  }

  proto::read_order order(const std::string& host_id, bool handles) {
    proto::read_order o;
    o.transfer_id = 7;
    o.peer.name = "prefill-0";
    o.peer.transfer = caf::actor_cast<caf::actor>(reader); // any live actor
    o.peer.host_id = host_id;
    o.peer.region_bytes = 65536;
    o.peer.gpu = 0;
    if (handles)
      o.peer.ipc_handle = whole(0, 65536, 'd').handle.to_hex();
    o.extents = {{0, table_offset(1, 0), 4096}};
    o.timeout_ms = 1000;
    return o;
  }

  caf::error read(const proto::read_order& o) {
    caf::error result = make_error(ec::timeout, "no reply");
    self->request(reader, 10s, proto::read_atom::value, o)
        .receive([&](const proto::recv_report&) { result = caf::error{}; },
                 [&](caf::error& err) { result = std::move(err); });
    return result;
  }
};

} // namespace

TEST_CASE_FIXTURE(read_refusals,
                  "a one-sided read from another host is refused: the "
                  "caller pushes instead") {
  auto err = read(order("hostB/boot1", true));
  REQUIRE(err);
  CHECK_MESSAGE(is(err, ec::unreachable), render(err));
  CHECK_MESSAGE(render(err).find("'prefill-0' is not on this host") !=
                    std::string::npos,
                render(err));
  CHECK_MESSAGE(render(err).find("use the push path") != std::string::npos,
                render(err));
}

TEST_CASE_FIXTURE(read_refusals,
                  "a one-sided read from a peer without IPC handles is "
                  "refused") {
  auto err = read(order("hostA/boot1", false));
  CHECK_MESSAGE(is(err, ec::unreachable), render(err));
  CHECK_MESSAGE(render(err).find("exports no CUDA IPC handles") !=
                    std::string::npos,
                render(err));
}

// A read whose extents leave a region is refused (invalid_extent, no byte
// moved) by the pass that packs its plan, after the peer's table is mapped:
// since issue #16 no pass of the read handler checks them first. That needs
// a GPU: tests/gpu/ipc_table_gpu_test.cpp, step 2b.

TEST_CASE("a read from a host-memory table is refused naming its region") {
  runtime::system_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  transfer_config tc;
  tc.name = "decode-0";
  tc.region = memory_region::allocate_host(8192, "pool");
  tc.host_id = "hostA/boot1";
  auto reader = spawn_transfer(sys, tc);
  proto::read_order o;
  o.transfer_id = 1;
  o.peer.name = "prefill-0";
  o.peer.transfer = caf::actor_cast<caf::actor>(reader);
  o.peer.host_id = "hostA/boot1";
  o.peer.ipc_handle = whole(0, 65536, 'e').handle.to_hex();
  o.peer.region_bytes = 65536;
  o.extents = {{0, 0, 4096}};
  self->request(reader, 10s, proto::read_atom::value, o)
      .receive([&](const proto::recv_report&) { FAIL("a host read ran"); },
               [&](caf::error& err) {
                 CHECK_MESSAGE(is(err, ec::unreachable), render(err));
                 CHECK_MESSAGE(render(err).find("region 0 ('pool') is host "
                                                "memory") != std::string::npos,
                               render(err));
               });
  self->send_exit(reader, caf::exit_reason::user_shutdown);
  self->wait_for(reader);
}

TEST_CASE("a CUDA event in an order from another process is refused") {
  // The transfer actor in one actor system, published on loopback; the
  // order comes from a second one (another process, as far as CAF can
  // tell: another node).
  runtime::system_config cfg_a, cfg_b;
  caf::actor_system a{cfg_a}, b{cfg_b};
  transfer_config tc;
  tc.name = "prefill-0";
  tc.region = memory_region::allocate_host(8192, "pool");
  auto transfer = spawn_transfer(a, tc);
  auto port = a.middleman().publish(transfer, 0, "127.0.0.1", true);
  REQUIRE_MESSAGE(port, test::why(port));
  auto remote = b.middleman().remote_actor<transfer_actor>("127.0.0.1", *port);
  REQUIRE_MESSAGE(remote, test::why(remote));
  caf::scoped_actor self{b};
  proto::send_order s;
  s.transfer_id = 3;
  s.peer.name = "decode-0";
  s.peer.transfer = caf::actor_cast<caf::actor>(self);
  s.peer.region_bytes = 8192;
  s.extents = {{0, 0, 4096}};
  s.wait_event = 0x1234;
  self->request(*remote, 10s, proto::send_atom::value, s)
      .receive([&](std::uint64_t) { FAIL("a remote event was accepted"); },
               [&](caf::error& err) {
                 CHECK_MESSAGE(is(err, ec::invalid_argument), render(err));
                 CHECK_MESSAGE(render(err).find("another process") !=
                                   std::string::npos,
                               render(err));
               });
  proto::read_order r;
  r.transfer_id = 4;
  r.peer = s.peer;
  r.extents = s.extents;
  r.wait_event = 0x1234;
  self->request(*remote, 10s, proto::read_atom::value, r)
      .receive([&](const proto::recv_report&) { FAIL("accepted"); },
               [&](caf::error& err) {
                 CHECK_MESSAGE(is(err, ec::invalid_argument), render(err));
               });
  caf::scoped_actor local{a};
  local->send_exit(transfer, caf::exit_reason::user_shutdown);
  local->wait_for(transfer);
  a.middleman().unpublish(transfer, *port);
}
