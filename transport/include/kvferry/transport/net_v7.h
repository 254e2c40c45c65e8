// The NCCL network-plugin ABI, version 7, declared by kvferry.
//
// NCCL installs no header for this interface, so we declare it ourselves and
// pin every size and offset with static_asserts (x86-64). The facts come from
// shared/docs/nccl-net-v7.md; a plugin built against this header is loadable
// by NCCL itself, and kvferry can load any plugin that NCCL could.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

// ---- result codes ----------------------------------------------------------
typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
} ncclResult_t;

// ---- logging ---------------------------------------------------------------
typedef enum {
  NCCL_LOG_NONE = 0,
  NCCL_LOG_VERSION = 1,
  NCCL_LOG_WARN = 2,
  NCCL_LOG_INFO = 3,
  NCCL_LOG_ABORT = 4,
  NCCL_LOG_TRACE = 5,
} ncclDebugLogLevel;

typedef void (*ncclDebugLogger_t)(ncclDebugLogLevel level, unsigned long flags,
                                  const char* file, int line, const char* fmt,
                                  ...);

// ---- constants -------------------------------------------------------------
#define NCCL_NET_HANDLE_MAXSIZE 128
#define NCCL_PTR_HOST 0x1
#define NCCL_PTR_CUDA 0x2
#define NCCL_PTR_DMABUF 0x4
// Requests a plugin must accept in flight on one comm (NCCL 2.23+).
#define NCCL_NET_MAX_REQUESTS 32
#define NCCL_NET_DEVICE_UNPACK_VERSION 7

typedef enum {
  NCCL_NET_DEVICE_HOST = 0,
  NCCL_NET_DEVICE_UNPACK = 1,
} ncclNetDeviceType;

typedef struct {
  ncclNetDeviceType netDeviceType;
  int netDeviceVersion;
  void* handle;
  size_t size;
  int needsProxyProgress;
} ncclNetDeviceHandle_v7_t;

typedef struct {
  char* name;
  char* pciPath;
  uint64_t guid;
  int ptrSupport;
  int speed;
  int port;
  float latency;
  int maxComms;
  int maxRecvs;
  ncclNetDeviceType netDeviceType;
  int netDeviceVersion;
} ncclNetProperties_v7_t;

typedef struct {
  const char* name;
  ncclResult_t (*init)(ncclDebugLogger_t logFunction);
  ncclResult_t (*devices)(int* ndev);
  ncclResult_t (*getProperties)(int dev, ncclNetProperties_v7_t* props);
  ncclResult_t (*listen)(int dev, void* handle, void** listenComm);
  ncclResult_t (*connect)(int dev, void* handle, void** sendComm,
                          ncclNetDeviceHandle_v7_t** sendDevComm);
  ncclResult_t (*accept)(void* listenComm, void** recvComm,
                         ncclNetDeviceHandle_v7_t** recvDevComm);
  ncclResult_t (*regMr)(void* comm, void* data, int size, int type,
                        void** mhandle);
  ncclResult_t (*regMrDmaBuf)(void* comm, void* data, size_t size, int type,
                              uint64_t offset, int fd, void** mhandle);
  ncclResult_t (*deregMr)(void* comm, void* mhandle);
  ncclResult_t (*isend)(void* sendComm, void* data, int size, int tag,
                        void* mhandle, void** request);
  ncclResult_t (*irecv)(void* recvComm, int n, void** data, int* sizes,
                        int* tags, void** mhandles, void** request);
  ncclResult_t (*iflush)(void* recvComm, int n, void** data, int* sizes,
                         void** mhandles, void** request);
  ncclResult_t (*test)(void* request, int* done, int* sizes);
  ncclResult_t (*closeSend)(void* sendComm);
  ncclResult_t (*closeRecv)(void* recvComm);
  ncclResult_t (*closeListen)(void* listenComm);
  ncclResult_t (*getDeviceMr)(void* comm, void* mhandle, void** dptr_mhandle);
  ncclResult_t (*irecvConsumed)(void* recvComm, int n, void* request);
} ncclNet_v7_t;

// ---- UNPACK device structures (GPUDirect-TCPX receive path) ----------------
#define NCCL_NET_UNPACK_SLOTS 16     // one per outstanding irecv
#define NCCL_NET_UNPACK_RECORDS 2048 // 4 MiB / 4 KiB pages, times two
#define NCCL_NET_UNPACK_PAGE 4096

typedef struct alignas(16) {
  uint32_t src_off; // fragment offset in the bounce buffer
  uint32_t len;     // bytes
  uint64_t dst_off; // offset in the destination buffer of that irecv
} ncclNetUnpackRecord;

