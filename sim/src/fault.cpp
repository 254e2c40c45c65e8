// The `--fault` flag's text, also the form of the topology's `sim.faults`
// entries (docs/sim.md, "Faults").
#include <cstdlib>
#include <stdexcept>

#include <fmt/format.h>

#include "kvferry/sim/sim.hpp"

namespace kvferry::sim {

namespace {

// A number >= 0 (a trailing "s" allowed for seconds), all of `text`.
double number(const std::string& what, const std::string& key,
              std::string text) {
  if (key == "at" && !text.empty() && text.back() == 's')
    text.pop_back();
  char* end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(value >= 0))
    throw std::invalid_argument(what + ": " + key +
                                " must be a number >= 0, not '" + text + "'");
  return value;
}

} // namespace

fault parse_fault(const std::string& text, const std::string& origin) {
  fault f;
  f.text = text;
  f.origin = origin;
  auto what = origin + " " + text; // what an error starts with
  bool has_at = false, has_gbit = false;
  std::size_t start = 0;
  while (start <= text.size()) {
    auto comma = text.find(',', start);
    auto item = text.substr(
        start, comma == std::string::npos ? std::string::npos : comma - start);
    start = comma == std::string::npos ? text.size() + 1 : comma + 1;
    auto eq = item.find('=');
    auto key = item.substr(0, eq);
    auto value = eq == std::string::npos ? "" : item.substr(eq + 1);
    if (key == "down" || key == "slow") {
      f.what =
          key == "down" ? fault::kind::worker_down : fault::kind::link_slow;
      f.target = value;
    } else if (key == "at") {
      f.at_s = number(what, key, value);
      has_at = true;
    } else if (key == "gbit") {
      f.gbit_per_s = number(what, key, value);
      has_gbit = true;
    } else {
      throw std::invalid_argument(what + ": unknown key '" + key +
                                  "' (down=WORKER,at=SECONDS or "
                                  "slow=HOST,gbit=RATE,at=SECONDS)");
    }
  }
  if (f.target.empty() || !has_at)
    throw std::invalid_argument(what + ": needs down=WORKER,at=SECONDS or "
                                       "slow=HOST,gbit=RATE,at=SECONDS");
  if (f.what == fault::kind::link_slow && !(has_gbit && f.gbit_per_s > 0))
    throw std::invalid_argument(what +
                                ": slow=HOST needs gbit=RATE > 0 (the host's "
                                "NIC rate from then on, Gbit/s)");
  return f;
}

std::vector<fault> topology_faults(const topology::deployment& t) {
  std::vector<fault> out;
  for (const auto& entry : t.sim.faults)
    out.push_back(
        parse_fault(entry.text, entry.where.str() + ": sim.faults entry"));
  return out;
}

std::vector<fault> checked_faults(const topology::deployment& t,
                                  const run_options& options) {
  auto faults = topology_faults(t);
  faults.insert(faults.end(), options.faults.begin(), options.faults.end());
  for (auto& f : faults) {
    bool found = false;
    if (f.what == fault::kind::worker_down) {
      for (auto& w : t.workers)
        found = found || w.name == f.target;
    } else {
      for (auto& h : t.hosts)
        found = found || h.name == f.target;
    }
    if (!found)
      throw std::runtime_error(fmt::format(
          "{} {}: {} has no {} named '{}'", f.origin, f.text, t.source_file,
          f.what == fault::kind::worker_down ? "worker" : "host", f.target));
  }
  return faults;
}

} // namespace kvferry::sim
