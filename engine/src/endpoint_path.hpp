// Which path an endpoint transfer takes (docs/engine-api.md, "Paths"), and
// the peer endpoint an order to a transfer actor names so that the actor
// takes exactly that path. Private to engine/; pure functions over
// proto::endpoint, unit-tested (test_endpoint).
#pragma once

#include <cstdint>
#include <vector>

#include "kvferry/actors/plan.hpp"
#include "kvferry/endpoint.hpp"
#include "kvferry/runtime/protocol.hpp"

namespace kvferry::engine_detail {

/// Whether two transfer actors run in one process (CAF's node ids carry the
/// process id): CUDA IPC cannot open a handle its own process exported, so
/// two endpoints of one process use the plugin. Unknown: false.
bool same_process(const proto::endpoint& a, const proto::endpoint& b);

/// The path of a transfer whose bytes `mover`'s transfer actor moves (the
/// writer's, the sender's, a reader's own kernel) into or out of `other`'s
/// table: CUDA IPC when both tables are exported over it (a non-empty
/// ipc_handle: every region GPU memory on one GPU, shareable), both sides
/// share a host (equal, non-empty host ids) but not a process; the plugin
/// otherwise. It is the transfer actor's own choice (choose_data_path), since
/// order_peer clears the handle of an order's peer whenever this says plugin.
transfer_path path_between(const proto::endpoint& mover,
                           const proto::endpoint& other, bool one_process);

/// A table just large enough for `ranges` on one side.
std::vector<std::uint64_t> sizes_covering(const std::vector<extent>& ranges,
                                          extent_side side);

/// An endpoint as an order to a transfer actor names it: its table as last
/// announced (hello, or a renewed hello after reg/dereg), grown where
/// `needed` (what the order reaches, e.g. through a descriptor that came out
/// of band ahead of the table) goes beyond it; the receiving side checks
/// every extent against its own table anyway. Its IPC handle stays only when
/// `path` is CUDA IPC and covers the whole order (else `path` becomes the
/// plugin), so the transfer actor takes exactly the path reported.
proto::endpoint order_peer(proto::endpoint ep,
                           const std::vector<std::uint64_t>& needed,
                           transfer_path& path);

} // namespace kvferry::engine_detail
