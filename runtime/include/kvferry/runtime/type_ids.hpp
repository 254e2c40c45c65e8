// The CAF type-ID block of the runtime (ids 200..299). Every type sent as a
// top-level message element must have an id here (or in the protocol block,
// kvferry_protocol, ids 300..399, in protocol.hpp): our targets compile with
// CAF_ENABLE_TYPE_ID_CHECKS, so sending an unregistered type fails to
// compile. Include this header (not directory_types.hpp alone) wherever
// messages are sent.
#pragma once

#include <string>
#include <vector>

#include <caf/type_id.hpp>

#include "kvferry/runtime/directory_types.hpp"
#include "kvferry/runtime/error.hpp"

CAF_BEGIN_TYPE_ID_BLOCK(kvferry_runtime, caf::first_custom_type_id)

CAF_ADD_TYPE_ID(kvferry_runtime, (kvferry::ec))
CAF_ADD_TYPE_ID(kvferry_runtime, (kvferry::memory_kind))
CAF_ADD_TYPE_ID(kvferry_runtime, (kvferry::worker_role))
CAF_ADD_TYPE_ID(kvferry_runtime, (kvferry::region_info))
CAF_ADD_TYPE_ID(kvferry_runtime, (kvferry::worker_info))
CAF_ADD_TYPE_ID(kvferry_runtime, (kvferry::lease))
CAF_ADD_TYPE_ID(kvferry_runtime, (std::vector<kvferry::worker_info>))
CAF_ADD_TYPE_ID(kvferry_runtime, (std::vector<kvferry::region_info>))
CAF_ADD_TYPE_ID(kvferry_runtime, (std::vector<std::string>))
CAF_ADD_TYPE_ID(kvferry_runtime, (std::vector<char>))
CAF_ADD_TYPE_ID(kvferry_runtime, (std::map<std::string, std::string>))

// Atoms (CAF 0.17: atoms carry their own identity, they use no id).
CAF_ADD_ATOM(kvferry_runtime, kvferry, register_atom, "register")
CAF_ADD_ATOM(kvferry_runtime, kvferry, lookup_atom, "lookup")
CAF_ADD_ATOM(kvferry_runtime, kvferry, list_atom, "list")
CAF_ADD_ATOM(kvferry_runtime, kvferry, watch_atom, "watch")
CAF_ADD_ATOM(kvferry_runtime, kvferry, unwatch_atom, "unwatch")
CAF_ADD_ATOM(kvferry_runtime, kvferry, renew_atom, "renew")
CAF_ADD_ATOM(kvferry_runtime, kvferry, leave_atom, "leave")
CAF_ADD_ATOM(kvferry_runtime, kvferry, joined_atom, "joined")
CAF_ADD_ATOM(kvferry_runtime, kvferry, left_atom, "left")
CAF_ADD_ATOM(kvferry_runtime, kvferry, expire_atom, "expire")

CAF_END_TYPE_ID_BLOCK(kvferry_runtime)

static_assert(caf::id_block::kvferry_runtime::end <= 300,
              "kvferry_runtime ids must stay below 300 (300..399 belong to "
              "kvferry_protocol)");