// The ring: all slots' records first, then one count per slot (the layout
// NCCL's unpack kernel and the GPUDirect-TCPX plugin share).
typedef struct {
  ncclNetUnpackRecord records[NCCL_NET_UNPACK_SLOTS][NCCL_NET_UNPACK_RECORDS];
  uint64_t count[NCCL_NET_UNPACK_SLOTS];
} ncclNetUnpackMeta;

// What the UNPACK device handle's `handle` points to (GPU-visible).
typedef struct {
  ncclNetUnpackMeta* meta;
  char* bounce_buf;
  uint64_t head;
} ncclNetUnpackHandle;

} // extern "C"

// ---- layout checks: byte-for-byte the v7 ABI --------------------------------
static_assert(sizeof(ncclNetProperties_v7_t) == 56, "v7 properties size");
static_assert(offsetof(ncclNetProperties_v7_t, name) == 0);
static_assert(offsetof(ncclNetProperties_v7_t, pciPath) == 8);
static_assert(offsetof(ncclNetProperties_v7_t, guid) == 16);
static_assert(offsetof(ncclNetProperties_v7_t, ptrSupport) == 24);
static_assert(offsetof(ncclNetProperties_v7_t, speed) == 28);
static_assert(offsetof(ncclNetProperties_v7_t, port) == 32);
static_assert(offsetof(ncclNetProperties_v7_t, latency) == 36);
static_assert(offsetof(ncclNetProperties_v7_t, maxComms) == 40);
static_assert(offsetof(ncclNetProperties_v7_t, maxRecvs) == 44);
static_assert(offsetof(ncclNetProperties_v7_t, netDeviceType) == 48);
static_assert(offsetof(ncclNetProperties_v7_t, netDeviceVersion) == 52);

static_assert(sizeof(ncclNetDeviceHandle_v7_t) == 32, "v7 device handle size");
static_assert(offsetof(ncclNetDeviceHandle_v7_t, netDeviceType) == 0);
static_assert(offsetof(ncclNetDeviceHandle_v7_t, netDeviceVersion) == 4);
static_assert(offsetof(ncclNetDeviceHandle_v7_t, handle) == 8);
static_assert(offsetof(ncclNetDeviceHandle_v7_t, size) == 16);
static_assert(offsetof(ncclNetDeviceHandle_v7_t, needsProxyProgress) == 24);

static_assert(sizeof(ncclNet_v7_t) == 152, "v7 table size: 19 pointers");
static_assert(offsetof(ncclNet_v7_t, name) == 0);
static_assert(offsetof(ncclNet_v7_t, init) == 8);
static_assert(offsetof(ncclNet_v7_t, devices) == 16);
static_assert(offsetof(ncclNet_v7_t, getProperties) == 24);
static_assert(offsetof(ncclNet_v7_t, listen) == 32);
static_assert(offsetof(ncclNet_v7_t, connect) == 40);
static_assert(offsetof(ncclNet_v7_t, accept) == 48);
static_assert(offsetof(ncclNet_v7_t, regMr) == 56);
static_assert(offsetof(ncclNet_v7_t, regMrDmaBuf) == 64);
static_assert(offsetof(ncclNet_v7_t, deregMr) == 72);
static_assert(offsetof(ncclNet_v7_t, isend) == 80);
static_assert(offsetof(ncclNet_v7_t, irecv) == 88);
static_assert(offsetof(ncclNet_v7_t, iflush) == 96);
static_assert(offsetof(ncclNet_v7_t, test) == 104);
static_assert(offsetof(ncclNet_v7_t, closeSend) == 112);
static_assert(offsetof(ncclNet_v7_t, closeRecv) == 120);
static_assert(offsetof(ncclNet_v7_t, closeListen) == 128);
static_assert(offsetof(ncclNet_v7_t, getDeviceMr) == 136);
static_assert(offsetof(ncclNet_v7_t, irecvConsumed) == 144);

static_assert(sizeof(ncclNetUnpackRecord) == 16, "unpack record is 16 bytes");
static_assert(alignof(ncclNetUnpackRecord) == 16);
static_assert(offsetof(ncclNetUnpackRecord, len) == 4);
static_assert(offsetof(ncclNetUnpackRecord, dst_off) == 8);
static_assert(offsetof(ncclNetUnpackMeta, count) ==
              16 * NCCL_NET_UNPACK_SLOTS * NCCL_NET_UNPACK_RECORDS);
static_assert(offsetof(ncclNetUnpackHandle, bounce_buf) == 8);
static_assert(offsetof(ncclNetUnpackHandle, head) == 16);
