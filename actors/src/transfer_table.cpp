// The transfer actor's region table at runtime (transfer_state.hpp), for
// kvferry::endpoint's reg/dereg: a region is appended (index never reused, so
// a stale descriptor can never reach the next region registered) and
// registered with every open channel; a removed region keeps its index with
// size 0, so the bounds checks of both sides refuse every extent into it.
// Either change exports the table again over CUDA IPC where it can be
// (advertise_ipc_handle), so same-host GPU peers map the new regions.
#include <stdexcept>
#include <string>

#include <caf/all.hpp>
#include <fmt/format.h>

#include "kvferry/actors/plan.hpp"
#include "kvferry/runtime/error.hpp"
#include "transfer_state.hpp"

namespace kvferry::transfer_detail {

std::uint8_t* region_data(const transfer_state& st, std::size_t index,
                          std::uint64_t offset) {
  if (index >= st.regions.size() || !st.regions[index])
    throw std::runtime_error(fmt::format(
        "transfer {}: region {} was removed while a transfer used it",
        st.cfg.name, index));
  return st.regions[index]->data() + offset;
}

namespace {

// Registering memory by address is a local privilege: a peer that could ask
// would make this actor read or write any memory of the process.
caf::error refuse_remote(self_ptr self, const char* what) {
  const auto& sender = self->current_sender();
  if (sender && sender->node() != self->node())
    return make_error(ec::unauthorized,
                      fmt::format("transfer {}: {} from another process",
                                  self->state.cfg.name, what));
  return {};
}

} // namespace

caf::result<std::uint64_t> handle_add_region(self_ptr self,
                                             std::uint64_t address,
                                             std::uint64_t bytes,
                                             std::int32_t gpu) {
  if (auto err = refuse_remote(self, "adding a region"))
    return err;
  auto& st = self->state;
  const auto index = st.regions.size();
  if (bytes >= max_region_bytes || index >= (std::uint64_t{1} << 23))
    return make_error(ec::invalid_argument,
                      fmt::format("transfer {}: region {} of {} bytes: a "
                                  "region must be smaller than 2^{} bytes and "
                                  "a table holds at most 2^23 regions",
                                  st.cfg.name, index, bytes, region_shift));
  std::shared_ptr<memory_region> region;
  try {
    region = memory_region::wrap(
        reinterpret_cast<void*>(address), bytes,
        gpu < 0 ? memory_kind::host : memory_kind::cuda, gpu < 0 ? -1 : gpu,
        fmt::format("{} region {}", st.cfg.name, index));
  } catch (const std::exception& e) {
    return make_error(ec::invalid_argument, e.what());
  }
  try {
    for (auto& [name, p] : st.out) {
      if (p.channel)
        p.regs.push_back(register_region(st, *p.channel, region.get()));
      if (p.lane.channel)
        p.lane.regs.push_back(
            register_region(st, *p.lane.channel, region.get()));
    }
    for (auto& [name, p] : st.in) {
      if (p.channel)
        p.regs.push_back(register_region(st, *p.channel, region.get()));
      if (p.lane.channel)
        p.lane.regs.push_back(
            register_region(st, *p.lane.channel, region.get()));
    }
  } catch (const std::exception& e) {
    // Channels that registered it keep a registration of a region the table
    // does not have; drop them all rather than keep tables out of step.
    auto err = make_error(ec::plugin_error,
                          fmt::format("transfer {}: registering region {}: {}",
                                      st.cfg.name, index, e.what()));
    std::vector<std::string> outs, ins;
    for (auto& [name, p] : st.out)
      outs.push_back(name);
    for (auto& [name, p] : st.in)
      ins.push_back(name);
    for (auto& name : outs)
      drop_peer_out(self, name, err);
    for (auto& name : ins)
      drop_peer_in(self, name, err);
    return err;
  }
  st.regions.push_back(std::move(region));
  st.region_sizes.push_back(bytes);
  st.metrics.regions.add(1);
  st.metrics.registered_bytes.add(static_cast<std::int64_t>(bytes));
  advertise_ipc_handle(st); // the endpoint_atom reply shows the new table
  return static_cast<std::uint64_t>(index);
}

caf::result<caf::ok_atom> handle_remove_region(self_ptr self,
                                               std::uint64_t index) {
  if (auto err = refuse_remote(self, "removing a region"))
    return err;
  auto& st = self->state;
  if (index == 0 || index >= st.regions.size() || !st.regions[index])
    return make_error(ec::not_found,
                      fmt::format("transfer {}: no region {} to remove (the "
                                  "table has {} entries; region 0 stays)",
                                  st.cfg.name, index, st.regions.size()));
  for (auto& [name, p] : st.out) {
    if (index < p.regs.size())
      p.regs[index] = registration{};
    if (index < p.lane.regs.size())
      p.lane.regs[index] = registration{};
  }
  for (auto& [name, p] : st.in) {
    if (index < p.regs.size())
      p.regs[index] = registration{};
    if (index < p.lane.regs.size())
      p.lane.regs[index] = registration{};
  }
  st.metrics.regions.sub(1);
  st.metrics.registered_bytes.sub(
      static_cast<std::int64_t>(st.region_sizes[index]));
  st.regions[index].reset();
  st.region_sizes[index] = 0;
  advertise_ipc_handle(st);
  return caf::ok_atom::value;
}

} // namespace kvferry::transfer_detail
