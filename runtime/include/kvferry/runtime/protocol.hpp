// The typed messages of the transfer, producer and consumer actors.
//
// Messages carry descriptors only — offsets, lengths, hashes, handles — never
// KV bytes. Every type has an `inspect` so that CAF can serialize it between
// processes, and a type ID in the block `kvferry_protocol` (300–399) of
// type_ids.hpp, which also declares the atoms: include that header to send
// or handle these messages. Register the block in an actor_system_config
// with `kvferry::proto::add_protocol_types(cfg)` (system_config does).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/error.hpp>
#include <caf/meta/type_name.hpp>

#include "kvferry/runtime/kv_geometry.hpp"
#include "kvferry/transport/copy_plan.hpp"

namespace kvferry::proto {

/// One contiguous piece of a transfer: `length` bytes from `src_offset` in the
/// sender's region to `dst_offset` in the receiver's region. The transport's
/// type, so that plans go to the plugin and the copy kernel unconverted; its
/// `inspect` is below (transport knows nothing of CAF).
using extent = transport::copy_extent;

} // namespace kvferry::proto

namespace kvferry::transport {

// Found by argument-dependent lookup, so it lives in the type's namespace.
// The type name is the one this type has always had on the wire.
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, copy_extent& x) {
  return f(caf::meta::type_name("kvferry::proto::extent"), x.src_offset,
           x.dst_offset, x.length);
}

} // namespace kvferry::transport

