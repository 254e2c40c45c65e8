// The transfer actor's state and the functions its three files share
// (private to actors/). transfer.cpp: the behaviour, the progress loop and
// the deadlines; transfer_net.cpp: the plugin path (channels);
// transfer_ipc.cpp: the CUDA IPC path and its quarantine.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_addr.hpp>
#include <caf/error.hpp>
#include <caf/typed_response_promise.hpp>

#include "gpu_knobs.hpp"
#include "ipc_test_hold.hpp"
#include "kvferry/actors/actors.hpp"
#include "kvferry/actors/ipc_quarantine.hpp"
#include "kvferry/actors/ipc_table.hpp"
#include "kvferry/actors/kv_layout.hpp"
#include "kvferry/actors/plan.hpp"
#include "kvferry/actors/transfer.hpp"
#include "kvferry/runtime/metrics.hpp"
#include "kvferry/runtime/node_shelf.hpp"
#include "kvferry/runtime/steady_ns.hpp"
#include "kvferry/transport/channel.hpp"
#include "kvferry/transport/gpu_copy.hpp"
#include "kvferry/transport/gpu_memory.hpp"
#include "transfer_wake.hpp"

namespace kvferry::transfer_detail {

using std::chrono::steady_clock;
using transport::channel_connector;
using transport::channel_listener;
using transport::op_id;
using transport::recv_channel;
using transport::registration;
using transport::send_channel;

using byte_promise = caf::typed_response_promise<std::uint64_t>;
using report_promise = caf::typed_response_promise<proto::recv_report>;
// The caller of a node's request of one part (an offered pull, a receive),
// whose request the node handed here with the recv order: answered with the
// node_report of `request_id` when the last byte landed, and `node` told aside
// (node_answered_atom). `failure`: the node failed the request meanwhile
// (settle_atom with a reason); the caller gets it instead, once nothing more of
// the transfer can land.
struct answer_waiter {
  caf::typed_response_promise<proto::node_report> promise;
  std::uint64_t request_id = 0;
  caf::actor node;
  caf::error failure;
};
// A send of an endpoint's order_batch: settled into
// transfer_state::settled_out for the batch's sender, `to`, which hears of
// it at the next flush (settled_atom), together with what else settled.
struct batch_waiter {
  caf::actor to;
  std::uint64_t transfer_id = 0;
};
// An incoming write whose writer (an endpoint's control actor) wants our
// word once every byte landed, or why not (announcement::answer_to): put in
// transfer_state::answers_out, which leaves at the next flush.
struct peer_answer {
  caf::actor to;
  std::uint64_t transfer_id = 0;
};
// Who waits for a transfer: a send order (replies bytes), a recv order
// (replies a recv_report), a node's caller (answer_waiter), an endpoint's
// batched order (batch_waiter) or the writing endpoint (peer_answer).
using waiter_promise = std::variant<byte_promise, report_promise, answer_waiter,
                                    batch_waiter, peer_answer>;

using runtime::steady_ns;

// Each transfer entry's own number: a deadline names the entry it was armed
// for, so a deadline left over from an earlier transfer under the same id
// (request ids repeat: every demo run starts at 0) cannot fail a new one.
inline std::uint64_t next_transfer_generation() {
  static std::atomic<std::uint64_t> next{0};
  return ++next;
}

// When a transfer entry (or a held offer) runs out of time. It lives in the
// entry, so it goes with it: a finished transfer leaves no deadline behind,
// and arming one allocates nothing; the sweep (transfer.cpp) walks the
// entries, which are only what is in flight or waits for its claim. An entry
// is armed at most twice (an unclaimed arrival's 30 s, then its recv
// order's): `next` is the earliest not yet passed, `last` the latest, so an
// entry that outlives its first deadline (failed, kept for a later recv
// order) still meets its second, as when each deadline was kept apart.
struct entry_deadline {
  using time_point = steady_clock::time_point;
  static constexpr time_point none = time_point::max();
  time_point next = none;
  time_point last = none;

