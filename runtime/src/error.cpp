#include "kvferry/runtime/error.hpp"

#include <caf/actor_system_config.hpp>
#include <caf/sec.hpp>
#include <fmt/format.h>

#include "kvferry/runtime/version.hpp"

namespace kvferry {

const char* to_string(ec code) {
  switch (code) {
  case ec::none:
    return "none";
  case ec::timeout:
    return "timeout";
  case ec::peer_down:
    return "peer_down";
  case ec::unauthorized:
    return "unauthorized";
  case ec::invalid_extent:
    return "invalid_extent";
  case ec::plugin_error:
    return "plugin_error";
  case ec::mismatch:
    return "mismatch";
  case ec::not_found:
    return "not_found";
  case ec::duplicate:
    return "duplicate";
  case ec::invalid_argument:
    return "invalid_argument";
  case ec::cuda_error:
    return "cuda_error";
  case ec::unreachable:
    return "unreachable";
  case ec::config_error:
    return "config_error";
  case ec::lease_expired:
    return "lease_expired";
  case ec::internal:
    return "internal";
  }
  return "unknown";
}

caf::error make_error(ec code) {
  return caf::error{static_cast<uint8_t>(code), ec_category};
}

caf::error make_error(ec code, std::string context) {
  return caf::error{static_cast<uint8_t>(code), ec_category,
                    caf::make_message(std::move(context))};
}

namespace {

// The context of our errors is one string; anything else (a foreign sender
// that put other values in) is printed with CAF's generic formatting.
std::string render_context(const caf::message& context) {
  if (context.empty())
    return {};
  if (context.match_elements<std::string>())
    return context.get_as<std::string>(0);
  return caf::to_string(context);
}

} // namespace

std::string render(const caf::error& err) {
  if (!err)
    return "no error";
  if (err == caf::sec::incompatible_application_ids)
    return fmt::format(
        "the peer runs a kvferry built from other control-plane protocol "
        "headers (this process is kvferry {}, {}): CAF's handshake refused "
        "it, since its messages would be misread; run the same kvferry build "
        "on every process of a deployment",
        version, wire_id);
  if (err.category() != ec_category)
    return caf::actor_system_config::render(err);
  std::string result = "kvferry.";
  result += to_string(static_cast<ec>(err.code()));
  auto context = render_context(err.context());
  if (!context.empty()) {
    result += ": ";
    result += context;
  }
  return result;
}

bool is(const caf::error& err, ec code) {
  return err.category() == ec_category &&
         err.code() == static_cast<uint8_t>(code);
}

status to_status(const caf::error& err) {
  if (!err)
    return {};
  if (err.category() == ec_category)
    return {static_cast<ec>(err.code()), render_context(err.context())};
  if (err == caf::sec::request_timeout)
    return {ec::timeout, render(err)};
  if (err == caf::sec::incompatible_application_ids)
    return {ec::mismatch, render(err)};
  if (err == caf::sec::request_receiver_down ||
      err == caf::sec::no_route_to_receiving_node ||
      err == caf::sec::cannot_forward_to_invalid_actor)
    return {ec::peer_down, render(err)};
  if (err == caf::sec::no_actor_published_at_port ||
      err == caf::sec::cannot_connect_to_node)
    return {ec::unreachable, render(err)};
  return {ec::internal, render(err)};
}

} // namespace kvferry
