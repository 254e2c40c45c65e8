// Trace parsing. Mooncake lines are parsed by a small scanner for the one
// shape they have (a flat object of numbers, strings and number arrays)
// rather than a general JSON library: the simulator's target is ~100,000
// requests per second, and a line carries up to hundreds of hash ids.
#include "kvferry/sim/trace.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sys/stat.h>

namespace kvferry::sim {

const char* to_string(trace_format format) {
  return format == trace_format::mooncake ? "mooncake-jsonl" : "azure-csv";
}

namespace {

// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

bool digits(const char*& p, int count, unsigned& value) {
  value = 0;
  for (int i = 0; i < count; ++i, ++p) {
    if (*p < '0' || *p > '9')
      return false;
    value = value * 10 + unsigned(*p - '0');
  }
  return true;
}

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos)
    return {};
  auto e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

bool blank(const std::string& s) {
  return s.find_first_not_of(" \t\r") == std::string::npos;
}

// One Mooncake line: {"key": value, ...} where a value is a number, a
// string, true/false/null, or an array of numbers.
class json_line {
public:
  explicit json_line(const std::string& text) : p_(text.c_str()) {}

  // Calls on_number(key, value) for numbers and on_array(key), which names
  // the vector to fill (or nullptr to skip), for arrays. Returns "" or the
  // problem.
  template<class OnNumber, class OnArray>
  std::string parse(OnNumber on_number, OnArray on_array) {
    skip_ws();
    if (*p_ != '{')
      return "expected a JSON object ('{')";
    ++p_;
    skip_ws();
    if (*p_ == '}')
      return finish();
    for (;;) {
      std::string key;
      if (!read_string(key))
        return "expected a quoted key";
      skip_ws();
      if (*p_++ != ':')
        return "expected ':' after \"" + key + "\"";
      skip_ws();
      if (*p_ == '[') {
        if (auto problem = read_array(key, on_array(key)); !problem.empty())
          return problem;
      } else if (*p_ == '"') {
        std::string ignored;
        if (!read_string(ignored))
          return "unterminated string in \"" + key + "\"";
      } else if (std::strncmp(p_, "true", 4) == 0 ||
                 std::strncmp(p_, "null", 4) == 0) {
        p_ += 4;
      } else if (std::strncmp(p_, "false", 5) == 0) {
        p_ += 5;
      } else {
        double value = 0;
        if (!read_number(value))
          return "\"" + key + "\" has no valid value";
        on_number(key, value);
      }
      skip_ws();
      if (*p_ == ',') {
        ++p_;
        skip_ws();
        continue;
      }
      if (*p_ == '}')
        return finish();
      return "expected ',' or '}' after \"" + key + "\"";
    }
  }

private:
  std::string finish() {
    ++p_;
    skip_ws();
    return *p_ == '\0' ? "" : "text after the closing '}'";
  }
  void skip_ws() {
    while (*p_ == ' ' || *p_ == '\t' || *p_ == '\r')
      ++p_;
  }
  bool read_string(std::string& out) {
    if (*p_ != '"')
      return false;
    ++p_;
    while (*p_ != '"') {
      if (*p_ == '\0')
        return false;
      if (*p_ == '\\' && p_[1] != '\0')
        ++p_;
      out += *p_++;
    }
    ++p_;
    return true;
  }
  bool read_number(double& value) {
    char* end = nullptr;
    errno = 0;
    value = std::strtod(p_, &end);
    if (end == p_ || errno != 0 || !std::isfinite(value))
      return false;
    p_ = end;
    return true;
  }
  std::string read_array(const std::string& key,
                         std::vector<std::uint64_t>* out) {
    ++p_; // '['
    skip_ws();
    if (*p_ == ']') {
      ++p_;
      return {};
    }
    for (;;) {
      if (*p_ < '0' || *p_ > '9')
        return "\"" + key + "\" must be an array of non-negative integers";
      char* end = nullptr;
      errno = 0;
      auto value = std::strtoull(p_, &end, 10);
      if (errno != 0)
        return "\"" + key + "\" holds an integer out of range";
      p_ = end;
      if (out != nullptr)
        out->push_back(value);
      skip_ws();
      if (*p_ == ',') {
        ++p_;
        skip_ws();
        continue;
      }
      if (*p_ == ']') {
        ++p_;
        return {};
      }
      return "expected ',' or ']' in \"" + key + "\"";
    }
  }

