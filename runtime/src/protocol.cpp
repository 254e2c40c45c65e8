#include "kvferry/runtime/protocol.hpp"

#include "kvferry/runtime/type_ids.hpp"

namespace kvferry::proto {

void add_protocol_types(caf::actor_system_config& cfg) {
  cfg.add_message_types<caf::id_block::kvferry_protocol>();
}

} // namespace kvferry::proto
