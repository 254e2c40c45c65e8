// The receiving side of the CUDA IPC quarantine (docs/gpu.md, "Timed-out
// IPC copies"): which timed-out transfers may still be written by a peer's
// copy kernel, whether their sender has been asked, and who waits for them
// to settle. A pure state machine; the transfer actor sends the messages.
//
// A hold is one timed-out transfer (peer, transfer id). It ends when the
// peer answers the ask made for it (`release`) or when the peer is gone
// (`release_peer`: down or left the directory). The same (peer, id) may be
// held more than once (a rerun with the same request id timed out again):
// each hold has its own token and its own ask, and (peer, id) is settled
// only when every hold of it has ended.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace kvferry {

class ipc_quarantine {
public:
  using clock = std::chrono::steady_clock;
  using token = std::uint64_t;

  struct hold_ref {
    token id = 0;
    std::uint64_t transfer = 0;
  };

  /// Starts holding transfer `transfer` from `peer` (not yet asked).
  token hold(const std::string& peer, std::uint64_t transfer,
             clock::time_point now);

  /// The holds of `peer` not asked yet, now marked asked (the caller asks).
  std::vector<hold_ref> take_unasked(const std::string& peer);

  /// The ask of hold `t` went unanswered in time: take_unasked returns it
  /// again. No-op once released.
  void ask_again(token t);

  /// The peer answered for hold `t`: it ends (waiters of its transfer run
  /// when it was the last hold). False if it had ended already.
  bool release(token t);

  /// The peer is gone: all its holds end. Returns how many there were.
  std::size_t release_peer(const std::string& peer);

  /// The peer left the directory (perhaps only its lease ran out): its
  /// holds nobody could ask end; those asked wait for the answer or the
  /// peer's death. Returns how many ended.
  std::size_t release_unasked(const std::string& peer);

  /// Runs `settled` once no hold of (peer, transfer) is left: at once when
  /// there is none now.
  void when_settled(const std::string& peer, std::uint64_t transfer,
                    std::function<void()> settled);

  bool holds(const std::string& peer, std::uint64_t transfer) const;
  /// Holds in force.
  std::size_t size() const { return holds_.size(); }
  /// Callbacks waiting in when_settled.
  std::size_t waiters() const { return waiters_.size(); }
  /// When hold `t` started; clock::time_point{} once released.
  clock::time_point since(token t) const;

private:
  using key = std::pair<std::string, std::uint64_t>;
  struct entry {
    key what;
    clock::time_point since;
    bool asked = false;
  };
  void end(std::map<token, entry>::iterator i);
  template<class Pred>
  std::size_t release_if(Pred pred);

  std::map<token, entry> holds_; // ordered: oldest first
  std::multimap<key, std::function<void()>> waiters_;
  token next_ = 1;
};

} // namespace kvferry
