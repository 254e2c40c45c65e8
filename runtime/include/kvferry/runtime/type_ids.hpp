// Every CAF type ID and every atom of kvferry, in one place (the model:
// Zeek Broker's fwd.hh). Two blocks: `kvferry_runtime` (ids 200..299: the
// directory's types) and `kvferry_protocol` (ids 300..399: the messages of
// the transfer, producer and consumer actors, protocol.hpp). Every type sent
// as a top-level message element needs an id here: our targets compile with
// CAF_ENABLE_TYPE_ID_CHECKS, so sending an unregistered type fails to
// compile. Ids are on the wire: append to a block, never reorder it. Atoms
// (CAF 0.17: no id, at most 10 characters, the text is on the wire) are all
// declared with CAF_ADD_ATOM, grouped by the actor that receives them.
// Include this header wherever messages are sent or handled.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <caf/type_id.hpp>

#include "kvferry/runtime/directory_types.hpp"
#include "kvferry/runtime/error.hpp"
#include "kvferry/runtime/protocol.hpp"

// ---- kvferry_runtime: the directory and its watchers

CAF_BEGIN_TYPE_ID_BLOCK(kvferry_runtime, caf::first_custom_type_id)

CAF_ADD_TYPE_ID(kvferry_runtime, (kvferry::ec))
CAF_ADD_TYPE_ID(kvferry_runtime, (kvferry::memory_kind))
CAF_ADD_TYPE_ID(kvferry_runtime, (kvferry::worker_role))
CAF_ADD_TYPE_ID(kvferry_runtime, (kvferry::region_info))
CAF_ADD_TYPE_ID(kvferry_runtime, (kvferry::worker_info))
CAF_ADD_TYPE_ID(kvferry_runtime, (kvferry::lease))
CAF_ADD_TYPE_ID(kvferry_runtime, (std::vector<kvferry::worker_info>))
CAF_ADD_TYPE_ID(kvferry_runtime, (std::vector<kvferry::region_info>))
CAF_ADD_TYPE_ID(kvferry_runtime, (std::vector<std::string>))
CAF_ADD_TYPE_ID(kvferry_runtime, (std::vector<char>))
CAF_ADD_TYPE_ID(kvferry_runtime, (std::map<std::string, std::string>))

// The directory receives (expire: its own lease timer).
CAF_ADD_ATOM(kvferry_runtime, kvferry, register_atom, "register")
CAF_ADD_ATOM(kvferry_runtime, kvferry, renew_atom, "renew")
CAF_ADD_ATOM(kvferry_runtime, kvferry, leave_atom, "leave")
CAF_ADD_ATOM(kvferry_runtime, kvferry, lookup_atom, "lookup")
CAF_ADD_ATOM(kvferry_runtime, kvferry, list_atom, "list")
CAF_ADD_ATOM(kvferry_runtime, kvferry, watch_atom, "watch")
CAF_ADD_ATOM(kvferry_runtime, kvferry, unwatch_atom, "unwatch")
CAF_ADD_ATOM(kvferry_runtime, kvferry, expire_atom, "expire")
// Directory watchers (transfer, producer and consumer actors) receive.
CAF_ADD_ATOM(kvferry_runtime, kvferry, joined_atom, "joined")
CAF_ADD_ATOM(kvferry_runtime, kvferry, left_atom, "left")

CAF_END_TYPE_ID_BLOCK(kvferry_runtime)

static_assert(caf::id_block::kvferry_runtime::end <= 300,
              "kvferry_runtime ids must stay below 300 (300..399 belong to "
              "kvferry_protocol)");

// ---- kvferry_protocol: the transfer, producer and consumer actors

CAF_BEGIN_TYPE_ID_BLOCK(kvferry_protocol, 300)

CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::extent))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::endpoint))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::send_order))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::recv_order))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::announcement))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::prefill_request))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::allocate_request))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::grant))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::arrival_notice))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::ready_report))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::transfer_stats))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::recv_report))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::reserve_request))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::credit_notice))
// Block offsets returned to a producer's credit (credit_atom).
CAF_ADD_TYPE_ID(kvferry_protocol, (std::vector<std::uint64_t>))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::consumer_stats))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::landed))

