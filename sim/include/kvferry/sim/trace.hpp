// Request traces for `kvferry sim`: Mooncake JSONL and Azure CSV, read one
// request at a time (pull-based) so that memory stays flat however long the
// trace is. The format is detected from the file's first line, not its name.
// A line that cannot be read is an error naming the file and the line.
// No CAF, no runtime: usable and testable on its own.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvferry::sim {

/// Mooncake traces give prefix blocks (`hash_ids`) of this many tokens.
inline constexpr std::uint32_t hash_block_tokens = 512;
/// Longest prompt or output accepted (a line above it is an error, not a
/// request that would overflow a pool computation).
inline constexpr std::uint64_t max_trace_tokens = std::uint64_t{1} << 24;
/// Longest line read (a file without newlines must not eat all memory).
inline constexpr std::size_t max_trace_line_bytes = std::size_t{1} << 24;

enum class trace_format {
  mooncake, // JSONL: timestamp (ms), input_length, output_length, hash_ids
  azure,    // CSV: TIMESTAMP (wall clock), ContextTokens, GeneratedTokens
};
const char* to_string(trace_format format);

struct trace_request {
  std::uint64_t index = 0;     // 0-based position in the trace
  std::uint64_t line = 0;      // 1-based line in the file
  std::int64_t arrival_ns = 0; // since the trace's first request
  std::uint32_t input_tokens = 0;
  std::uint32_t output_tokens = 0;
  std::vector<std::uint64_t> hash_ids; // leading prefix blocks; may be empty
};

/// what() is "FILE:LINE: problem" (or "FILE: problem" before any line).
class trace_error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

class trace_reader {
public:
  /// Opens `path` and detects its format; throws trace_error.
  explicit trace_reader(const std::string& path);
  ~trace_reader();
  trace_reader(const trace_reader&) = delete;
  trace_reader& operator=(const trace_reader&) = delete;

  /// The next request, or false at the end of the file. Throws trace_error
  /// for a malformed line or a timestamp earlier than the one before.
  bool next(trace_request& out);

  trace_format format() const { return format_; }
  const std::string& path() const { return path_; }
  /// For progress: bytes consumed so far and the file's size (0 if unknown).
  std::uint64_t bytes_read() const { return bytes_read_; }
  std::uint64_t total_bytes() const { return total_bytes_; }

private:
  bool read_line(); // into line_; false at EOF
  [[noreturn]] void fail(const std::string& what) const;
  void parse_mooncake(trace_request& out);
  void parse_azure(trace_request& out);
  void read_azure_header();

  std::string path_;
  std::ifstream in_;
  trace_format format_ = trace_format::mooncake;
  std::string line_;
  bool pending_ = false; // line_ holds the first data line, not yet parsed
  std::uint64_t line_no_ = 0;
  std::uint64_t count_ = 0;
  std::uint64_t bytes_read_ = 0;
  std::uint64_t total_bytes_ = 0;
  std::int64_t last_arrival_ns_ = 0;
  // Azure: column positions from the header, and the first timestamp.
  int col_time_ = -1, col_context_ = -1, col_generated_ = -1, columns_ = 0;
  std::int64_t origin_ns_ = 0;
  // Mooncake: the first timestamp (traces need not start at 0).
  double origin_ms_ = 0;
};

/// Parses "YYYY-MM-DD HH:MM:SS[.fraction]" into nanoseconds since the Unix
/// epoch (UTC, no time zone); false when the text is not such a time.
bool parse_wall_clock(const std::string& text, std::int64_t& ns);

} // namespace kvferry::sim
