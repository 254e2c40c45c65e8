#include "kvferry/actors/ipc_quarantine.hpp"

namespace kvferry {

ipc_quarantine::token ipc_quarantine::hold(const std::string& peer,
                                           std::uint64_t transfer,
                                           clock::time_point now) {
  auto t = next_++;
  holds_.emplace(t, entry{{peer, transfer}, now, false});
  return t;
}

std::vector<ipc_quarantine::hold_ref>
ipc_quarantine::take_unasked(const std::string& peer) {
  std::vector<hold_ref> out;
  for (auto& [t, e] : holds_)
    if (!e.asked && e.what.first == peer) {
      e.asked = true;
      out.push_back({t, e.what.second});
    }
  return out;
}

void ipc_quarantine::ask_again(token t) {
  if (auto i = holds_.find(t); i != holds_.end())
    i->second.asked = false;
}

bool ipc_quarantine::release(token t) {
  auto i = holds_.find(t);
  if (i == holds_.end())
    return false;
  end(i);
  return true;
}

template<class Pred>
std::size_t ipc_quarantine::release_if(Pred pred) {
  std::size_t n = 0;
  for (auto i = holds_.begin(); i != holds_.end();) {
    auto next = std::next(i);
    if (pred(i->second)) {
      end(i);
      ++n;
    }
    i = next;
  }
  return n;
}

std::size_t ipc_quarantine::release_peer(const std::string& peer) {
  return release_if([&](const entry& e) { return e.what.first == peer; });
}

std::size_t ipc_quarantine::release_unasked(const std::string& peer) {
  return release_if(
      [&](const entry& e) { return e.what.first == peer && !e.asked; });
}

// Erases the hold, then runs the waiters of its transfer if no other hold
// of it is left. Waiters are taken out before they run: one may call back.
void ipc_quarantine::end(std::map<token, entry>::iterator i) {
  auto what = i->second.what;
  holds_.erase(i);
  if (holds(what.first, what.second))
    return;
  auto [first, last] = waiters_.equal_range(what);
  std::vector<std::function<void()>> ready;
  for (auto w = first; w != last; ++w)
    ready.push_back(std::move(w->second));
  waiters_.erase(first, last);
  for (auto& settled : ready)
    settled();
}

void ipc_quarantine::when_settled(const std::string& peer,
                                  std::uint64_t transfer,
                                  std::function<void()> settled) {
  if (!holds(peer, transfer)) {
    settled();
    return;
  }
  waiters_.emplace(key{peer, transfer}, std::move(settled));
}

bool ipc_quarantine::holds(const std::string& peer,
                           std::uint64_t transfer) const {
  for (const auto& [t, e] : holds_)
    if (e.what.first == peer && e.what.second == transfer)
      return true;
  return false;
}

ipc_quarantine::clock::time_point ipc_quarantine::since(token t) const {
  auto i = holds_.find(t);
  return i == holds_.end() ? clock::time_point{} : i->second.since;
}

} // namespace kvferry
