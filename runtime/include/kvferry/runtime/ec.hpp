// kvferry's error codes, without CAF: the facades (kvferry::node,
// kvferry::endpoint, the C API) return them inside a `status`; inside the
// actors they travel as caf::error (error.hpp).
#pragma once

#include <cstdint>

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
  /// An unexpected failure inside kvferry or CAF; the reason says which.
  internal,
};

/// The name of an error code, e.g. "unauthorized".
const char* to_string(ec code);

} // namespace kvferry
