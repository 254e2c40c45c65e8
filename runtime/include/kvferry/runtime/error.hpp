// kvferry's error category: every failure a caller must tell apart has an
// `ec` value; the context message names the file, peer or call at fault.
#pragma once

#include <cstdint>
#include <string>

#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/make_message.hpp>

#include "kvferry/runtime/ec.hpp"
#include "kvferry/runtime/status.hpp"

namespace kvferry {

/// The category atom under which kvferry errors travel (`caf::error`).
constexpr caf::atom_value ec_category = caf::atom("kvferry");

/// An error without context.
caf::error make_error(ec code);

/// An error with a human-readable context, e.g. which worker or file failed.
caf::error make_error(ec code, std::string context);

/// Renders any error as one line of text: kvferry errors as
/// "kvferry.unauthorized: <context>", CAF's own through CAF's renderers.
/// Works without an actor system (for logs and CLI output).
std::string render(const caf::error& err);

/// The same error as a CAF-free value for the facades (kvferry::node,
/// kvferry::endpoint): kvferry errors keep their code and context; CAF's own
/// become timeout (a request timed out), peer_down (the receiver is gone) or
/// internal, with CAF's rendering as the reason. No error: an ok status.
status to_status(const caf::error& err);

/// True if `err` belongs to kvferry's category and has code `code`.
bool is(const caf::error& err, ec code);

} // namespace kvferry