namespace kvferry::proto {

/// How to reach one transfer actor: its handle, the name it registered, and
/// the plugin listen handle (128 bytes) that a sender connects to. A sender
/// on the same host (equal `host_id`) whose region is on a GPU too copies
/// straight into the region behind `ipc_handle` instead of using the plugin.
struct endpoint {
  std::string name;
  caf::actor transfer; // the peer's transfer actor
  std::string plugin;  // plugin name, so both sides can refuse a mismatch
  std::vector<char> listen_handle; // 128 bytes (v7 handle)
  std::uint64_t region_bytes = 0;
  std::string host_id;   // same-host detection (local_host_id())
  std::int32_t gpu = -1; // CUDA device of the region, -1: host memory
  // The region table exported over CUDA IPC (transport::ipc_table_to_text:
  // one entry per region, each its allocation's handle and, for a region
  // inside a larger allocation, its offset and size; a one-region pool's is
  // the single ipc_handle::to_hex() it always was). Empty when a region is
  // not on a GPU, cannot be exported, or the worker does not take CUDA IPC
  // (--transport net).
  std::string ipc_handle;
  // The sizes of regions 1.. of the peer's region table (plan.hpp), after
  // region 0 of region_bytes; empty for a one-region table.
  std::vector<std::uint64_t> more_region_sizes;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, endpoint& x) {
  return f(caf::meta::type_name("kvferry::proto::endpoint"), x.name, x.transfer,
           x.plugin, x.listen_handle, x.region_bytes, x.host_id, x.gpu,
           x.ipc_handle, x.more_region_sizes);
}

/// The sizes of `ep`'s region table, region 0 first, into `sizes` (its
/// capacity reused).
inline void region_sizes_of(const endpoint& ep,
                            std::vector<std::uint64_t>& sizes) {
  sizes.assign(1, ep.region_bytes);
  sizes.insert(sizes.end(), ep.more_region_sizes.begin(),
               ep.more_region_sizes.end());
}

/// The same, as a new vector.
inline std::vector<std::uint64_t> region_sizes_of(const endpoint& ep) {
  std::vector<std::uint64_t> sizes;
  region_sizes_of(ep, sizes);
  return sizes;
}

/// Asks a transfer actor to send `extents` of its region to `peer`.
/// Comes from the local producer (push) or a remote consumer (pull); the
/// source extents are checked against the local region either way.
/// `wait_event`: 0, or a cudaEvent_t of the ORDERING process (cast to an
/// integer; meaningless in any other process, so a transfer actor refuses
/// one from a remote sender) that the copy must wait for, e.g. "layer l is
/// written" recorded on the model's stream. Over CUDA IPC the copy stream
/// waits for it on the GPU; over a plugin the transfer actor polls it and
/// posts the send once it completed (docs/gpu.md, "Waiting on the GPU").
///
/// `lane`: 0 for an announced transfer (the sender announces its chunks,
/// then posts). Else the id of the receiver's pull lane, a channel of its
/// own on which the receiver posted this order's receives before sending
/// it, so the sender posts its sends there unannounced, in the order the
/// orders came, refused ones as empty sends (actors/src/transfer_lane.cpp).
/// The first order of a lane carries its listen handles, comms and chunk
/// size; the sender connects to them.
///
/// `answer_to`: null, or the kvferry::endpoint control actor of a one-sided
/// write, which wants the word that every byte landed. Over a plugin the
/// announcement carries it, and the receiving transfer actor answers it
/// itself in an ep_batch (`answers`, the transfer id) named by its own name,
/// which its endpoint shares, so no claim (recv order) is needed there. Over
/// CUDA IPC the sender's settlement says the bytes landed
/// (order_settled::landed), and the receiver is not told.
struct send_order {
  std::uint64_t transfer_id = 0;
  endpoint peer;
  std::vector<extent> extents;
  std::uint32_t timeout_ms = 10000;
  std::uint64_t wait_event = 0;
  std::uint64_t lane = 0;
  std::vector<char> lane_handles;
  std::uint32_t lane_comms = 0;
  std::uint64_t lane_chunk = 0;
  caf::actor answer_to;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, send_order& x) {
  return f(caf::meta::type_name("kvferry::proto::send_order"), x.transfer_id,
           x.peer, x.extents, x.timeout_ms, x.wait_event, x.lane,
           x.lane_handles, x.lane_comms, x.lane_chunk, x.answer_to);
}

/// Asks the local transfer actor to report when transfer `transfer_id` from
/// `peer_name` has fully arrived (replies with the bytes received).
struct recv_order {
  std::uint64_t transfer_id = 0;
  std::string peer_name;
  std::uint32_t timeout_ms = 10000;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, recv_order& x) {
  return f(caf::meta::type_name("kvferry::proto::recv_order"), x.transfer_id,
           x.peer_name, x.timeout_ms);
}

/// A transfer actor's answer to a recv order: the bytes that landed, and the
/// receiver's own view of the data window as steady_clock readings of the
/// receiver's process (ns since that clock's epoch): when it first learned of
/// the transfer (the sender's announcement or the recv order, whichever came
/// first) and when the last byte landed. Comparable only within one process.
/// Over CUDA IPC the window is the sender's (kernel launch to completion
/// seen), split by the kernel's CUDA events: `gpu_queued_ns` from the launch
/// to the kernel's start (waiting for earlier work on the GPU) and
/// `gpu_copy_ns` the kernel's own GPU time; the rest is seeing completion.
/// Both 0 where not measured (plugin path). `announced_ns`: when the
/// sender's announcement came (plugin path; 0: none), which starts the
/// window where the recv order came well before it (a puller that posts its
/// receive as it asks for the bytes).
struct recv_report {
  std::uint64_t bytes = 0;
  std::int64_t first_known_ns = 0;
  std::int64_t landed_ns = 0;
  std::int64_t gpu_copy_ns = 0;
  std::int64_t gpu_queued_ns = 0;
  std::int64_t announced_ns = 0;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, recv_report& x) {
  return f(caf::meta::type_name("kvferry::proto::recv_report"), x.bytes,
           x.first_known_ns, x.landed_ns, x.gpu_copy_ns, x.gpu_queued_ns,
           x.announced_ns);
}

/// Where a request's data window starts in a node's report (node_report):
/// at the sender's announcement when there was one (the recv order may have
/// waited for it: an offered pull posts it at once), else when the receiver
/// first knew of the transfer.
inline std::int64_t data_start_of(const recv_report& r) {
  return r.announced_ns != 0 ? r.announced_ns : r.first_known_ns;
}

/// Transfer actor to transfer actor over CUDA IPC: the sender's copy kernel
/// of transfer `transfer_id` finished writing `bytes` into the receiver's
/// region. When the kernel was launched and when the sender saw it complete
/// (steady_clock ns, comparable because IPC peers share a host); from the
/// launch to the kernel's start and the kernel's GPU time (ns, both 0 if
/// unknown). Completes the receiver's waiting recv order.
struct landed {
  std::string sender;
  std::uint64_t transfer_id = 0;
  std::uint64_t bytes = 0;
  std::int64_t launched_ns = 0;
  std::int64_t copied_ns = 0;
  std::int64_t gpu_queued_ns = 0;
  std::int64_t gpu_copy_ns = 0;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, landed& x) {
  return f(caf::meta::type_name("kvferry::proto::landed"), x.sender,
           x.transfer_id, x.bytes, x.launched_ns, x.copied_ns, x.gpu_queued_ns,
           x.gpu_copy_ns);
}

/// Sender transfer actor -> receiver transfer actor, before any byte moves:
/// the chunks (each one isend/irecv pair) in the order the sender posts them.
/// The receiver posts one receive per chunk in exactly this order on its
/// channel from `sender` (plugins match by posting order; the channel
/// stripes chunks over its comms the same way on both sides).
/// `answer_to`: the send order's (null: nobody wants the receiver's word).
struct announcement {
  std::uint64_t transfer_id = 0;
  std::string sender;
  std::uint32_t comms = 1;
  std::uint32_t first_comm = 0;
  std::vector<extent> chunks; // dst_offset/length matter to the receiver
  caf::actor answer_to;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, announcement& x) {
  return f(caf::meta::type_name("kvferry::proto::announcement"), x.transfer_id,
           x.sender, x.comms, x.first_comm, x.chunks, x.answer_to);
}

/// Sender transfer actor -> receiver transfer actor: the announcements of the
/// transfers the sender posted since its last batch, in posting order, in
/// one message (the receiver handles them one by one). The sender sends a
/// batch when a flush message it sent itself comes up, i.e. after the orders
/// already in its mailbox: at depth 16 one remote message announces many
/// transfers instead of one message each (issue #16).
struct announce_batch {
  std::vector<announcement> announcements;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, announce_batch& x) {
  return f(caf::meta::type_name("kvferry::proto::announce_batch"),
           x.announcements);
}

/// Router -> producer: prefill this prompt and ship its KV to `consumer`.
struct prefill_request {
  std::uint64_t request_id = 0;
  std::uint32_t prompt_tokens = 0;
  std::uint64_t pattern_seed = 0; // what "prefill" writes (checked later)
  caf::actor consumer;
  bool layerwise = false;
  bool pull = false;
  // Only a 16-byte stamp per 4 KiB page is written and checked
  // (actors/kv_stamp.hpp), not every byte (`kvferry demo --verify`).
  bool sampled_verify = false;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, prefill_request& x) {
  return f(caf::meta::type_name("kvferry::proto::prefill_request"),
           x.request_id, x.prompt_tokens, x.pattern_seed, x.consumer,
           x.layerwise, x.pull, x.sampled_verify);
}

/// Producer -> consumer: reserve blocks for a request (push mode).
struct allocate_request {
  std::uint64_t request_id = 0;
  std::uint32_t blocks_per_layer = 0;
  std::uint32_t layers = 0;
  std::uint64_t layer_block_bytes = 0; // so a geometry mismatch is caught
  std::string producer;                // sender's endpoint name
  std::uint32_t parts = 1; // transfers to expect (layers if layerwise)
  // Who waits for the request's answer (the router): once it is gone, the
  // consumer cancels the request instead of holding its blocks to its
  // deadline. Empty: unknown.
  caf::actor requester;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, allocate_request& x) {
  return f(caf::meta::type_name("kvferry::proto::allocate_request"),
           x.request_id, x.blocks_per_layer, x.layers, x.layer_block_bytes,
           x.producer, x.parts, x.requester);
}

/// Consumer -> producer: where the blocks go, and how to reach the receiver.
/// `block_offsets` holds the receiver's pool block ids (despite the name:
/// pool_layout in actors/app.hpp, one id = one block of tokens across all
/// layers), the destination of the request's blocks in order.
struct grant {
  std::uint64_t request_id = 0;
  endpoint receiver;
  std::vector<std::uint64_t> block_offsets;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, grant& x) {
  return f(caf::meta::type_name("kvferry::proto::grant"), x.request_id,
           x.receiver, x.block_offsets);
}

/// Producer -> consumer, off the critical path: lend me up to `blocks`
/// destination blocks ahead of time (credit). The consumer answers with a
/// `grant` (request_id 0) of the blocks it lends, possibly fewer or none.
struct reserve_request {
  std::string producer; // the producer's (worker's) name
  std::uint64_t blocks = 0;
  std::uint64_t layer_block_bytes = 0; // so a geometry mismatch is caught
  std::uint32_t layers = 0;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, reserve_request& x) {
  return f(caf::meta::type_name("kvferry::proto::reserve_request"), x.producer,
           x.blocks, x.layer_block_bytes, x.layers);
}

/// Where a request's time went at the producer (`kvferry demo
/// --breakdown`), on its host's steady clock (ns): when the router's request
/// reached it, when its fill began (in a pattern worker, or inline) and when
/// it handed the request to the consumer (the delegated advert or credit
/// request, or its allocate). 0 where not measured.
struct producer_times {
  std::int64_t received_ns = 0;
  std::int64_t fill_start_ns = 0;
  std::int64_t handed_ns = 0;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, producer_times& x) {
  return f(caf::meta::type_name("kvferry::proto::producer_times"),
           x.received_ns, x.fill_start_ns, x.handed_ns);
}

/// Producer -> consumer, delegating the router's request: the producer has
/// written a request into blocks the consumer lent it and ordered the
/// send(s); the consumer waits for them, verifies and answers the router.
/// `block_offsets` are the destination pool block ids, as in `grant`; `parts`
/// is 1 or the layer count (layerwise).
struct credit_notice {
  std::uint64_t request_id = 0;
  std::string producer;
  std::vector<std::uint64_t> block_offsets;
  std::uint32_t blocks_per_layer = 0;
  std::uint32_t parts = 1;
  std::uint64_t bytes = 0;
  std::uint64_t xxhash = 0;
  bool has_xxhash = false;        // as in arrival_notice (GPU memory: no)
  std::uint64_t pattern_seed = 0; // the prefill_request's seed
  bool sampled_verify = false;    // the prefill_request's
  std::int64_t compute_ns = 0;    // the producer's fill + hash time
  std::int64_t fill_gpu_ns = 0;   // its fill kernel's GPU time (0: host)
  producer_times producer_at;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, credit_notice& x) {
  return f(caf::meta::type_name("kvferry::proto::credit_notice"), x.request_id,
           x.producer, x.block_offsets, x.blocks_per_layer, x.parts, x.bytes,
           x.xxhash, x.has_xxhash, x.pattern_seed, x.sampled_verify,
           x.compute_ns, x.fill_gpu_ns, x.producer_at);
}

/// Producer -> consumer after its sends completed: what it sent (push), or
/// what it offers to be read (pull: `source` and `block_offsets` set; the
/// producer delegates the router's request with it, so the consumer answers
/// the router itself).
struct arrival_notice {
  std::uint64_t request_id = 0;
  std::uint64_t bytes = 0;
  std::uint64_t xxhash = 0; // XXH3-64 of the bytes in (layer, block) order
  // False when the producer could not hash on the CPU (GPU memory): the
  // consumer then regenerates the pattern from `pattern_seed` and compares.
  bool has_xxhash = false;
  std::uint64_t pattern_seed = 0; // the prefill_request's seed
  bool sampled_verify = false;    // the prefill_request's: check the stamps
  // pull mode only (the source's node is named as its transfer actor;
  // block_offsets: its pool block ids, as in `grant`):
  endpoint source;
  std::vector<std::uint64_t> block_offsets;
  std::uint32_t blocks_per_layer = 0;
  std::uint32_t layers = 0;
  caf::actor requester; // as in allocate_request (pull: the advert)
  // Pull: the producer actor that advertised (the delegated message's
  // sender is the router): monitored, and told (abort) when the consumer
  // will not pull, so that it withdraws the offer. Its fill times go into
  // the consumer's report, as credit_notice's do.
  caf::actor producer;
  std::int64_t compute_ns = 0;
  std::int64_t fill_gpu_ns = 0;
  producer_times producer_at;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, arrival_notice& x) {
  return f(caf::meta::type_name("kvferry::proto::arrival_notice"), x.request_id,
           x.bytes, x.xxhash, x.has_xxhash, x.pattern_seed, x.sampled_verify,
           x.source, x.block_offsets, x.blocks_per_layer, x.layers, x.requester,
           x.producer, x.compute_ns, x.fill_gpu_ns, x.producer_at);
}

/// The consumer's verdict, returned to the router: the KV is in place and
/// verified, ready for decode. A request whose bytes fail verification gets
/// an error reply (ec::mismatch), never a ready_report: receiving one is the
/// verdict.
struct ready_report {
  std::uint64_t request_id = 0;
  std::uint64_t bytes = 0;
  // The receiver's data window: from when its transfer actor first learned
  // of the transfer (announcement or recv order) to the last byte landed,
  // over all parts.
  std::int64_t transfer_ns = 0;
  std::int64_t compute_ns = 0; // pattern fill + hashing (not control)
  // Where that window starts on the consumer host's steady clock (ns), so
  // that a router can merge the overlapping windows of one consumer's
  // concurrent requests instead of counting shared time twice.
  std::int64_t data_start_ns = 0;
  // Over CUDA IPC, summed over all parts (see recv_report): the copy
  // kernels' GPU time inside that window, and the time from each launch to
  // its kernel's start. 0 where not measured.
  std::int64_t gpu_copy_ns = 0;
  std::int64_t gpu_queued_ns = 0;
  // Where the request's time went outside the data window (`kvferry demo
  // --breakdown`): the producer's share of compute_ns (its fill), the fill
  // and verification kernels' GPU time (0 on the CPU), and, on the
  // consumer host's steady clock (ns), when the consumer learned of the
  // request, when it handed the verification to a pattern worker, when that
  // worker began it and when the consumer had its answer; and the
  // producer's times (on its host's clock). 0 where not measured (a
  // model-only region).
  std::int64_t fill_ns = 0;
  std::int64_t fill_gpu_ns = 0;
  std::int64_t verify_gpu_ns = 0;
  std::int64_t opened_ns = 0;
  std::int64_t verify_sent_ns = 0;
  std::int64_t verify_start_ns = 0;
  std::int64_t verify_done_ns = 0;
  producer_times producer_at;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, ready_report& x) {
  return f(caf::meta::type_name("kvferry::proto::ready_report"), x.request_id,
           x.bytes, x.transfer_ns, x.compute_ns, x.data_start_ns, x.gpu_copy_ns,
           x.gpu_queued_ns, x.fill_ns, x.fill_gpu_ns, x.verify_gpu_ns,
           x.opened_ns, x.verify_sent_ns, x.verify_start_ns, x.verify_done_ns,
           x.producer_at);
}

/// Counters of one transfer actor (for the demo's table and for tests).
struct transfer_stats {
  std::uint64_t bytes_sent = 0;
  std::uint64_t bytes_received = 0;
  std::uint64_t transfers_done = 0;
  std::uint64_t transfers_failed = 0;
  std::uint64_t comms_opened = 0;
  std::uint64_t registrations = 0;
  // CUDA IPC quarantine, receiving side: timed-out transfers whose sender
  // has not yet confirmed that no copy kernel of theirs can still write.
  std::uint64_t ipc_quarantined = 0;
  // Receiving side: offered pulls whose receives went on a pull lane
  // (posted before their send order left, no announcement).
  std::uint64_t lane_pulls = 0;
  // Sending side: announce_batch messages sent (each announces one or more
  // transfers on the plugin path).
  std::uint64_t announce_batches = 0;
  // Now, not a counter: the transfers this actor keeps state for (in
  // flight, or landed and not yet claimed by their recv order) and the
  // offered pulls it holds. Each carries its own deadline; a transfer that
  // ended and was claimed leaves nothing behind, so this falls back to 0
  // once nothing is in flight.
  std::uint64_t tracked = 0;
  // The progress loop: its turns (each polls every comm and copy with
  // work), and the wakes that ended a sleep on the comms' wait descriptors
  // (a loop that sleeps turns little while its bytes are late).
  std::uint64_t polls = 0;
  std::uint64_t wakes = 0;
  // Now, not a counter: announced transfers whose receives wait for their
  // sender's channel to finish opening (a slow accept).
  std::uint64_t announced_waiting = 0;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, transfer_stats& x) {
  return f(caf::meta::type_name("kvferry::proto::transfer_stats"), x.bytes_sent,
           x.bytes_received, x.transfers_done, x.transfers_failed,
           x.comms_opened, x.registrations, x.ipc_quarantined, x.lane_pulls,
           x.announce_batches, x.tracked, x.polls, x.wakes,
           x.announced_waiting);
}

/// Counters of one consumer (for tests and operators): how its push
/// requests came in, and what it has lent.
struct consumer_stats {
  std::uint64_t negotiated = 0;     // allocate/grant requests
  std::uint64_t delegated = 0;      // requests on credit (incoming)
  std::uint64_t refused = 0;        // incoming notices refused (bad blocks)
  std::uint64_t lent_blocks = 0;    // lent to live producers now
  std::uint64_t credit_returns = 0; // credit messages sent
  // The pool now: blocks in all, free, and requests holding blocks or
  // waiting for them (back-pressure). After a quiet spell free_blocks +
  // lent_blocks == pool_blocks (plus quarantined_blocks not lent, while a
  // CUDA IPC quarantine lasts): anything else is a leak.
  std::uint64_t pool_blocks = 0;
  std::uint64_t free_blocks = 0;
  std::uint64_t in_flight = 0;   // requests open here
  std::uint64_t waiting = 0;     // requests waiting for free blocks now
  std::uint64_t waited = 0;      // requests that ever waited
  std::uint64_t wait_failed = 0; // ... and failed: queue full or wait over
  // Blocks of failed requests held out of use (neither in the pool nor in
  // a loan's credit) until the transfer actor says no CUDA IPC copy can
  // still write into them (docs/gpu.md, "Timed-out IPC copies").
  std::uint64_t quarantined_blocks = 0;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, consumer_stats& x) {
  return f(caf::meta::type_name("kvferry::proto::consumer_stats"), x.negotiated,
           x.delegated, x.refused, x.lent_blocks, x.credit_returns,
           x.pool_blocks, x.free_blocks, x.in_flight, x.waiting, x.waited,
           x.wait_failed, x.quarantined_blocks);
}

/// One-sided read over CUDA IPC (same host): asks the LOCAL transfer actor to
/// copy `extents` from `peer`'s region table (src offsets: the peer's virtual
/// offsets) into its own (dst offsets: ours) with its own copy kernel; the
/// peer's transfer actor gets no message. It maps the peer's table once.
/// Replied with a recv_report when the kernel has finished. Refused with
/// ec::unreachable when the peer is not on this host or exports no IPC
/// handles (the caller then uses the push path), ec::invalid_extent,
/// ec::invalid_argument (a wait_event from a remote sender). The owner must
/// have said the source blocks are ready and must not reuse them until the
/// read replied; after a failed read, until the reader's settle for (peer,
/// id) answered (its kernel may still run; docs/gpu.md, "One-sided reads").
/// The fields are a send_order's (`wait_event`: an event of the reader's
/// process), the extents' sides swapped: source the peer's, destination ours.
struct read_order : send_order {};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, read_order& x) {
  return f(caf::meta::type_name("kvferry::proto::read_order"),
           static_cast<send_order&>(x));
}

