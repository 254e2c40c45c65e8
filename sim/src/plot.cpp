// The plots of `kvferry sim --out DIR` (docs/sim.md, "Plots"): data files
// and a gnuplot script written here, drawn by gnuplot (Debian's gnuplot-nox)
// when it is installed. pngcairo writes no timestamp, so the same data give
// the same PNG bytes.
#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fcntl.h>
#include <fstream>
#include <stdexcept>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include "kvferry/sim/sim.hpp"

namespace kvferry::sim {

namespace {

constexpr int cdf_points = 200;
constexpr std::size_t max_links_plotted = 8;

} // namespace

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out.flush())
    throw std::runtime_error("cannot write " + path);
}

namespace {

// A gnuplot single-quoted string.
std::string quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text)
    out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

std::string find_on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    auto colon = dirs.find(':', start);
    auto dir = dirs.substr(start, colon == std::string::npos ? std::string::npos
                                                             : colon - start);
    auto candidate = (dir.empty() ? "." : dir) + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0)
      return candidate;
    if (colon == std::string::npos)
      break;
    start = colon + 1;
  }
  return "";
}

// Runs `gnuplot SCRIPT` in `dir`; its exit status (127: could not start).
int run_gnuplot(const std::string& gnuplot, const std::string& dir,
                const std::string& script) {
  auto pid = ::fork();
  if (pid < 0)
    return 127;
  if (pid == 0) {
    if (::chdir(dir.c_str()) != 0)
      ::_exit(127);
    ::execl(gnuplot.c_str(), gnuplot.c_str(), script.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR)
      return 127;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// The busiest links first (ties: their order in the report), at most
// max_links_plotted of them.
std::vector<const series*> busiest_links(const summary& s) {
  std::vector<std::pair<double, std::size_t>> order;
  for (std::size_t i = 0; i < s.link_busy.size(); ++i) {
    double sum = 0;
    for (double v : s.link_busy[i].values)
      sum += v;
    order.push_back({-sum, i});
  }
  std::sort(order.begin(), order.end());
  std::vector<const series*> out;
  for (std::size_t i = 0; i < order.size() && i < max_links_plotted; ++i)
    out.push_back(&s.link_busy[order[i].second]);
  return out;
}

std::string timeline_data(const summary& s,
                          const std::vector<const series*>& links) {
  std::string out = "# time_s";
  for (auto* l : links)
    out += " \"" + l->name + "\"";
  out += " prefill_queue pool_queue\n";
  for (std::size_t b = 0; b < s.prefill_queue.values.size(); ++b) {
    out += fmt::format("{:.6f}", (double(b) + 0.5) * s.bucket_s);
    for (auto* l : links)
      out += fmt::format(" {:.3f}", l->values[b]);
    out += fmt::format(" {:.3f} {:.3f}\n", s.prefill_queue.values[b],
                       s.pool_queue.values[b]);
  }
  return out;
}

} // namespace

const char* plot_preamble =
    "set terminal pngcairo size 900,520 noenhanced "
    "font 'sans,10'\nset grid\nset key outside right top\n";

namespace {} // namespace

std::string cdf_plot(const std::string& png, const std::string& title,
                     const std::string& xlabel,
                     const std::vector<cdf_line>& lines) {
  std::vector<std::pair<std::string, std::string>> files_and_titles;
  for (auto& l : lines)
    if (l.data.find('\n') + 1 < l.data.size()) // a point past the header
      files_and_titles.push_back({l.file, l.title});
  if (files_and_titles.empty())
    return "";
  std::string out =
      fmt::format("set output {}\nset title {}\nset logscale x\nset xlabel {}\n"
                  "set ylabel 'fraction of requests'\nset yrange [0:1]\nplot ",
                  quoted(png), quoted(title), quoted(xlabel));
  for (std::size_t i = 0; i < files_and_titles.size(); ++i)
    out += fmt::format(
        "{}{} using 1:2 with lines lw 2 title {}", i ? ", \\\n     " : "",
        quoted(files_and_titles[i].first), quoted(files_and_titles[i].second));
  return out + "\nunset logscale x\nset yrange [*:*]\n";
}

namespace {

std::string timeline_plots(const std::vector<const series*>& links) {
  std::string out;
  if (!links.empty()) {
    out += "set output 'links.png'\nset title 'Link utilisation'\n"
           "set xlabel 'virtual time (s)'\nset ylabel 'busy %'\n"
           "set yrange [0:105]\nplot ";
    for (std::size_t i = 0; i < links.size(); ++i)
      out += fmt::format("{}'timeline.dat' using 1:{} with lines title {}",
                         i ? ", \\\n     " : "", i + 2, quoted(links[i]->name));
    out += "\nset yrange [*:*]\n";
  }
  auto col = links.size() + 2;
  out += fmt::format(
      "set output 'queues.png'\nset title 'Queue lengths'\n"
      "set xlabel 'virtual time (s)'\nset ylabel 'requests (mean)'\n"
      "plot 'timeline.dat' using 1:{} with lines lw 2 title "
      "'waiting for a prefill GPU', \\\n     'timeline.dat' using 1:{} with "
      "lines lw 2 title 'waiting for KV-pool blocks'\n",
      col, col + 1);
  return out;
}

} // namespace

std::string cdf_data(const histogram& h) {
  std::string out = "# ms fraction\n";
  if (h.count() == 0)
    return out;
  for (int i = 0; i <= cdf_points; ++i) {
    double p = double(i) / cdf_points;
    double ms = double(h.quantile(p)) / 1e6;
    if (ms > 0) // a log axis
      out += fmt::format("{:.3f} {:.3f}\n", ms, p);
  }
  return out;
}

std::string draw(const std::string& dir, const std::string& script,
                 const std::string& what) {
  auto gnuplot = find_on_path("gnuplot");
  if (gnuplot.empty())
    return fmt::format("plots skipped: gnuplot is not installed (Debian: "
                       "apt-get install gnuplot-nox); their data and script "
                       "are in {}/ (gnuplot {})",
                       dir, script);
  int status = run_gnuplot(gnuplot, dir, script);
  if (status != 0)
    return fmt::format("plots skipped: {} {} in {} exited with status {}",
                       gnuplot, script, dir, status);
  return fmt::format("plots: {} in {}", what, dir);
}

void write_cdfs(const std::string& dir, const std::vector<cdf_line>& lines) {
  for (auto& l : lines)
    write_text(dir + "/" + l.file, l.data);
}

std::string write_plots(const summary& s, const std::string& dir) {
  std::vector<cdf_line> ttft = {
      {"ttft-cdf.dat", "TTFT", cdf_data(s.ttft.total)}};
  std::vector<cdf_line> transfer = {
      {"transfer-cdf.dat", "whole transfer", cdf_data(s.transfer_time)},
      {"transfer-exposed-cdf.dat", "exposed after prefill",
       cdf_data(s.ttft.transfer)}};
  write_cdfs(dir, ttft);
  write_cdfs(dir, transfer);
  auto links = busiest_links(s);
  write_text(dir + "/timeline.dat", timeline_data(s, links));
  std::string script = plot_preamble;
  script += cdf_plot("ttft-cdf.png", "Time to first token", "TTFT (ms)", ttft);
  script += cdf_plot("transfer-cdf.png", "KV transfer time",
                     "time (ms; zero values are left out)", transfer);
  script += timeline_plots(links);
  write_text(dir + "/plots.gp", script);
  return draw(dir, "plots.gp",
              std::string("ttft-cdf.png, transfer-cdf.png, ") +
                  (links.empty() ? "" : "links.png, ") + "queues.png");
}

} // namespace kvferry::sim