  const char* p_;
};

std::vector<std::string> split_csv(const std::string& line) {
  std::vector<std::string> cells;
  std::string::size_type start = 0;
  for (;;) {
    auto comma = line.find(',', start);
    cells.push_back(trim(line.substr(start, comma - start)));
    if (comma == std::string::npos)
      return cells;
    start = comma + 1;
  }
}

// A token count: a whole number in [min, max_trace_tokens].
bool token_count(double value, std::uint64_t min, std::uint32_t& out) {
  if (!(value >= double(min)) || value > double(max_trace_tokens) ||
      value != std::floor(value))
    return false;
  out = static_cast<std::uint32_t>(value);
  return true;
}

} // namespace

bool parse_wall_clock(const std::string& text, std::int64_t& ns) {
  const char* p = text.c_str();
  unsigned year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  if (!digits(p, 4, year) || *p++ != '-' || !digits(p, 2, month) ||
      *p++ != '-' || !digits(p, 2, day) || (*p != ' ' && *p != 'T'))
    return false;
  ++p;
  if (!digits(p, 2, hour) || *p++ != ':' || !digits(p, 2, minute) ||
      *p++ != ':' || !digits(p, 2, second))
    return false;
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 ||
      minute > 59 || second > 60)
    return false;
  std::int64_t fraction_ns = 0;
  if (*p == '.') {
    ++p;
    std::int64_t scale = 100000000;
    if (*p < '0' || *p > '9')
      return false;
    for (; *p >= '0' && *p <= '9'; ++p, scale /= 10)
      fraction_ns += (*p - '0') * scale; // digits past 1 ns are dropped
  }
  if (*p != '\0')
    return false;
  std::int64_t days = days_from_civil(year, month, day);
  ns = ((days * 24 + hour) * 60 + minute) * 60 + second;
  ns = ns * 1000000000 + fraction_ns;
  return true;
}

trace_reader::trace_reader(const std::string& path) : path_(path) {
  in_.open(path, std::ios::binary);
  if (!in_)
    throw trace_error(path +
                      ": cannot open the trace: " + std::strerror(errno));
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode))
    total_bytes_ = static_cast<std::uint64_t>(st.st_size);
  // The first non-blank line says which format this is.
  bool found = false;
  while (!found && read_line())
    found = !blank(line_);
  if (!found)
    throw trace_error(path + ": the trace is empty");
  auto first = trim(line_);
  if (first.front() == '{') {
    format_ = trace_format::mooncake;
    pending_ = true;
  } else if (first.find("TIMESTAMP") != std::string::npos &&
             first.find(',') != std::string::npos) {
    format_ = trace_format::azure;
    read_azure_header();
  } else {
    fail("not a trace this simulator reads: expected a Mooncake JSONL "
         "object ('{\"timestamp\": ...}') or an Azure CSV header "
         "('TIMESTAMP,ContextTokens,GeneratedTokens')");
  }
}

trace_reader::~trace_reader() = default;

bool trace_reader::read_line() {
  line_.clear();
  if (!std::getline(in_, line_)) {
    if (in_.bad())
      throw trace_error(path_ + ": read error after line " +
                        std::to_string(line_no_));
    return false;
  }
  ++line_no_;
  bytes_read_ += line_.size() + 1;
  if (line_.size() > max_trace_line_bytes)
    fail("line longer than 16 MiB");
  return true;
}

void trace_reader::fail(const std::string& what) const {
  throw trace_error(path_ + ":" + std::to_string(line_no_) + ": " + what);
}