// ---- kvferry::node (issue #15): node actor to node actor, and a caller to
// its node actor (actors.hpp, node_actor).

/// A kv_layout (actors/kv_layout.hpp) on the wire: its strided parameters.
struct kv_layout_desc {
  std::uint32_t layers = 0;
  std::uint64_t num_blocks = 0;
  std::uint64_t block_bytes = 0;
  bool region_per_layer = false;
  std::uint64_t layer_stride = 0;
  std::uint64_t kv_stride = 0;
  std::uint64_t block_stride = 0;
  std::string name;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, kv_layout_desc& x) {
  return f(caf::meta::type_name("kvferry::proto::kv_layout_desc"), x.layers,
           x.num_blocks, x.block_bytes, x.region_per_layer, x.layer_stride,
           x.kv_stride, x.block_stride, x.name);
}

/// Node to node when they connect (both ways): who I am, my node actor, my
/// transfer actor's endpoint and my cache's layout (the sender plans the
/// extents of both sides from the two layouts).
struct node_hello {
  std::string name;
  caf::actor node;
  endpoint transfer;
  kv_layout_desc layout;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_hello& x) {
  return f(caf::meta::type_name("kvferry::proto::node_hello"), x.name, x.node,
           x.transfer, x.layout);
}

/// One request of a caller to its node actor (send, receive, advertise,
/// pull), and a pull's message to the prefill node (`peer` then names the
/// puller). `blocks` are this side's block ids; `peer_blocks` the other
/// side's where this side plans (send).
struct node_request {
  std::uint64_t id = 0;
  std::string peer;
  std::vector<std::uint64_t> blocks;
  std::vector<std::uint64_t> peer_blocks;
  bool layerwise = false;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_request& x) {
  return f(caf::meta::type_name("kvferry::proto::node_request"), x.id, x.peer,
           x.blocks, x.peer_blocks, x.layerwise);
}

