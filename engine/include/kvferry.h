/* kvferry's C API: kvferry::endpoint (docs/engine-api.md) for C and for
 * languages that load libkvferry.so (Python's kvferry module does, through
 * ctypes). C99; no exception or C++ type crosses it.
 *
 * Every function returns KVF_OK (0) or an error code (kvf_status); the
 * reason, naming the peer, region or argument at fault, is then in
 * kvf_last_error() (thread-local, valid until this thread's next call).
 * Handles are opaque; ids are 64-bit integers. Any thread may call any
 * function on an endpoint; kvf_endpoint_destroy must be the last. */
#ifndef KVFERRY_H
#define KVFERRY_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define KVF_API __attribute__((visibility("default")))
#else
#define KVF_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Codes: kvferry::ec's values, plus KVF_PENDING from kvf_poll. */
typedef enum kvf_status {
  KVF_OK = 0,
  KVF_TIMEOUT = 1,
  KVF_PEER_DOWN = 2,
  KVF_UNAUTHORIZED = 3,
  KVF_INVALID_EXTENT = 4,
  KVF_PLUGIN_ERROR = 5,
  KVF_MISMATCH = 6,
  KVF_NOT_FOUND = 7,
  KVF_DUPLICATE = 8,
  KVF_INVALID_ARGUMENT = 9,
  KVF_CUDA_ERROR = 10,
  KVF_UNREACHABLE = 11,
  KVF_CONFIG_ERROR = 12,
  KVF_LEASE_EXPIRED = 13,
  KVF_INTERNAL = 14,
  KVF_PENDING = 100
} kvf_status;

/* Size of a descriptor blob (kvf_advertise). */
#define KVF_DESCRIPTOR_BYTES 48
/* Largest notification payload. */
#define KVF_MAX_NOTIFICATION_BYTES 65536
/* kvf_reg's gpu argument: the endpoint's own device. */
#define KVF_DEVICE_DEFAULT (-2)

typedef struct kvf_endpoint kvf_endpoint;

typedef struct kvf_options {
  int gpu;                      /* CUDA device, -1: host memory */
  const char* plugin;           /* NULL or "": kvsock */
  const char* address;          /* control port; NULL: "127.0.0.1" */
  uint16_t port;                /* 0: any free port */
  const char* name;             /* NULL or "": generated */
  uint32_t transfer_timeout_ms; /* 0: 30000 */
  uint32_t connect_timeout_ms;  /* 0: 10000 */
  const char* tls_dir;  /* mutual TLS on the control port (docs/security.md):
                           a folder of `kvferry pki init`; NULL or "": plain */
  const char* tls_name; /* the certificate presented; NULL or "": name */
} kvf_options;

/* Bytes [offset, offset + size) of a registered region. */
typedef struct kvf_slice {
  uint64_t region;
  uint64_t offset;
  uint64_t size;
} kvf_slice;

/* The reason for this thread's last error ("" after success). */
KVF_API const char* kvf_last_error(void);
/* "timeout", "peer_down", ... for a code. */
KVF_API const char* kvf_status_name(int code);
/* kvferry's version, e.g. "0.1.0". */
KVF_API const char* kvf_version(void);

/* Defaults: host memory, kvsock, 127.0.0.1, any port. */
KVF_API void kvf_options_init(kvf_options* options);
/* options may be NULL (the defaults). */
KVF_API int kvf_endpoint_create(const kvf_options* options, kvf_endpoint** out);
/* Stops the endpoint; transfers in flight fail. NULL is fine. */
KVF_API void kvf_endpoint_destroy(kvf_endpoint* endpoint);

/* The metadata blob a peer passes to kvf_connect: copied to buf when
 * capacity suffices; *size always gets its length (KVF_INVALID_ARGUMENT
 * when capacity is too small). */
KVF_API int kvf_metadata(kvf_endpoint* endpoint, uint8_t* buf, size_t capacity,
                         size_t* size);
KVF_API int kvf_connect(kvf_endpoint* endpoint, const uint8_t* metadata,
                        size_t size, uint64_t* conn);
KVF_API int kvf_accept(kvf_endpoint* endpoint, uint32_t timeout_ms,
                       uint64_t* conn);

/* Registers memory in place (host, or CUDA device gpu; KVF_DEVICE_DEFAULT:
 * the endpoint's device). */
KVF_API int kvf_reg(kvf_endpoint* endpoint, void* ptr, size_t size, int gpu,
                    uint64_t* region);
KVF_API int kvf_dereg(kvf_endpoint* endpoint, uint64_t region);
/* A descriptor of [offset, offset + size) of a local region, for a peer. */
KVF_API int kvf_advertise(kvf_endpoint* endpoint, uint64_t region,
                          uint64_t offset, uint64_t size,
                          uint8_t descriptor[KVF_DESCRIPTOR_BYTES]);
/* The sub-range [offset, offset + size) of a descriptor. */
KVF_API int kvf_descriptor_sub(const uint8_t descriptor[KVF_DESCRIPTOR_BYTES],
                               uint64_t offset, uint64_t size,
                               uint8_t out[KVF_DESCRIPTOR_BYTES]);

/* One-sided: local[i] into (write) or from (read) the peer's range
 * descriptors[i * KVF_DESCRIPTOR_BYTES ...], equal sizes, i < count. */
KVF_API int kvf_write(kvf_endpoint* endpoint, uint64_t conn,
                      const kvf_slice* local, const uint8_t* descriptors,
                      size_t count, uint64_t* xfer);
KVF_API int kvf_read(kvf_endpoint* endpoint, uint64_t conn,
                     const kvf_slice* local, const uint8_t* descriptors,
                     size_t count, uint64_t* xfer);
/* Two-sided, matched in order per connection; a send is done once its bytes
 * landed in the peer's receive (the endpoint may be destroyed then). */
KVF_API int kvf_send(kvf_endpoint* endpoint, uint64_t conn,
                     const kvf_slice* local, size_t count, uint64_t* xfer);
KVF_API int kvf_recv(kvf_endpoint* endpoint, uint64_t conn,
                     const kvf_slice* local, size_t count, uint64_t* xfer);

/* KVF_OK (done; *bytes moved, bytes may be NULL), KVF_PENDING, or the
 * transfer's error. Done or failed is reported once. */
KVF_API int kvf_poll(kvf_endpoint* endpoint, uint64_t xfer, uint64_t* bytes);
/* KVF_OK once done, the transfer's error, or KVF_TIMEOUT (still pending). */
KVF_API int kvf_wait(kvf_endpoint* endpoint, uint64_t xfer, uint32_t timeout_ms,
                     uint64_t* bytes);

/* Transfers done since create, and their bytes, per path: the loaded
 * plugin, or CUDA IPC (same-host endpoints of GPU memory). */
typedef struct kvf_stats {
  uint64_t plugin_transfers;
  uint64_t plugin_bytes;
  uint64_t ipc_transfers;
  uint64_t ipc_bytes;
} kvf_stats;
KVF_API int kvf_stats_get(kvf_endpoint* endpoint, kvf_stats* out);

KVF_API int kvf_notify(kvf_endpoint* endpoint, uint64_t conn,
                       const uint8_t* bytes, size_t size);
/* The oldest notification received: KVF_NOT_FOUND when there is none;
 * KVF_INVALID_ARGUMENT (and *size its length; it stays) when capacity is
 * too small. */
KVF_API int kvf_take_notification(kvf_endpoint* endpoint, uint64_t* conn,
                                  uint8_t* buf, size_t capacity, size_t* size);

#ifdef __cplusplus
}
#endif

#endif /* KVFERRY_H */
