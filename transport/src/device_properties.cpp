// check_properties: one rule for what a v7 plugin's device properties mean,
// used by the loader (plugin::plugin), the channel wrapper (and so the
// worker) and `kvferry netcheck`. The rules follow NCCL 2.28: its v7 adaptor
// (src/plugin/net/net_v7.cc) copies the fields and fills in what v7 lacks
// (regIsGlobal 0, maxP2pBytes 1 GiB); its topology (src/graph/topo.cc,
// search.cc) takes a speed <= 0 as 10 Gb/s and skips a NIC with no comms.
// Real plugins do report speed 0 (a virtual NIC whose link speed they
// cannot read): that must not cost a device that NCCL itself would use.
#include <cmath>

#include <fmt/format.h>

#include "kvferry/transport/plugin.hpp"

namespace kvferry::transport {

property_check check_properties(const device_properties& reported) {
  property_check out;
  out.reported = reported;
  out.used = reported;
  auto& used = out.used;
  auto warn = [&](std::string text) {
    out.warnings.push_back(std::move(text));
  };
  auto error = [&](std::string text) { out.errors.push_back(std::move(text)); };

  // Defaults NCCL substitutes: warn, use NCCL's value.
  if (reported.name.empty())
    warn("name is empty (NCCL only logs it)");
  if (reported.speed_mbps <= 0) {
    used.speed_mbps = nccl_default_speed_mbps;
    warn(fmt::format("speed {} Mbit/s: taken as {} Mbit/s, as NCCL does",
                     reported.speed_mbps, nccl_default_speed_mbps));
  }
  if (!std::isfinite(reported.latency_us) || reported.latency_us < 0) {
    used.latency_us = 0;
    warn(fmt::format("latency {} us: taken as 0, NCCL's default",
                     reported.latency_us));
  }
  // NCCL groups up to maxRecvs receives in one irecv; below 1 nothing sane
  // is left to group: one buffer per irecv, which every plugin takes.
  if (reported.max_recvs < 1) {
    used.max_recvs = 1;
    warn(fmt::format("maxRecvs {}: taken as 1 (receives are not grouped)",
                     reported.max_recvs));
  }

  // What NCCL would not use either.
  if (!reported.supports_host())
    error("ptrSupport lacks NCCL_PTR_HOST");
  if (reported.max_comms < 1)
    error(fmt::format("maxComms {} (NCCL skips a NIC that allows no comms)",
                      reported.max_comms));
  if (reported.is_unpack() &&
      reported.device_version != NCCL_NET_DEVICE_UNPACK_VERSION)
    error(fmt::format("UNPACK device version {} (NCCL requires {})",
                      reported.device_version, NCCL_NET_DEVICE_UNPACK_VERSION));
  if (reported.device_type != NCCL_NET_DEVICE_HOST && !reported.is_unpack())
    error(fmt::format("unknown netDeviceType {}",
                      static_cast<int>(reported.device_type)));
  return out;
}

} // namespace kvferry::transport