/// A decode node to its own transfer actor: the prefill `peer` offered
/// request `id` (node_offer_atom), to be pulled over the plugin path. The
/// transfer actor keeps it and serves the caller's pull itself (it plans
/// from the two layouts, orders the prefill's transfer actor and answers the
/// caller when the last byte landed): the node is off the pull's path.
struct pull_offer {
  std::uint64_t id = 0;
  std::string peer;                      // the prefill node's name
  std::vector<std::uint64_t> src_blocks; // the prefill's
  kv_layout_desc src_layout;             // the prefill's cache
  kv_layout_desc dst_layout;             // ours
  endpoint src;                          // the prefill's transfer actor
  caf::actor src_node;                   // the prefill's node actor
  std::string puller;                    // our node's name
  std::uint32_t timeout_ms = 0; // the transfer's; and how long it is kept
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, pull_offer& x) {
  return f(caf::meta::type_name("kvferry::proto::pull_offer"), x.id, x.peer,
           x.src_blocks, x.src_layout, x.dst_layout, x.src, x.src_node,
           x.puller, x.timeout_ms);
}

/// A node actor's answer to a finished request: the bytes and this node's
/// data window (steady_clock ns of this process): from the first send order
/// posted (sender) or the first announcement known (receiver) to the last
/// byte sent or landed.
struct node_report {
  std::uint64_t id = 0;
  std::uint64_t bytes = 0;
  std::int64_t data_start_ns = 0;
  std::int64_t data_end_ns = 0;
  bool ipc = false;
  // Receiver, CUDA IPC: summed over parts, as in recv_report (0: unknown).
  std::int64_t gpu_copy_ns = 0;
  std::int64_t gpu_queued_ns = 0;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_report& x) {
  return f(caf::meta::type_name("kvferry::proto::node_report"), x.id, x.bytes,
           x.data_start_ns, x.data_end_ns, x.ipc, x.gpu_copy_ns,
           x.gpu_queued_ns);
}