void trace_reader::read_azure_header() {
  auto cells = split_csv(line_);
  columns_ = static_cast<int>(cells.size());
  for (int i = 0; i < columns_; ++i) {
    auto& name = cells[static_cast<std::size_t>(i)];
    if (name == "TIMESTAMP")
      col_time_ = i;
    else if (name == "ContextTokens")
      col_context_ = i;
    else if (name == "GeneratedTokens")
      col_generated_ = i;
  }
  if (col_time_ < 0 || col_context_ < 0 || col_generated_ < 0)
    fail("the Azure CSV header needs the columns TIMESTAMP, ContextTokens "
         "and GeneratedTokens, got '" +
         trim(line_) + "'");
}

bool trace_reader::next(trace_request& out) {
  if (pending_) {
    pending_ = false;
  } else {
    do {
      if (!read_line())
        return false;
    } while (blank(line_));
  }
  out.line = line_no_;
  out.index = count_;
  out.hash_ids.clear();
  if (format_ == trace_format::mooncake)
    parse_mooncake(out);
  else
    parse_azure(out);
  if (count_ > 0 && out.arrival_ns < last_arrival_ns_)
    fail("timestamp goes backwards (" +
         std::to_string(double(out.arrival_ns) / 1e6) +
         " ms after the first "
         "request, the line before was at " +
         std::to_string(double(last_arrival_ns_) / 1e6) +
         " ms); the simulator needs a trace sorted by time");
  last_arrival_ns_ = out.arrival_ns;
  ++count_;
  return true;
}

void trace_reader::parse_mooncake(trace_request& out) {
  bool has_time = false, has_in = false, has_out = false;
  double time_ms = 0, in = 0, outlen = 0;
  auto problem = json_line(line_).parse(
      [&](const std::string& key, double value) {
        if (key == "timestamp")
          has_time = true, time_ms = value;
        else if (key == "input_length")
          has_in = true, in = value;
        else if (key == "output_length")
          has_out = true, outlen = value;
      },
      [&](const std::string& key) {
        return key == "hash_ids" ? &out.hash_ids : nullptr;
      });
  if (!problem.empty())
    fail("not a Mooncake trace line: " + problem);
  if (!has_time || !has_in || !has_out)
    fail("a Mooncake line needs \"timestamp\", \"input_length\" and "
         "\"output_length\"");
  if (time_ms < 0)
    fail("\"timestamp\" must not be negative");
  if (!token_count(in, 1, out.input_tokens))
    fail("\"input_length\" must be a whole number in [1, 16777216]");
  if (!token_count(outlen, 0, out.output_tokens))
    fail("\"output_length\" must be a whole number in [0, 16777216]");
  if (count_ == 0)
    origin_ms_ = time_ms;
  out.arrival_ns = std::llround((time_ms - origin_ms_) * 1e6);
}

void trace_reader::parse_azure(trace_request& out) {
  auto cells = split_csv(line_);
  if (static_cast<int>(cells.size()) != columns_)
    fail("expected " + std::to_string(columns_) +
         " columns like the "
         "header, got " +
         std::to_string(cells.size()));
  std::int64_t ns = 0;
  auto& time = cells[static_cast<std::size_t>(col_time_)];
  if (!parse_wall_clock(time, ns))
    fail("TIMESTAMP '" + time + "' is not 'YYYY-MM-DD HH:MM:SS.fraction'");
  auto count = [&](int col, std::uint64_t min, std::uint32_t& dest,
                   const char* name) {
    auto& cell = cells[static_cast<std::size_t>(col)];
    char* end = nullptr;
    double value = std::strtod(cell.c_str(), &end);
    if (cell.empty() || *end != '\0' || !token_count(value, min, dest))
      fail(std::string(name) + " '" + cell + "' must be a whole number in [" +
           std::to_string(min) + ", 16777216]");
  };
  count(col_context_, 1, out.input_tokens, "ContextTokens");
  count(col_generated_, 0, out.output_tokens, "GeneratedTokens");
  if (count_ == 0)
    origin_ns_ = ns;
  out.arrival_ns = ns - origin_ns_;
}

} // namespace kvferry::sim
