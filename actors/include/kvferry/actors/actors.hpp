// Every actor interface of kvferry, in one place (the Tenzir/Broker style):
// the typed handle of each actor, i.e. the messages it takes and what it
// answers. Nothing else: each actor's configuration and factory have a
// header of their own (directory.hpp, membership.hpp, transfer.hpp, app.hpp
// for producer and consumer), its state a private one under actors/src/.
// The message types live in the runtime (kvferry/runtime/protocol.hpp), their
// type ids and the atoms in kvferry/runtime/type_ids.hpp, so that every
// process registers the same ids.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/fwd.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "kvferry/runtime/directory_types.hpp"
#include "kvferry/runtime/protocol.hpp"
#include "kvferry/runtime/type_ids.hpp"

namespace kvferry {

// ---- directory -------------------------------------------------------------
//
// One per deployment. Knows every worker's metadata (never bytes), answers
// lookups, pushes joins and leaves to watchers, and drops a worker whose
// app/transfer actor dies or whose lease runs out. Every request is answered
// with a value or an error (kvferry::ec); see docs/architecture.md.

/// The directory's interface.
using directory_actor = caf::typed_actor<
    // Registers `worker` under its name, authenticated by the deployment's
    // shared secret. Errors: unauthorized (wrong secret), duplicate (the name
    // is held by another live worker), invalid_argument (empty name, listen
    // handle not listen_handle_size bytes). Registering again with the same
    // app actor updates the entry. Renew before lease.duration passes.
    caf::replies_to<register_atom, worker_info, std::string>::with<lease>,
    // Extends the lease of (name, token). Errors: not_found, unauthorized.
    caf::replies_to<renew_atom, std::string, uint64_t>::with<caf::ok_atom>,
    // Removes (name, token); watchers get `left`. Errors: not_found,
    // unauthorized.
    caf::replies_to<leave_atom, std::string, uint64_t>::with<caf::ok_atom>,
    // One worker by name. Errors: not_found.
    caf::replies_to<lookup_atom, std::string>::with<worker_info>,
    // All workers, sorted by name.
    caf::replies_to<list_atom>::with<std::vector<worker_info>>,
    // The workers of one role, sorted by name.
    caf::replies_to<list_atom, worker_role>::with<std::vector<worker_info>>,
    // Subscribes `watcher` (any actor handling the two messages of
    // directory_watcher_actor): replies with the current members (sorted by
    // name); afterwards pushes (joined_atom, worker_info) and
    // (left_atom, std::string name, caf::error why). A dead watcher is dropped.
    caf::replies_to<watch_atom, caf::actor>::with<std::vector<worker_info>>,
    caf::replies_to<unwatch_atom, caf::actor>::with<caf::ok_atom>,
    // Internal: the lease timer of (name, token); a no-op if renewed since.
    caf::reacts_to<expire_atom, std::string, uint64_t>,
    // Internal: the stall watchdog's tick (see directory_options).
    caf::reacts_to<caf::tick_atom>>;

/// What a directory watcher must handle (pass it to `watch` as caf::actor,
/// e.g. caf::actor_cast<caf::actor>(self)).
using directory_watcher_actor =
    caf::typed_actor<caf::reacts_to<joined_atom, worker_info>,
                     caf::reacts_to<left_atom, std::string, caf::error>>;

// ---- transfer, producer, consumer ------------------------------------------
//
// The three actors that move one request's KV cache (see docs/design and
// runtime/protocol.hpp for the messages):
//
// Push with credit (the steady state): each consumer lends each producer a
// reserve of destination blocks ahead of time (`reserve` -> `grant`, asked on
// first contact and again when short, never on a request's critical path).
// A request covered by that credit makes no negotiation round trip: the
// router's two hops, and one producer -> consumer hop that travels while the
// bytes do (beside the transfer actors' announcement):
//
//   router --prefill--> producer  (takes lent blocks, fills, orders sends)
//   producer --send--> transfer ==bytes==> transfer <--recv-- consumer
//   producer --incoming (delegates the router's request)--> consumer
//   consumer --ready--> router    (verified; the reply comes from the
//                                  consumer, not the producer)
//
// Freed blocks flow back to that producer's credit in batches (`credit`).
// A failed send after delegating: producer --abort--> consumer, which fails
// the router's request with it. A router must therefore watch its consumers
// too (the directory's `left`, as the demo does): a dead consumer's requests
// are answered by nobody. The ready report may also reach the router before
// the producer's transfer actor reported the send done, i.e. before the
// request's source blocks are free again: a producer short of blocks then
// waits for them (it fails only a request larger than its whole pool), so
// size its pool above the router's requests in flight to avoid the wait.
//
// Push without enough credit (the first request to a consumer, or credit
// short): the old negotiation, replies through the producer:
//
//   router --prefill--> producer --allocate--> consumer
//                       producer <--grant----- consumer
//   producer --send--> transfer ==bytes==> transfer <--recv-- consumer
//                       producer --arrived--> consumer --ready--> (router)
//
// Pull: producer --advertise--> consumer, which asks the producer's transfer
// actor to send into the blocks it allocated, verifies, and answers ready.

/// One per device, detached (it polls the plugin). The only code that calls
/// the plugin for its device.
using transfer_actor = caf::typed_actor<
    // This actor's endpoint (name, handle, plugin), for grants and adverts.
    caf::replies_to<proto::endpoint_atom>::with<proto::endpoint>,
    // Send extents of the local region to a peer; replies bytes sent.
    caf::replies_to<proto::send_atom, proto::send_order>::with<std::uint64_t>,
    // Wait for a transfer from a peer to land; replies the bytes received
    // and this actor's view of when the transfer started and ended.
    caf::replies_to<proto::recv_atom,
                    proto::recv_order>::with<proto::recv_report>,
    // A node's request of one part over the plugin path (an offered pull,
    // a receive; node_actor): the node hands its caller's request here with
    // the recv order (caf delegate), so that this actor answers the caller
    // itself when the last byte landed, with the node_report of request
    // `request_id`, instead of through the node. The node `node` hears of
    // it aside: (node_answered_atom, peer, report, error: none on success).
    caf::replies_to<proto::recv_atom, proto::recv_order, std::uint64_t,
                    caf::actor>::with<proto::node_report>,
    // A node's offered pull (node_actor, "pull" below): the node attaches
    // itself once, then hands each offer here as it arrives; the caller's
    // pull, sent here (or by the node), is served here: planned, the send
    // order sent to the prefill's transfer actor, the caller answered as
    // above. A pull with no offer here goes to the node (delegate). An
    // offer nobody pulls within its timeout goes back to the node
    // (node_offer_atom, peer, id).
    caf::reacts_to<proto::node_attach_atom, caf::actor>,
    caf::reacts_to<proto::node_offer_atom, proto::pull_offer>,
    caf::replies_to<proto::node_pull_atom,
                    proto::node_request>::with<proto::node_report>,
    // One-sided read over CUDA IPC from a same-host peer's table into ours
    // (protocol.hpp, read_order); replies when the copy kernel finished.
    caf::replies_to<proto::read_atom,
                    proto::read_order>::with<proto::recv_report>,
    // Transfer actor to transfer actor: open a channel from `sender` with
    // (comms, chunk bytes); replies the listener's handles (128 B each).
    caf::replies_to<proto::open_atom, std::string, std::uint32_t,
                    std::uint64_t>::with<std::vector<char>>,
    // Transfer actor to transfer actor: the chunks of the transfers a sender
    // posted (or is about to post) since its last batch, in posting order.
    caf::reacts_to<proto::announce_atom, proto::announce_batch>,
    // Transfer actor to transfer actor: I, `name`, dropped my end of the
    // channel `id` between us (a hash of its listen handles), because of
    // `why`; drop yours and fail what is in flight on it. A notice about a
    // channel already replaced does nothing.
    caf::reacts_to<proto::closed_atom, std::string, std::uint64_t, caf::error>,
    // Transfer actor to transfer actor over CUDA IPC: the sender's copy
    // kernel finished writing a transfer into our region; completes the
    // waiting recv order.
    caf::reacts_to<proto::landed_atom, proto::landed>,
    caf::replies_to<proto::stats_atom>::with<proto::transfer_stats>,
    // CUDA IPC quarantine (docs/gpu.md, "Timed-out IPC copies"). Sender to
    // receiver, once per mapping of the receiver's pool: "I, `sender`, write
    // into your region over CUDA IPC" (so a receiver whose transfer from us
    // times out knows whom to ask).
    caf::reacts_to<proto::ipc_hello_atom, std::string>,
    // Receiver to sender: transfer `id` to receiver `name` timed out there;
    // answered once no copy kernel of it can still write into the
    // receiver's region (at once when none runs; one not yet launched is
    // cancelled).
    caf::replies_to<proto::ipc_status_atom, std::string,
                    std::uint64_t>::with<caf::ok_atom>,
    // A node (or consumer) to its own transfer actor, after a request with
    // transfer `id` from `peer` failed: answered once the destination
    // blocks are safe to reuse: a recv order not announced yet is given up
    // (late bytes are refused), one with receives posted is waited for, a
    // quarantined CUDA IPC copy is waited out; otherwise at once.
    caf::replies_to<proto::settle_atom, std::string,
                    std::uint64_t>::with<caf::ok_atom>,
    // ... and for a request whose caller this actor answers (above): the
    // node failed it because of `why`; the caller is answered with `why`
    // once the recv order is settled as above (at once when not announced
    // yet, else when its receives ended), the node told as on success.
    caf::reacts_to<proto::settle_atom, std::string, std::uint64_t, caf::error>,
    // Directory watcher (see directory_watcher_actor): a peer that left
    // fails everything waiting on it with ec::peer_down at once.
    caf::reacts_to<joined_atom, worker_info>,
    caf::reacts_to<left_atom, std::string, caf::error>,
    // Internal: poll the plugin (the loop's generation); a deadline passed;
    // send the announcements that piled up per peer; a comm the loop
    // sleeps on has news (its wake watch, transfer_wake.hpp).
    caf::reacts_to<proto::progress_atom, std::uint64_t>,
    caf::reacts_to<proto::sweep_atom>,
    caf::reacts_to<proto::announce_flush_atom>,
    caf::reacts_to<proto::wake_atom>,
    // endpoint (engine/): from an actor of this process only (refused with
    // unauthorized otherwise). Appends [address, address + bytes) of CUDA
    // device `gpu` (-1: host memory) to the region table, registered with
    // every open channel, and replies its index (never reused).
    caf::replies_to<proto::region_add_atom, std::uint64_t, std::uint64_t,
                    std::int32_t>::with<std::uint64_t>,
    // ... and removes region `index` (not region 0): its size becomes 0, so
    // every later extent into it is refused; its registrations go. Errors:
    // not_found. Transfers in flight on it must have ended.
    caf::replies_to<proto::region_remove_atom,
                    std::uint64_t>::with<caf::ok_atom>,
    // endpoint (engine/): the sends of an order_batch, each taken as a
    // send_atom request would be; what settled goes back to the batch's
    // sender in lists (settled_atom, std::vector<order_settled>), at most
    // one list in flight per flush (settled_flush_atom, internal). A write
    // announced with an answer_to is answered to it in an ep_batch at the
    // same flush, once every byte landed here (send_order::answer_to).
    caf::reacts_to<proto::order_batch_atom, proto::order_batch>,
    caf::reacts_to<proto::settled_flush_atom>>;

/// A prefill worker's app: owns the KV block pool, "prefills" (writes a
/// deterministic pattern), negotiates and ships each request.
using producer_actor = caf::typed_actor<
    caf::replies_to<proto::prefill_atom,
                    proto::prefill_request>::with<proto::ready_report>,
    // Directory watcher: requests whose consumer left fail at once.
    caf::reacts_to<joined_atom, worker_info>,
    caf::reacts_to<left_atom, std::string, caf::error>,
    // From a consumer (the sender): these blocks it lent are free again and
    // back in this producer's credit there.
    caf::reacts_to<proto::credit_atom, std::vector<std::uint64_t>>,
    // From a consumer (the sender), pull: it will not pull request `id`
    // (its name, why; it answered the router already): the offer is
    // withdrawn and the source blocks come back once our node lets go.
    caf::reacts_to<proto::abort_atom, std::uint64_t, std::string, caf::error>,
    // Internal: fail the requests whose wait for source blocks ran out.
    caf::reacts_to<proto::sweep_atom>>;

/// A decode worker's app: allocates destination blocks, waits for the bytes,
/// verifies them and answers ready.
using consumer_actor = caf::typed_actor<
    caf::replies_to<proto::allocate_atom,
                    proto::allocate_request>::with<proto::grant>,
    caf::replies_to<proto::arrived_atom,
                    proto::arrival_notice>::with<proto::ready_report>,
    // Pull: the producer delegates the router's request with its advert;
    // the reply (to the router) comes once the pulled bytes are verified.
    caf::replies_to<proto::advertise_atom,
                    proto::arrival_notice>::with<proto::ready_report>,
    // Lend the producer (the sender, monitored) up to n blocks ahead of
    // time; the grant lists those lent (request_id 0). Errors: mismatch
    // (geometry).
    caf::replies_to<proto::reserve_atom,
                    proto::reserve_request>::with<proto::grant>,
    // A request the producer wrote into lent blocks and delegated here: the
    // reply (to the router) comes once its bytes landed and verified.
    // Errors: invalid_extent (an offset not lent to that producer, named),
    // mismatch, peer_down, timeout, or what the producer's abort says.
    caf::replies_to<proto::incoming_atom,
                    proto::credit_notice>::with<proto::ready_report>,
    // Producer -> consumer: the send of a delegated request failed (request
    // id, producer name, why); its promise fails with that error.
    caf::reacts_to<proto::abort_atom, std::uint64_t, std::string, caf::error>,
    caf::replies_to<proto::stats_atom>::with<proto::consumer_stats>,
    // Directory watcher: a producer that left fails its requests here at
    // once (naming it) and their blocks come back.
    caf::reacts_to<joined_atom, worker_info>,
    caf::reacts_to<left_atom, std::string, caf::error>,
    // Internal: fail the requests whose wait for free blocks ran out.
    caf::reacts_to<proto::sweep_atom>,
    // With app_config::keep_blocks_until_decoded: request `id` left decode,
    // its blocks are free (the simulator's decode model says so).
    caf::reacts_to<proto::decoded_atom, std::uint64_t>,
    // A producer's node meeting this worker's node (its node_connect names
    // this actor): forwarded to the node, which answers.
    caf::replies_to<proto::node_hello_atom,
                    proto::node_hello>::with<proto::node_hello>>;

// ---- node (kvferry::node, issue #15) ---------------------------------------
//
// One per kvferry::node: the request bookkeeping over the caller's own KV
// cache (a kv_layout over the caller's allocations); its transfer actor moves
// the bytes. Nodes reach each other point-to-point (connect) or through a
// directory. Requests name the peer node by name and blocks by id; the
// sending side plans the extents of both sides (plan_kv) from the two
// layouts exchanged on connect.
//
//   push:  caller --send--> node --send order--> transfer ==bytes==>
//          node --part--> peer node --recv order--> peer transfer
//   pull:  prefill node --offer--> decode node as the caller advertises
//          (all layers at once) --offer--> its transfer actor, which keeps
//          it. The caller's pull goes to that transfer actor
//          (node_handles::pulls_via_transfer; through the node it costs a
//          hop more): it plans, sends the send order to the prefill's
//          transfer actor (no hop through either node), answers the caller
//          when the last byte landed and tells its node aside; the node's
//          --done--> frees the prefill's source blocks.
//   pull, layer by layer or before the offer came: caller --pull--> node
//          --want--> prefill node (one message), which posts each layer's
//          send as soon as the layer is ready and the want is known, each
//          with a `part` note as in push.
//   pull, one host, GPU caches both exported over CUDA IPC (one_sided_pull):
//          prefill node --ready--> decode node (per layer, as it is ready),
//          whose own transfer actor reads it (read_order: the decode maps
//          the prefill's table once and runs the copy kernel itself); the
//          decode node's --done--> frees the prefill's source blocks. The
//          pull sends no message; both sides choose the path alike.
//
// A peer node that dies, leaves the directory or stops fails every request
// with it at once (ec::peer_down naming it); the node stays usable.

/// A node's interface: requests of its caller (replies when the request
/// finished, or an error naming the request and peer) and messages of peer
/// nodes.
using node_actor = caf::typed_actor<
    // Caller: reach the node actor `peer` (hello both ways); replies its
    // name. Errors: duplicate (our own name), mismatch (layers or block
    // size differ), timeout.
    caf::replies_to<proto::node_connect_atom, caf::actor>::with<std::string>,
    // Node to node: my hello for yours.
    caf::replies_to<proto::node_hello_atom,
                    proto::node_hello>::with<proto::node_hello>,
    // Caller, prefill side: push blocks -> peer_blocks of `peer`; replies
    // once the bytes left this cache. Errors: not_found (unknown peer),
    // invalid_argument (block ids), and the transfer's.
    caf::replies_to<proto::node_send_atom,
                    proto::node_request>::with<proto::node_report>,
    // Caller, prefill side: offer blocks for `peer` to pull (layerwise: as
    // node_layer_atom says each layer is written); replies once the source
    // blocks are free again.
    caf::replies_to<proto::node_advertise_atom,
                    proto::node_request>::with<proto::node_report>,
    // Caller, prefill side: layer `layer` of advertised request `id` is
    // written, or will be once the caller's CUDA event `wait_event` (a
    // cudaEvent_t of this process as an integer, 0: none) completed: the
    // layer's send order carries it (send_order::wait_event). Errors:
    // not_found, invalid_argument.
    caf::replies_to<proto::node_layer_atom, std::uint64_t, std::uint32_t,
                    std::uint64_t>::with<caf::ok_atom>,
    // Caller, decode side: wait for `peer`'s push of request `id`; replies
    // once every byte landed.
    caf::replies_to<proto::node_receive_atom,
                    proto::node_request>::with<proto::node_report>,
    // Caller, decode side: pull request `id` of `peer` into `blocks`.
    caf::replies_to<proto::node_pull_atom,
                    proto::node_request>::with<proto::node_report>,
    // Decode node to prefill node: the pull (peer = the puller, blocks =
    // its destination blocks).
    caf::reacts_to<proto::node_want_atom, proto::node_request>,
    // Prefill node to decode node: an advertised request (peer = the
    // prefill, blocks = its source blocks), so that the pull orders the
    // prefill's transfer actor itself.
    caf::reacts_to<proto::node_offer_atom, proto::node_request>,
    // Sending node to receiving node: a part was posted.
    caf::reacts_to<proto::node_part_atom, proto::node_part>,
    // One-sided pull: prefill node to decode node, a part is ready to read.
    caf::reacts_to<proto::node_ready_atom, proto::node_ready>,
    // One-sided or offered pull: decode node to prefill node, request `id`
    // landed (its source blocks are free).
    caf::reacts_to<proto::node_done_atom, std::string, proto::node_report>,
    // Our transfer actor answered the caller of a request of one part from
    // `peer` (report.id; an offered pull, a receive) itself, with the
    // report or with `why`.
    caf::reacts_to<proto::node_answered_atom, std::string, proto::node_report,
                   caf::error>,
    // Our transfer actor dropped the offer of request `id` from `peer`:
    // nobody pulled it within the request timeout.
    caf::reacts_to<proto::node_offer_atom, std::string, std::uint64_t>,
    // Internal: poll the CUDA events of layers whose ready note waits.
    caf::reacts_to<proto::node_poll_atom>,
    // Internal: drop incoming entries no caller claimed in time.
    caf::reacts_to<proto::sweep_atom>,
    // Node to node: request `id` with me, `from`, failed because of `why`.
    caf::reacts_to<proto::node_fail_atom, std::string, std::uint64_t,
                   caf::error>,
    // Caller: a small message for `to` (ordered per peer). Errors:
    // not_found.
    caf::replies_to<proto::node_notify_atom, std::string,
                    std::string>::with<caf::ok_atom>,
    // Node to node: a small message (from, payload).
    caf::reacts_to<proto::node_note_atom, std::string, std::string>,
    // Caller: deliver (node_note_atom, from, payload) to `listener` from now
    // on (those that came before first); replaces an earlier listener.
    caf::reacts_to<proto::node_listen_atom, caf::actor>,
    // Caller: the peers it can address, sorted.
    caf::replies_to<proto::node_peers_atom>::with<std::vector<std::string>>,
    // Directory watcher (directory mode): joins are peers; a peer that left
    // fails its requests.
    caf::reacts_to<joined_atom, worker_info>,
    caf::reacts_to<left_atom, std::string, caf::error>>;

} // namespace kvferry