/// Sending node -> receiving node, as it posts part `part` of request `id`
/// (the transfer actors' announcement travels beside it): the receiver
/// posts the matching recv order. `parts` in all (layers if layerwise).
struct node_part {
  std::uint64_t id = 0;
  std::string sender;
  std::uint32_t part = 0;
  std::uint32_t parts = 1;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_part& x) {
  return f(caf::meta::type_name("kvferry::proto::node_part"), x.id, x.sender,
           x.part, x.parts);
}

/// Prefill node -> decode node on one host (a one-sided pull, see
/// node_actor): part `part` of advertised request `id` is written (`parts`
/// in all: layers if layerwise, else 1); the decode node reads it itself
/// over CUDA IPC. `blocks`: the prefill's source block ids, in the first
/// note of a request only (notes arrive in order). `event`: the text of an
/// interprocess CUDA event (transport::export_ipc_event) the read's copy
/// waits for on the GPU; empty: the part is written already.
struct node_ready {
  std::uint64_t id = 0;
  std::string sender;
  std::uint32_t part = 0;
  std::uint32_t parts = 1;
  std::vector<std::uint64_t> blocks;
  std::string event;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_ready& x) {
  return f(caf::meta::type_name("kvferry::proto::node_ready"), x.id, x.sender,
           x.part, x.parts, x.blocks, x.event);
}