  bool armed() const { return next != none; }
  void arm(time_point at) {
    next = armed() ? std::min(next, at) : at;
    last = last == none ? at : std::max(last, at);
  }
  /// `next` passed: the later one, if any, comes next.
  void pass() {
    next = last > next ? last : none;
    if (next == none)
      last = none;
  }
};

struct transfer_entry {
  std::uint64_t generation = next_transfer_generation();
  entry_deadline deadline;
  std::uint64_t bytes = 0;    // done so far
  std::uint64_t expected = 0; // announced or ordered
  std::size_t ops_left = 0;
  bool posted = false; // plugin requests exist for it
  bool done = false;
  caf::error failure;     // set once failed (receiver side, unclaimed)
  bool cancelled = false; // receiver gave up; bytes must not land
  std::optional<waiter_promise> waiter;
  // Sending side: whom the receiver answers (send_order::answer_to), and
  // whether our CUDA IPC kernel writes the peer's memory (done = landed).
  caf::actor answer_to;
  bool over_ipc = false;
  // On a pull lane (transfer_lane.cpp): its chunks go over the lane, not
  // the peer's announced channel. `short_landed`: its receives ended with
  // fewer bytes than ordered (the sender refused the order and sent empty
  // chunks): it fails with the sender's reason once that comes.
  bool on_lane = false;
  bool short_landed = false;
  // When this actor first learned of the transfer (order or announcement)
  // and when it finished: the data window a recv_report gives.
  steady_clock::time_point started = steady_clock::now();
  steady_clock::time_point finished;
  steady_clock::time_point announced; // plugin path: the announcement came
  // CUDA IPC: launch to kernel start, and the kernel's GPU time (0: unknown).
  std::int64_t gpu_queued_ns = 0;
  std::int64_t gpu_copy_ns = 0;
};

// A node's offered pull, held until its caller pulls (transfer_pull.cpp):
// the prefill's offer, both layouts ready for planning, and the node's
// reason if it failed the request before the caller pulled.
struct held_offer {
  std::uint64_t generation = next_transfer_generation();
  entry_deadline deadline;
  proto::pull_offer offer;
  kv_layout src, dst;
  caf::error failure;
};

inline proto::recv_report report_of(const transfer_entry& t) {
  auto announced = t.announced == steady_clock::time_point{}
                       ? std::int64_t{0}
                       : steady_ns(t.announced);
  return {t.bytes,       steady_ns(t.started), steady_ns(t.finished),
          t.gpu_copy_ns, t.gpu_queued_ns,      announced};
}

// A pull lane (transfer_lane.cpp): a channel of its own from a prefill's
// transfer actor to a decode's, carrying only the offered pulls the decode
// ordered, so that the decode can post a pull's receives before its order
// leaves and the prefill posts the sends without announcing them. `id`:
// channel_id_of its listen handles, the same at both ends (0: none).
// `ops`: each posted operation's transfer.
struct lane_in { // the decode's end: it listens
  std::uint64_t id = 0;
  caf::actor sender;                 // the prefill's transfer actor
  std::vector<char> handles_to_send; // until the first order carries them
  steady_clock::time_point accept_deadline;
  std::unique_ptr<channel_listener> listener;
  std::optional<recv_channel> channel;
  std::vector<registration> regs; // after channel: destroyed before it
  struct receive {
    std::uint64_t id;
    std::vector<extent> chunks;
  };
  std::deque<receive> waiting; // posted in order once accepted
  std::unordered_map<op_id, std::uint64_t> ops;
};

struct lane_out { // the prefill's end: it connects
  std::uint64_t id = 0;
  steady_clock::time_point connect_deadline;
  std::unique_ptr<channel_connector> connector;
  std::optional<send_channel> channel;
  std::vector<registration> regs; // after channel: destroyed before it
  struct send {
    std::uint64_t id;
    std::vector<extent> chunks;
    bool refused = false; // empty sends, one per chunk the receiver posted
  };
  std::deque<send> waiting; // posted in order once connected
  std::unordered_map<op_id, std::uint64_t> ops;
};

// Sending side of one peer.
struct peer_out {
  proto::endpoint ep;
  bool opening = false;
  std::uint64_t channel_id = 0; // see channel_id_of; 0: none (yet)
  steady_clock::time_point connect_deadline;
  std::unique_ptr<channel_connector> connector;
  std::optional<send_channel> channel;
  // One per region of the table; declared after channel: destroyed before it.
  std::vector<registration> regs;
  struct waiting_send {
    std::uint64_t id;
    std::vector<extent> chunks;
    std::uint64_t wait_event = 0; // CUDA IPC: the copy stream waits for it
  };
  std::deque<waiting_send> waiting;
  // Announcements of transfers started on the channel, not sent yet: they
  // leave as one announce_batch at the next flush (transfer_net.cpp,
  // "Ordering"), before anything else this actor sends the peer's; their
  // sends (`unposted`, in the same order) are posted right after.
  proto::announce_batch unannounced;
  std::vector<waiting_send> unposted;
  std::unordered_map<op_id, std::uint64_t> ops;
  std::unordered_map<std::uint64_t, transfer_entry> transfers;
  std::uint32_t next_comm = 0;
  // CUDA IPC (same-host GPU peer): its region table mapped here (each
  // region's address in this process), the copies in flight and the sends
  // waiting for a free engine slot. The same struct serves one-sided reads
  // from a peer (transfer_state::reads): no channel, copies only.
  std::optional<address_table> mapped;
  struct ipc_copy {
    transport::copy_ticket ticket;
    std::uint64_t id;
    steady_clock::time_point launched; // the receiver's data window starts
  };
  std::vector<ipc_copy> copies;
  std::deque<waiting_send> ipc_waiting;
  bool said_hello = false; // ipc_hello sent to the peer
  lane_out lane;
};

// Receiving side of one peer.
struct peer_in {
  caf::actor_addr sender;
  std::uint64_t channel_id = 0; // see channel_id_of; 0: none
  steady_clock::time_point accept_deadline;
  std::unique_ptr<channel_listener> listener;
  std::optional<recv_channel> channel;
  std::vector<registration> regs; // one per region of the table
  std::deque<proto::announcement> waiting;
  std::unordered_map<op_id, std::uint64_t> ops;
  std::unordered_map<std::uint64_t, transfer_entry> transfers;
  lane_in lane;
};

/// KVFERRY_PULL_LANES=1: the decode's transfer actor posts an offered
/// pull's receives on a pull lane before its send order leaves (no
/// announcement). While they wait for the order's CAF leg the progress
/// loop polls them at a short period; the plugin never sleeps in test()
/// for this actor (channel_options::caller_polls), so messages to it no
/// longer wait behind the pull. Still off by default: with lanes on,
/// test_node_actors' "a failed offered pull settles first" fails now and
/// then (docs/embedding.md, "What a request costs"). The prefill side
/// serves lane orders either way.
bool pull_lanes_from_env();
bool wake_from_env();

/// How long the progress loop keeps polling after its last activity (work
/// handed to it, or news from the plugin) even with nothing out yet: a
/// pull's announcement, a peer's next order or the bytes of a posted
/// receive then find the thread awake, with no futex wake-up and no wake
/// watch on their path (each costs 5-20 us on a cloud VM). The price is a
/// core busy for that long after each transfer. KVFERRY_HOT_US sets it
/// (0: off); by default `hot_window_for(usable cores, detached)`.
std::chrono::microseconds hot_window_from_env(bool detached);
std::chrono::microseconds hot_window_for(unsigned cores, bool detached);

struct transfer_state {
  transfer_config cfg;
  // The region table (plan.hpp): cfg.region, then cfg.more_regions.
  std::vector<std::shared_ptr<memory_region>> regions;
  std::vector<std::uint64_t> region_sizes;
  // A send order's peer table, laid out for its check (check_send_extents);
  // kept, so that a check allocates nothing once it has room.
  std::vector<std::uint64_t> order_peer_sizes;
  // The nodes of ended transfers' entries and of completed plugin requests
  // (peer_out and peer_in: transfers, ops), for the next ones: a node per
  // transfer and per request otherwise.
  node_shelf<std::unordered_map<std::uint64_t, transfer_entry>> entry_nodes;
  node_shelf<std::unordered_map<op_id, std::uint64_t>> op_nodes;
  std::unordered_map<std::string, peer_out> out;
  std::unordered_map<std::string, peer_in> in;
  proto::transfer_stats stats;
  // Prometheus series (served when the process runs an exporter); per-peer
  // handles are looked up once and then updated lock-free.
  metrics::transfer_metrics metrics;
  bool progress_scheduled = false;
  // Each progress message carries the loop's generation. New work while a
  // backed-off (delayed) poll is pending starts a new generation with an
  // immediate poll; the delayed message, now stale, is ignored when it
  // fires, so there is never more than one loop.
  std::uint64_t progress_generation = 0;
  bool progress_delayed = false;
  // The loop's idle policy (transfer.cpp): when it last had news (new work
  // or a completion; with pull lanes), and how many polls found nothing.
  steady_clock::time_point busy_at = steady_clock::now();
  unsigned idle_polls = 0;
  // Where this actor polls its comms itself (polls_itself) and the plugin
  // offers wait descriptors: the thread that sleeps on them for it (made
  // at first need; null when it could not start, and the loop polls), and
  // whether the poll under way came from its wake (one that finds nothing
  // arms nothing at once).
  std::unique_ptr<wake_watch> wakes;
  bool wakes_failed = false;
  bool woken = false;
  // An announce_flush message is on its way (queue_announcement).
  bool announce_flush_scheduled = false;
  // Batched orders that settled (batch_waiter), per batch sender, not yet
  // sent; a settled_flush message is on its way while any are. `me`: this
  // actor, for that message (the settling code has no self pointer).
  std::vector<std::pair<caf::actor, std::vector<proto::order_settled>>>
      settled_out;
  // Writes that landed here (or failed), answered to their writers' control
  // actors (peer_answer), one batch each, at the same flush.
  std::vector<std::pair<caf::actor, proto::ep_batch>> answers_out;
  bool settled_flush_scheduled = false;
  caf::actor_addr me;
  // Transfer deadlines live in their entries (entry_deadline); one short
  // periodic sweep checks them while any is armed (arm_deadline). `due`: the
  // sweep's finds, handled after its walk (handling one may drop a peer);
  // kept for its capacity.
  struct due_deadline {
    steady_clock::time_point at;
    char kind; // '>' send, '<' receive, '^' read, '?' offer
    std::string peer;
    std::uint64_t id;
    std::uint64_t generation;
  };
  std::vector<due_deadline> due;
  bool sweep_scheduled = false;
  // CUDA IPC: made on the first same-host GPU send, used from this actor's
  // thread only. ipc_handle is our table's (ipc_table_to_text), advertised
  // in the endpoint; local_addresses our regions' addresses (every copy's
  // source, or a read's destination).
  std::string ipc_handle;
  address_table local_addresses;
  // layout_of's offsets for a copy's two sides (reused, launch_ipc_copy).
  std::vector<std::uint64_t> src_layout, dst_layout;
  // cuda when every region is GPU memory on region 0's GPU (IPC possible).
  memory_kind ipc_kind = memory_kind::host;
  // One-sided reads over CUDA IPC, per peer we read from (transfer ids of
  // their own: a read and a push with one id are different transfers).
  std::unordered_map<std::string, peer_out> reads;
  // Plugin sends whose order carried a CUDA event: posted once it completed
  // (polled by the progress loop, never waited for).
  struct event_wait {
    std::string peer;
    std::uint64_t id;
    std::vector<extent> extents;
    std::uint64_t event;
  };
  std::vector<event_wait> event_waits;
  std::unique_ptr<transport::ipc_region_cache> ipc_regions;
  std::unique_ptr<transport::gpu_copy_engine> engine;
  std::size_t ipc_in_flight = 0;
  bool spin_while_copying = detail::ipc_spin_while_copying();
  std::string ipc_test_hold = detail::ipc_test_hold_file(); // tests only
  // CUDA IPC quarantine, sending side: copies whose transfer is gone (timed
  // out here, or the peer was dropped) but whose kernel may still run, and
  // receivers' status questions waiting for such a kernel to end.
  struct orphan_copy {
    std::string peer;
    peer_out::ipc_copy copy;
    bool read = false; // a read's kernel (writes our own region)
  };
  std::vector<orphan_copy> ipc_orphans;
  struct status_waiter {
    std::string peer;
    std::uint64_t id;
    caf::typed_response_promise<caf::ok_atom> promise;
    bool read = false; // a settle: a failed read's kernel, a posted recv
  };
  std::vector<status_waiter> status_waiters;
  // Transfers a receiver gave up on before their send order reached us
  // (peer -> (id, when)): a send order for one that comes later is stale
  // (e.g. its producer was stuck on a hung GPU) and is refused once, so that
  // it cannot write into blocks the receiver has reused.
  std::unordered_map<
      std::string,
      std::deque<std::pair<std::uint64_t, steady_clock::time_point>>>
      given_up;
  // Receiving side: timed-out transfers a sender's kernel may still write,
  // and the transfer actors of workers the directory announced (to ask them).
  ipc_quarantine quarantine;
  std::unordered_map<std::string, caf::actor_addr> known_transfers;
  // Holds whose sender was asked, and which actor: its down message ends
  // them (whatever became of the name meanwhile).
  struct asked_hold {
    caf::actor_addr sender;
    std::string peer;
    ipc_quarantine::hold_ref hold;
  };
  std::unordered_map<ipc_quarantine::token, asked_hold> asked;
  metrics::gauge* quarantine_gauge = &metrics::registry::global().get_gauge(
      "kvferry_ipc_quarantined_transfers",
      "Timed-out CUDA IPC transfers whose destination stays out of use until "
      "their sender confirms no copy kernel still writes it");
  std::int64_t quarantine_reported = 0; // our share of the gauge
  ~transfer_state() { quarantine_gauge->sub(quarantine_reported); }
  // kvferry::node (transfer_pull.cpp): the node actor this actor serves
  // offered pulls for (node_attach_atom), and the offers it handed here,
  // by (prefill node, transfer id), until pulled or expired ("?peer").
  caf::actor node;
  std::map<std::pair<std::string, std::uint64_t>, held_offer> offers;
  std::vector<extent> pull_plan; // plan_kv's output, reused
  // Offered pulls go over pull lanes (transfer_lane.cpp) only with
  // KVFERRY_PULL_LANES=1 (pull_lanes_from_env).
  bool pull_lanes = pull_lanes_from_env();
  // Unless KVFERRY_WAKE=0: where the plugin offers wait descriptors the
  // loop polls its comms itself and sleeps on them (polls_itself).
  bool wake_env = wake_from_env();
  // How long it stays hot (hot_window_from_env, set with cfg); 0 where it
  // does not poll itself (polls_itself).
  std::chrono::microseconds hot_window{0};
  static inline const char* name = "kvferry.transfer";
};

/// Whether this actor polls its plugin comms itself (channel_options::
/// caller_polls, schedule_caller_polls) instead of letting the plugin's
/// test() sleep: with pull lanes, and wherever the plugin offers wait
/// descriptors (net_ext.h, getWaitFd; kvsock does) unless KVFERRY_WAKE=0.
/// Its thread then never waits inside the plugin, so a message to it never
/// waits behind a test(); the wake watch (transfer_wake.hpp) sleeps on the
/// comms instead.
bool polls_itself(const transfer_state& st);

// Below the engine's 64 event slots, so a launch never finds them all busy.
constexpr std::size_t max_ipc_copies = 48;

using self_ptr = transfer_actor::stateful_pointer<transfer_state>;

// ---- transfer.cpp: bookkeeping every path shares

/// The region table of `cfg` (region, then more_regions). Throws
/// std::invalid_argument naming the region when one is missing or not
/// smaller than max_region_bytes (spawn_transfer calls it first).
std::vector<std::shared_ptr<memory_region>>
region_table_of(const transfer_config& cfg);

caf::error lost(const std::string& peer, const std::string& why);

/// New work: poll now (see transfer.cpp).
void ensure_progress(self_ptr self);

/// Fails the transfer (or expires the held offer) whose entry holds `d`
/// unless it completed within `timeout` (the sweep, transfer.cpp).
void arm_deadline(self_ptr self, std::chrono::milliseconds timeout,
                  entry_deadline& d);

/// This actor's endpoint (endpoint_atom): peers address it by it.
proto::endpoint endpoint_of(self_ptr self);

/// check_table_extents for a plugin send order: its extents against our
/// table and the peer's as the order names it.
std::optional<std::string> check_send_extents(transfer_state& st,
                                              const proto::send_order& o);

/// A recv order claims its transfer for `waiter`: answered at once when the
/// transfer ended before the order came, else when it ends.
void claim_recv(self_ptr self, const proto::recv_order& o,
                waiter_promise waiter);

/// Sends every batch sender its list of settled orders (batch_waiter) now.
void send_settled(transfer_state& st);

/// `finished`: when the last byte moved, if known better than "now" (an IPC
/// copy completes in the sender's process before we hear of it).
void finish(transfer_entry& t, transfer_state& st, bool incoming,
            const std::string& peer,
            std::optional<steady_clock::time_point> finished = std::nullopt);

void fail(transfer_entry& t, transfer_state& st, const caf::error& err,
          const std::string& peer);

/// Fails everything sent to `name` and forgets its channel (the next send
/// opens a fresh one).
void drop_peer_out(self_ptr self, const std::string& name,
                   const caf::error& err);

/// Fails everything awaited from `name` and closes its channel.
void drop_peer_in(self_ptr self, const std::string& name,
                  const caf::error& err);

// ---- transfer_table.cpp: the region table at runtime (endpoint)

/// Region `index`'s memory at `offset`; throws std::runtime_error when the
/// region was removed meanwhile (callers drop the channel, failing its
/// transfers).
std::uint8_t* region_data(const transfer_state& st, std::size_t index,
                          std::uint64_t offset);

caf::result<std::uint64_t> handle_add_region(self_ptr self,
                                             std::uint64_t address,
                                             std::uint64_t bytes,
                                             std::int32_t gpu);

caf::result<caf::ok_atom> handle_remove_region(self_ptr self,
                                               std::uint64_t index);

// ---- transfer_net.cpp: the plugin path

/// Registers `region` (whole) with `channel`; an empty registration for a
/// removed region (nullptr).
registration register_region(transfer_state& st, transport::channel& channel,
                             const memory_region* region);

/// Sends `extents` of transfer `id` to `peer` (`p`) over its channel,
/// opening the channel first if there is none. The list is coalesced in
/// place into the send's chunks and goes back to extent_lists once they are
/// posted.
void start_plugin_send(self_ptr self, const std::string& peer, peer_out& p,
                       std::uint64_t id, std::vector<extent> extents);

/// A batch of announcements from a sender: each handled in turn.
void handle_announce_batch(self_ptr self, proto::announce_batch& b);

/// Sends the announcements that piled up for `p` (peer_out::unannounced)
/// to its transfer actor: call before anything else goes to that actor.
/// Their sends wait for the flush message (or go with the channel).
void send_announcements(self_ptr self, peer_out& p);

/// The flush message (announce_flush_atom): every peer's pile goes, then
/// its transfers' sends are posted.
void on_announce_flush(self_ptr self);

std::vector<char> handle_open(self_ptr self, const std::string& sender,
                              std::uint32_t comms, std::uint64_t chunk);

/// Tells `other`, the transfer actor at the other end of channel
/// `channel_id`, that this end is gone (drop_peer_out and drop_peer_in call
/// it), so that it drops its end at once instead of when its next request
/// fails.
void tell_closed(self_ptr self, const caf::actor& other,
                 std::uint64_t channel_id, const caf::error& why);

/// `peer` dropped its end of channel `channel_id`: drop ours if it is the
/// same channel (a newer one stays).
void handle_closed(self_ptr self, const std::string& peer,
                   std::uint64_t channel_id, const caf::error& why);

/// Connects and polls the send channel of `p`; sets `failure` when the
/// channel is lost. Throws what the plugin throws.
bool progress_send_channel(self_ptr self, const std::string& name, peer_out& p,
                           std::optional<caf::error>& failure);

/// Accepts and polls the receive channel of `p`, likewise.
bool progress_recv_channel(self_ptr self, const std::string& name, peer_in& p,
                           std::optional<caf::error>& failure);

/// Every region of the table, whole, registered with a new channel.
std::vector<registration> register_regions(transfer_state& st,
                                           transport::channel& channel);

/// A channel's id from its listen handles (both ends compute it).
std::uint64_t channel_id_of(const std::vector<char>& flat_handles);

transport::channel_options options_for(const transfer_state& st,
                                       const std::string& peer,
                                       std::uint32_t comms,
                                       std::uint64_t chunk);

/// Drops the receive channel from `sender` (failing what was announced on
/// it) but keeps the recv orders that await an announcement; its pull lane
/// stays.
void drop_previous_channel(self_ptr self, const std::string& sender,
                           const caf::error& err);

// ---- transfer_lane.cpp: pulls without an announcement (pull lanes)

/// Decode side: the prefill at `src` takes the pull over the plugin (no
/// CUDA IPC between the two), so it may go over a lane.
bool lane_fits(self_ptr self, const proto::endpoint& src);

/// Decode side: posts the receives of pull `id` from `peer` on its lane
/// (made now if there is none) and marks `o` for it. False when the lane
/// cannot take it (an entry of that id exists, or no lane could be made):
/// the order then goes announced. Throws nothing.
bool post_lane_pull(self_ptr self, const std::string& peer, std::uint64_t id,
                    const caf::actor& sender, proto::send_order& o);

/// Prefill side: a send order for a lane (o.lane != 0).
caf::result<std::uint64_t> handle_lane_send(self_ptr self,
                                            proto::send_order& o);

/// Drops the lane of `peer` (receiving or sending end), failing the
/// transfers on it and telling the other end.
void drop_lane_in(self_ptr self, const std::string& peer,
                  const caf::error& err);
void drop_lane_out(self_ptr self, const std::string& peer,
                   const caf::error& err);

/// The decode's caller of pull `id` got the prefill's reason (settle_answer):
/// a pull whose receives ended short fails with it now.
void settle_short(self_ptr self, const std::string& peer, std::uint64_t id);

/// Accepts/connects and polls the lanes of `p` (progress loop); sets
/// `failure` when the lane is lost. Throws what the plugin throws.
bool progress_lane_in(self_ptr self, const std::string& name, peer_in& p,
                      std::optional<caf::error>& failure);
bool progress_lane_out(self_ptr self, const std::string& name, peer_out& p,
                       std::optional<caf::error>& failure);

bool lane_has_work(const lane_in& l);
bool lane_has_work(const lane_out& l);

// ---- transfer_ipc.cpp: the CUDA IPC path and its quarantine

/// Our table's addresses and IPC export for the endpoint (stays empty
/// unless shareable); again after every change of the table at runtime.
void advertise_ipc_handle(transfer_state& st);

/// The peer as an order names it: the first order's endpoint, monitored; a
/// later order's when its table differs (an endpoint's table grows at
/// runtime), whose mapping is then made again on the next copy.
void adopt_peer(self_ptr self, peer_out& p, const proto::endpoint& ep);

void map_ahead(transfer_state& st, const worker_info& w);

/// Starts the CUDA IPC copy of a push; its stream waits for `wait_event`
/// (an event of this process, 0: none) first.
void start_ipc_send(self_ptr self, peer_out& p, std::uint64_t id,
                    std::vector<extent> extents, std::uint64_t wait_event);

/// Polls the copies of `p`, a push peer or (`read`) a peer read from.
bool progress_ipc(self_ptr self, const std::string& name, peer_out& p,
                  bool read = false);

void orphan_copies(transfer_state& st, const std::string& peer, peer_out& p,
                   std::optional<std::uint64_t> id = std::nullopt,
                   bool read = false);

bool progress_orphans(self_ptr self);

void answer_status_waiters(transfer_state& st);

std::size_t forget_waiting_ipc(peer_out& p, std::uint64_t id);

caf::error refuse_if_given_up(transfer_state& st, const std::string& peer,
                              std::uint64_t id);

caf::result<caf::ok_atom>
handle_ipc_status(self_ptr self, const std::string& peer, std::uint64_t id);

void handle_landed(self_ptr self, const proto::landed& l);

bool quarantines(const transfer_state& st);

void quarantine_transfer(self_ptr self, const std::string& peer,
                         std::uint64_t id);

void end_hold(self_ptr self, const std::string& peer,
              const ipc_quarantine::hold_ref& h, const std::string& why);

void release_quarantine_of(self_ptr self, const std::string& peer,
                           const std::string& why, bool unasked_only = false);

void ask_sender(self_ptr self, const std::string& peer);

caf::result<caf::ok_atom> handle_settle(self_ptr self, const std::string& peer,
                                        std::uint64_t id);

/// The node failed the request whose recv order (`peer`, `id`) answers its
/// caller (answer_waiter): the caller gets `why` once the order is
/// settled (at once when not announced yet, else when its receives end).
void settle_answer(self_ptr self, const std::string& peer, std::uint64_t id,
                   caf::error& why);

void handle_ipc_hello(self_ptr self, const std::string& name);

// ---- transfer_pull.cpp: a node's offered pulls, served here

/// Keeps the node's offer until its caller pulls (or its timeout passes).
void hold_offer(self_ptr self, proto::pull_offer& offer);

/// The caller's pull: served from its offer, else handed to the node.
caf::result<proto::node_report> handle_pull(self_ptr self,
                                            proto::node_request& req);

/// An offer's deadline ("?peer"): still not pulled, it goes back to the node.
void expire_offer(self_ptr self, const std::string& peer, std::uint64_t id,
                  std::uint64_t generation);

/// The node failed request (`peer`, transfer `id`) before its caller
/// pulled: the pull gets `why`. False when no such offer is held.
bool fail_offer(transfer_state& st, const std::string& peer, std::uint64_t id,
                const caf::error& why);

/// The current message comes from an actor of another process.
bool from_remote_sender(self_ptr self);

/// The error refusing an order whose wait_event came from another process
/// (a CUDA event is a pointer of the process that made it); none otherwise.
caf::error refuse_remote_event(self_ptr self, std::uint64_t wait_event,
                               const char* what, std::uint64_t id);

// One-sided reads (proto::read_order), in transfer_state::reads.
caf::result<proto::recv_report> handle_read(self_ptr self,
                                            proto::read_order& o);
void expire_read(self_ptr self, const std::string& peer, std::uint64_t id,
                 std::uint64_t generation);
void drop_reads(self_ptr self, const std::string& peer, const caf::error& err);
bool progress_reads(self_ptr self);

/// Plugin sends waiting for their order's CUDA event (event_waits).
bool progress_event_waits(self_ptr self);

/// Reads in flight or plugin sends waiting for an event: keep polling.
bool ipc_has_work(const transfer_state& st);

} // namespace kvferry::transfer_detail
