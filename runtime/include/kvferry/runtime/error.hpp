// kvferry's error category: every failure a caller must tell apart has an
// `ec` value; the context message names the file, peer or call at fault.
#pragma once

#include <cstdint>
#include <string>

#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/make_message.hpp>

namespace kvferry {

/// Error codes of kvferry. Values are on the wire (inside caf::error): only
/// append, never renumber.
enum class ec : uint8_t {
  none = 0,
  /// A request to a peer got no answer before its deadline.
  timeout,
  /// The peer (process, actor or connection) is gone.
  peer_down,
  /// Wrong or missing deployment secret.
  unauthorized,
  /// An extent (offset, length) lies outside the registered region.
  invalid_extent,
  /// The network plugin returned an error.
  plugin_error,
  /// Data or metadata disagree (checksum, geometry, protocol version).
  mismatch,
  /// No such worker, region or transfer.
  not_found,
  /// The name is already taken by a live worker.
  duplicate,
  /// A caller passed a malformed value.
  invalid_argument,
  /// A CUDA call failed.
  cuda_error,
  /// A service could not be reached (connect failed, port closed).
  unreachable,
  /// Reading or parsing a file (config, topology) failed.
  config_error,
  /// A worker's lease ran out without renewal.
  lease_expired,
};

/// The category atom under which kvferry errors travel (`caf::error`).
constexpr caf::atom_value ec_category = caf::atom("kvferry");

/// The name of an error code, e.g. "unauthorized".
const char* to_string(ec code);

/// An error without context.
caf::error make_error(ec code);

/// An error with a human-readable context, e.g. which worker or file failed.
caf::error make_error(ec code, std::string context);

/// Renders any error as one line of text: kvferry errors as
/// "kvferry.unauthorized: <context>", CAF's own through CAF's renderers.
/// Works without an actor system (for logs and CLI output).
std::string render(const caf::error& err);

/// True if `err` belongs to kvferry's category and has code `code`.
bool is(const caf::error& err, ec code);

} // namespace kvferry