// ---- endpoint (kvferry::endpoint, engine/; docs/engine-api.md) -------------

/// Endpoint control actor to endpoint control actor, both ways when one
/// connects to the other: who I am (`name`, the transfer actor's name too),
/// which endpoint instance (descriptors carry it), my control actor and my
/// transfer actor's endpoint.
struct peer_hello {
  std::string name;
  std::uint64_t instance = 0;
  caf::actor control;
  endpoint transfer;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, peer_hello& x) {
  return f(caf::meta::type_name("kvferry::proto::peer_hello"), x.name,
           x.instance, x.control, x.transfer);
}

/// Receiver's endpoint -> sender's endpoint (two-sided): a receive was
/// posted as transfer `transfer_id` (chosen by the receiver) into `ranges`
/// of the receiver's region table (dst_offset and length matter).
struct posted_recv {
  std::string receiver;
  std::uint64_t transfer_id = 0;
  std::vector<extent> ranges;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, posted_recv& x) {
  return f(caf::meta::type_name("kvferry::proto::posted_recv"), x.receiver,
           x.transfer_id, x.ranges);
}

/// What an endpoint asks of its own control actor (in-process only).
enum class endpoint_op : std::uint8_t { write = 0, read, send, recv };

/// One asynchronous endpoint operation: `op` number `id` on connection
/// `conn`. write/read: `extents` map the source side to the destination side
/// (virtual offsets, plan.hpp), `dst_sizes` is the destination's region
/// table as far as the caller knows it. send/recv: `extents` are the local
/// ranges (src_offset for send, dst_offset for recv).
struct endpoint_order {
  std::uint8_t op = 0; // an endpoint_op
  std::uint64_t id = 0;
  std::uint64_t conn = 0;
  std::vector<extent> extents;
  std::vector<std::uint64_t> dst_sizes;
  // read: the peer's regions the call's descriptors name (their advertised
  // bytes), as dst_sizes names them for a write. Counted by the caller's
  // pass, like `bytes`, so that the control actor makes no pass of its own.
  std::vector<std::uint64_t> src_sizes;
  std::uint64_t bytes = 0; // write/read: the extents' byte total
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, endpoint_order& x) {
  return f(caf::meta::type_name("kvferry::proto::endpoint_order"), x.op, x.id,
           x.conn, x.extents, x.dst_sizes, x.src_sizes, x.bytes);
}