// The transfer actor receives (progress: its own polling loop).
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, endpoint_atom, "kvendpoint")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, send_atom, "kvsend")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, recv_atom, "kvrecv")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, open_atom, "kvopen")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, announce_atom, "kvannounce")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, landed_atom, "kvlanded")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, progress_atom, "kvprogress")
// ... from its wake watch: a plugin comm it sleeps on has news.
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, wake_atom, "kvwake")
// ... from a peer transfer actor: it dropped its end of our channel.
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, closed_atom, "kvclosed")
// ... and for the CUDA IPC quarantine (docs/gpu.md, "Timed-out IPC copies").
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, ipc_hello_atom, "kvipchello")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, ipc_status_atom, "kvipcstat")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, settle_atom, "kvsettle")
// The producer receives.
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, prefill_atom, "kvprefill")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, credit_atom, "kvcredit")
// The consumer receives.
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, allocate_atom, "kvalloc")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, arrived_atom, "kvarrived")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, advertise_atom, "kvadvert")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, reserve_atom, "kvreserve")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, incoming_atom, "kvincoming")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, abort_atom, "kvabort")
// Several receive: stats (transfer and consumer), sweep (the periodic
// deadline check of the transfer, producer and consumer actors).
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, stats_atom, "kvstats")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, sweep_atom, "kvsweep")
// one-sided read (the transfer actor receives it from its own process).
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::read_order))
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, read_atom, "kvread")

// node (kvferry::node, issue #15): node actor to node actor, and a caller
// to its node actor.
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::kv_layout_desc))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::node_hello))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::node_request))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::node_report))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::node_part))
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_connect_atom, "kvnconnect")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_hello_atom, "kvnhello")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_send_atom, "kvnsend")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_receive_atom, "kvnrecv")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_advertise_atom, "kvnadvert")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_pull_atom, "kvnpull")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_want_atom, "kvnwant")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_layer_atom, "kvnlayer")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_part_atom, "kvnpart")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_fail_atom, "kvnfail")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_notify_atom, "kvnnotify")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_note_atom, "kvnnote")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_listen_atom, "kvnlisten")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_peers_atom, "kvnpeers")
// endpoint (kvferry::endpoint, engine/): the transfer actor's region table
// grows and shrinks at runtime (local senders only); the endpoint control
// actors' messages.
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::peer_hello))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::posted_recv))
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::endpoint_order))
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, region_add_atom, "kvregadd")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, region_remove_atom, "kvregrm")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, ep_hello_atom, "kvephello")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, ep_order_atom, "kveporder")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, ep_post_atom, "kveppost")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, ep_landed_atom, "kveplanded")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, ep_notify_atom, "kvepnote")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, ep_connect_atom, "kvepconn")
// simulator (issue #17, `kvferry sim --engine actors`): a request left
// decode, its blocks are free (app_config::keep_blocks_until_decoded).
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, decoded_atom, "kvdecoded")

// kvferry::node, one-sided pull over CUDA IPC (issue #15): the prefill's
// ready notes, the decode's "read done" (which frees the source blocks) and
// the node actor's CUDA event poll.
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::node_ready))
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_ready_atom, "kvnready")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_done_atom, "kvndone")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_poll_atom, "kvnpoll")

// kvferry::node, plugin pull (issue #15, session 10): the prefill's offer of
// an advertised request, so that the puller orders its transfer actor.
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_offer_atom, "kvnoffer")

// kvferry::endpoint (issue #16, session 11): what the control actors send
// each other, batched (proto::ep_batch), and the batch's flush.
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::ep_batch))
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, ep_batch_atom, "kvepbatch")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, ep_flush_atom, "kvepflush")

// kvferry::node, offered pull (issue #15, session 13): the decode's transfer
// actor answers the puller itself and tells its node aside.
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_answered_atom, "kvnanswer")

// kvferry::node, offered pull (issue #15, session 14): the decode node hands
// each offer to its transfer actor (attached to it), which serves the pull.
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::pull_offer))
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, node_attach_atom, "kvnattach")

// Transfer actors (issue #16, session 18): a sender's announcements, batched
// per peer (proto::announce_batch, with announce_atom), and the batch's flush.
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::announce_batch))
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, announce_flush_atom,
             "kvannflush")

// kvferry::endpoint (issue #16, session 24): the control actor's orders to
// its own transfer actor, batched (proto::order_batch, to the transfer
// actor), their settling (a list of proto::order_settled, to the control
// actor) and the transfer actor's flush of those lists (to itself).
CAF_ADD_TYPE_ID(kvferry_protocol, (kvferry::proto::order_batch))
CAF_ADD_TYPE_ID(kvferry_protocol, (std::vector<kvferry::proto::order_settled>))
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, order_batch_atom, "kvordbatch")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, settled_atom, "kvsettled")
CAF_ADD_ATOM(kvferry_protocol, kvferry::proto, settled_flush_atom, "kvsetflush")

CAF_END_TYPE_ID_BLOCK(kvferry_protocol)

static_assert(caf::id_block::kvferry_protocol::end <= 400,
              "kvferry_protocol owns type IDs 300-399");
