// Compiled by tests/unit/runtime_type_id_check.cmake (as object libraries
// with kvferry_runtime's flags, tests/runtime.cmake), not linked: sending a
// type without a CAF type id must not compile in kvferry's targets
// (CAF_ENABLE_TYPE_ID_CHECKS). With -DKVFERRY_REGISTER_PROBE the type gets an
// id and the file must compile, which shows the failure is the check's.
#include <caf/all.hpp>

#include "kvferry/runtime/type_ids.hpp"

namespace probe {
struct unregistered_message {
  int value = 0;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, unregistered_message& x) {
  return f(x.value);
}
} // namespace probe

#ifdef KVFERRY_REGISTER_PROBE
CAF_BEGIN_TYPE_ID_BLOCK(kvferry_probe, 399)
CAF_ADD_TYPE_ID(kvferry_probe, (probe::unregistered_message))
CAF_END_TYPE_ID_BLOCK(kvferry_probe)
#endif

// A registered type compiles either way.
caf::message registered() {
  return caf::make_message(kvferry::lease{});
}

caf::message unregistered() {
  return caf::make_message(probe::unregistered_message{});
}