/// One transfer settled at an endpoint (ep_batch): `error` empty: landed.
struct ep_settled {
  std::uint64_t transfer_id = 0;
  caf::error error;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, ep_settled& x) {
  return f(caf::meta::type_name("kvferry::proto::ep_settled"), x.transfer_id,
           x.error);
}

/// Endpoint control actor -> its peer's: everything that piled up for the
/// peer since the last batch, in one message. A remote message costs system
/// calls and thread wake-ups on both sides (more CPU than a 64 KiB
/// transfer's own bytes on the 2-core machine); one per transfer and kind
/// kept `bench endpoint` at about half of `bench net` (issue #16).
/// `sender` names the sending endpoint. Transfer ids chosen by the sender:
/// posts (receives for the recipient's next sends, in posting order; a send
/// that filled one is reported back in `receipts`), pushes (its reads: the
/// recipient's transfer actor pushes these; only a failure is answered).
/// answers: the recipient's writes and pushes (its ids), settled here;
/// receipts: the sender's receives (its ids) that the recipient's sends
/// filled, settled here. A write is answered by the transfer actor of the
/// endpoint written to, in a batch of its own that carries answers only
/// (send_order::answer_to), named by the name its endpoint shares.
struct ep_batch {
  std::string sender;
  std::vector<posted_recv> posts;
  std::vector<send_order> pushes;
  std::vector<ep_settled> answers;  // ids the recipient chose
  std::vector<ep_settled> receipts; // ids the sender chose (its receives)
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, ep_batch& x) {
  return f(caf::meta::type_name("kvferry::proto::ep_batch"), x.sender, x.posts,
           x.pushes, x.answers, x.receipts);
}

