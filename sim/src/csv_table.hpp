// A small reader for the requests.csv files that `kvferry sim` and `kvferry
// demo --trace` write (plain comma-separated, a header line, no quoting), by
// column name. Private to sim/src (calibrate.cpp, compare.cpp).
#pragma once

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvferry::sim::detail {

class csv_table {
public:
  /// Reads `path` whole; throws std::runtime_error naming it.
  explicit csv_table(const std::string& path) : path_(path) {
    std::ifstream in(path);
    if (!in)
      throw std::runtime_error(path + ": cannot open");
    std::string line;
    if (!std::getline(in, line))
      throw std::runtime_error(path + ": empty, expected a header line");
    header_ = split(line);
    while (std::getline(in, line))
      if (!line.empty())
        rows_.push_back(split(line));
  }

  std::size_t size() const { return rows_.size(); }
  const std::string& path() const { return path_; }
  /// 1-based line of row `row` in the file (the header is line 1).
  std::size_t line_of(std::size_t row) const { return row + 2; }

  /// The column's index; throws naming the file when there is none.
  std::size_t column(const std::string& name) const {
    for (std::size_t i = 0; i < header_.size(); ++i)
      if (header_[i] == name)
        return i;
    throw std::runtime_error(path_ + ":1: no column '" + name + "'");
  }
  /// The cell's text ("" when the row is short).
  const std::string& text(std::size_t row, std::size_t col) const {
    static const std::string none;
    const auto& r = rows_[row];
    return col < r.size() ? r[col] : none;
  }
  /// The cell as a number; throws naming file and line when it is not one.
  double number(std::size_t row, std::size_t col) const {
    const auto& t = text(row, col);
    char* end = nullptr;
    double v = std::strtod(t.c_str(), &end);
    if (t.empty() || end != t.c_str() + t.size())
      throw std::runtime_error(path_ + ":" + std::to_string(line_of(row)) +
                               ": column " + header_.at(col) + ": '" + t +
                               "' is not a number");
    return v;
  }

private:
  static std::vector<std::string> split(const std::string& line) {
    std::vector<std::string> out;
    std::stringstream in(line);
    std::string cell;
    while (std::getline(in, cell, ','))
      out.push_back(cell);
    if (!line.empty() && line.back() == ',')
      out.emplace_back();
    return out;
  }

  std::string path_;
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

} // namespace kvferry::sim::detail
