// Endpoint transfer paths (endpoint_path.hpp).
#include "endpoint_path.hpp"

#include <algorithm>

#include <caf/node_id.hpp>

#include "kvferry/actors/transfer.hpp"

namespace kvferry::engine_detail {

namespace {

// The process id in the node id of `ep`'s transfer actor; 0: unknown.
std::uint32_t process_of(const proto::endpoint& ep) {
  if (!ep.transfer)
    return 0;
  const auto node = ep.transfer.node();
  const auto* data =
      dynamic_cast<const caf::node_id::default_data*>(node.operator->());
  return data != nullptr ? data->process_id() : 0;
}

} // namespace

bool same_process(const proto::endpoint& a, const proto::endpoint& b) {
  const auto pa = process_of(a);
  return pa != 0 && pa == process_of(b);
}

transfer_path path_between(const proto::endpoint& mover,
                           const proto::endpoint& other, bool one_process) {
  const auto kind =
      mover.ipc_handle.empty() ? memory_kind::host : memory_kind::cuda;
  return !one_process && choose_data_path(true, kind, mover.host_id, other) ==
                             data_path::cuda_ipc
             ? transfer_path::cuda_ipc
             : transfer_path::plugin;
}

std::vector<std::uint64_t> sizes_covering(const std::vector<extent>& ranges,
                                          extent_side side) {
  std::vector<std::uint64_t> sizes;
  for (const auto& r : ranges) {
    auto at = locate(side == extent_side::source ? r.src_offset : r.dst_offset);
    if (sizes.size() <= at.region)
      sizes.resize(at.region + 1, 0);
    sizes[at.region] = std::max(sizes[at.region], at.offset + r.length);
  }
  return sizes;
}

proto::endpoint order_peer(proto::endpoint ep,
                           const std::vector<std::uint64_t>& needed,
                           transfer_path& path) {
  // Grown in place (region 0 is region_bytes, the others
  // more_region_sizes): a table built aside was an allocation per order.
  auto& more = ep.more_region_sizes;
  if (needed.size() > more.size() + 1) {
    more.resize(needed.size() - 1, 0);
    path = transfer_path::plugin;
  }
  for (std::size_t i = 0; i < needed.size(); ++i) {
    auto& have = i == 0 ? ep.region_bytes : more[i - 1];
    if (needed[i] > have) {
      have = needed[i];
      path = transfer_path::plugin;
    }
  }
  if (path != transfer_path::cuda_ipc)
    ep.ipc_handle.clear();
  return ep;
}

} // namespace kvferry::engine_detail