/// Endpoint control actor -> its own transfer actor: the write orders that
/// piled up since its last flush, in one local message instead of a request
/// each (at depth 16, a 64 KiB write's actor messages cost more CPU than
/// its bytes; issue #16). The transfer actor settles each as a send_atom
/// request would, and reports them to the batch's sender in order_settled
/// lists.
struct order_batch {
  std::vector<send_order> sends;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, order_batch& x) {
  return f(caf::meta::type_name("kvferry::proto::order_batch"), x.sends);
}

/// One send of an order_batch settled: `error` empty: done, `bytes` moved;
/// `landed`: the bytes are in the peer's memory already (CUDA IPC: our
/// kernel wrote them there), else they left here (a plugin: the peer's
/// answer says when they landed).
struct order_settled {
  std::string peer;
  std::uint64_t transfer_id = 0;
  std::uint64_t bytes = 0;
  bool landed = false;
  caf::error error;
};
template<class Inspector>
typename Inspector::result_type inspect(Inspector& f, order_settled& x) {
  return f(caf::meta::type_name("kvferry::proto::order_settled"), x.peer,
           x.transfer_id, x.bytes, x.landed, x.error);
}

/// Registers every type above with a config (call before the system starts).
void add_protocol_types(caf::actor_system_config& cfg);

} // namespace kvferry::proto
