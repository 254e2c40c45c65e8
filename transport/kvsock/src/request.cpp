// test(): drive the comm, then report a request's completion or failure.
#include "comm.hpp"
#include "log.hpp"

namespace kvsock {
namespace {

bool message_complete(const Message& msg, bool sender) {
  if (msg.parts_left.load(std::memory_order_acquire) != 0) return false;
  return sender ? msg.ctrl_sent == msg.ctrl_total : msg.matched && msg.inline_done == msg.size;
}

// A matched message whose bytes are still read or written by lane threads.
bool lanes_busy(const Request& request) {
  for (int i = 0; i < request.n; ++i) {
    if (request.msgs[i].parts_left.load(std::memory_order_relaxed) != 0) return true;
  }
  return false;
}

ncclResult_t test_send(SendComm& comm, Request* request, int* done, int* sizes, bool* waiting) {
  comm.pump();
  Message& msg = request->msgs[0];
  if (message_complete(msg, true)) {
    *done = 1;
    if (sizes != nullptr) sizes[0] = static_cast<int>(msg.size);
    comm.release_request(request);
    return ncclSuccess;
  }
  int err = request->error.load();
  if (err == ncclSuccess) err = comm.error.load();
  if (err != ncclSuccess) return static_cast<ncclResult_t>(err);
  *waiting = msg.ctrl_sent == msg.ctrl_total;
  return ncclSuccess;
}

ncclResult_t test_recv(RecvComm& comm, Request* request, int* done, int* sizes, bool* waiting) {
  if (request->awaiting_consume) {  // UNPACK: tested again before irecvConsumed
    *done = 1;
    if (sizes != nullptr) sizes[0] = static_cast<int>(request->msgs[0].size);
    return ncclSuccess;
  }
  comm.pump();
  bool complete = request->matched == request->n;
  bool truncated = false;
  for (int i = 0; i < request->n && complete; ++i) {
    complete = message_complete(request->msgs[i], false);
    truncated = truncated || request->msgs[i].truncated;
  }
  if (!complete) {
    int err = request->error.load();
    if (err == ncclSuccess) err = comm.error.load();
    if (err != ncclSuccess) {
      // Free it only once no lane thread still owns one of its pieces.
      if (!lanes_busy(*request)) {
        if (request->unpack_slot >= 0) comm.unpack->slot_busy[request->unpack_slot] = false;
        comm.release_request(request);
      }
      return static_cast<ncclResult_t>(err);
    }
    *waiting = lanes_busy(*request);
    return ncclSuccess;
  }
  *done = 1;
  if (sizes != nullptr) {
    for (int i = 0; i < request->n; ++i) sizes[i] = static_cast<int>(request->msgs[i].size);
  }
  int err = request->error.load();
  if (truncated || err != ncclSuccess) {
    if (request->unpack_slot >= 0) comm.unpack->slot_busy[request->unpack_slot] = false;
    comm.release_request(request);
    return truncated ? ncclInternalError : static_cast<ncclResult_t>(err);
  }
  if (request->unpack_slot >= 0) {
    comm.publish_unpack(request);
    request->awaiting_consume = true;  // released by irecvConsumed
    return ncclSuccess;
  }
  comm.release_request(request);
  return ncclSuccess;
}

}  // namespace

ncclResult_t test_request(Request* request, int* done, int* sizes, bool* waiting_on_lanes) {
  *done = 0;
  *waiting_on_lanes = false;
  CommBase* comm = request->comm;
  std::lock_guard<std::mutex> lock(comm->mu);
  if (comm->sender) return test_send(*static_cast<SendComm*>(comm), request, done, sizes, waiting_on_lanes);
  return test_recv(*static_cast<RecvComm*>(comm), request, done, sizes, waiting_on_lanes);
}

}  // namespace kvsock
