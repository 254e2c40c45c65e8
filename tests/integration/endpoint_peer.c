/* The C API (kvferry.h) as a C99 program, compiled with -std=c99 -pedantic
 * -Werror. Runs one side of the endpoint peer exchange
 * (tests/integration/endpoint_peers.sh), or both sides in one process:
 *
 *   endpoint_peer_c server DIR   writes DIR/meta, accepts, advertises its
 *                                buffer (notification), posts a receive,
 *                                waits for "done", verifies every byte
 *   endpoint_peer_c client DIR   connects, writes (one-sided) into the
 *                                advertised buffer, reads it back, sends
 *                                (two-sided), notifies "done"
 *   endpoint_peer_c both         both, in this process; plus bad input
 *   endpoint_peer_c teardown-client DIR N
 *                                N times: creates an endpoint, connects,
 *                                sends, waits and destroys it at once (the
 *                                server: endpoint_peer_cpp teardown-server)
 *
 * Exit 0 when every byte matched. */
#define _POSIX_C_SOURCE 200809L /* nanosleep under -std=c99 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvferry.h"

#define WRITE_BYTES (1u << 20)
#define SEND_BYTES (256u << 10)
#define LIMIT_MS 20000u

static int check(int code, const char* what) {
  if (code != KVF_OK) {
    fprintf(stderr, "%s failed: %s (%s)\n", what, kvf_status_name(code),
            kvf_last_error());
    exit(1);
  }
  return code;
}

static void fill(uint8_t* p, size_t n, unsigned seed) {
  size_t i;
  for (i = 0; i < n; ++i)
    p[i] = (uint8_t)(i * 7u + seed * 31u + i / 4093u);
}

static int same(const uint8_t* p, size_t n, unsigned seed) {
  size_t i;
  for (i = 0; i < n; ++i)
    if (p[i] != (uint8_t)(i * 7u + seed * 31u + i / 4093u))
      return 0;
  return 1;
}

static void pause_briefly(void) {
  struct timespec pause = {0, 1000000};
  nanosleep(&pause, NULL);
}

static void path_of(char* out, size_t cap, const char* dir, const char* name) {
  snprintf(out, cap, "%s/%s", dir, name);
}

/* A notification, waiting up to LIMIT_MS. */
static size_t take(kvf_endpoint* ep, uint8_t* buf, size_t cap) {
  time_t until = time(NULL) + LIMIT_MS / 1000;
  size_t size = 0;
  uint64_t conn = 0;
  while (time(NULL) <= until) {
    int rc = kvf_take_notification(ep, &conn, buf, cap, &size);
    if (rc == KVF_OK)
      return size;
    if (rc != KVF_NOT_FOUND)
      check(rc, "kvf_take_notification");
    pause_briefly();
  }
  fprintf(stderr, "no notification within %u ms\n", LIMIT_MS);
  exit(1);
}

static void serve(kvf_endpoint* ep, uint64_t conn) {
  uint8_t* target = calloc(WRITE_BYTES, 1);
  uint8_t* inbox = calloc(SEND_BYTES, 1);
  uint64_t tr, ir, recv_id, bytes = 0;
  uint8_t desc[KVF_DESCRIPTOR_BYTES];
  uint8_t note[64];
  kvf_slice in;
  check(kvf_reg(ep, target, WRITE_BYTES, KVF_DEVICE_DEFAULT, &tr), "reg");
  check(kvf_reg(ep, inbox, SEND_BYTES, KVF_DEVICE_DEFAULT, &ir), "reg");
  in.region = ir;
  in.offset = 0;
  in.size = SEND_BYTES;
  check(kvf_recv(ep, conn, &in, 1, &recv_id), "recv");
  check(kvf_advertise(ep, tr, 0, WRITE_BYTES, desc), "advertise");
  check(kvf_notify(ep, conn, desc, sizeof desc), "notify");
  check(kvf_wait(ep, recv_id, LIMIT_MS, &bytes), "wait recv");
  if (bytes != SEND_BYTES || !same(inbox, SEND_BYTES, 2)) {
    fprintf(stderr, "server: the two-sided bytes differ\n");
    exit(1);
  }
  if (take(ep, note, sizeof note) != 4 || memcmp(note, "done", 4) != 0) {
    fprintf(stderr, "server: expected the notification 'done'\n");
    exit(1);
  }
  if (!same(target, WRITE_BYTES, 1)) {
    fprintf(stderr, "server: the one-sided bytes differ\n");
    exit(1);
  }
  check(kvf_dereg(ep, tr), "dereg");
  check(kvf_dereg(ep, ir), "dereg");
  free(target);
  free(inbox);
  printf("server: verified %u + %u bytes\n", WRITE_BYTES, SEND_BYTES);
}

static void visit(kvf_endpoint* ep, uint64_t conn) {
  uint8_t* mine = malloc(WRITE_BYTES);
  uint8_t* back = calloc(WRITE_BYTES, 1);
  uint8_t* out = malloc(SEND_BYTES);
  uint8_t desc[64];
  uint64_t mr, br, orr, id, bytes = 0;
  kvf_slice s;
  fill(mine, WRITE_BYTES, 1);
  fill(out, SEND_BYTES, 2);
  if (take(ep, desc, sizeof desc) != KVF_DESCRIPTOR_BYTES) {
    fprintf(stderr, "client: the first notification is not a descriptor\n");
    exit(1);
  }
  check(kvf_reg(ep, mine, WRITE_BYTES, KVF_DEVICE_DEFAULT, &mr), "reg");
  check(kvf_reg(ep, back, WRITE_BYTES, KVF_DEVICE_DEFAULT, &br), "reg");
  check(kvf_reg(ep, out, SEND_BYTES, KVF_DEVICE_DEFAULT, &orr), "reg");
  s.region = mr;
  s.offset = 0;
  s.size = WRITE_BYTES;
  check(kvf_write(ep, conn, &s, desc, 1, &id), "write");
  check(kvf_wait(ep, id, LIMIT_MS, &bytes), "wait write");
  s.region = br;
  check(kvf_read(ep, conn, &s, desc, 1, &id), "read");
  check(kvf_wait(ep, id, LIMIT_MS, &bytes), "wait read");
  if (!same(back, WRITE_BYTES, 1)) {
    fprintf(stderr, "client: the bytes read back differ\n");
    exit(1);
  }
  s.region = orr;
  s.size = SEND_BYTES;
  check(kvf_send(ep, conn, &s, 1, &id), "send");
  check(kvf_wait(ep, id, LIMIT_MS, &bytes), "wait send");
  /* No goodbye: the send is done once it landed, so the client may go. */
  check(kvf_notify(ep, conn, (const uint8_t*)"done", 4), "notify");
  free(mine);
  free(back);
  free(out);
  printf("client: wrote, read back and sent %u + %u bytes\n", WRITE_BYTES,
         SEND_BYTES);
}

static void bad_input(kvf_endpoint* ep) {
  uint8_t junk[7] = {'K', 'V', 'F', 'M', 1, 0, 3};
  uint64_t conn = 0, xfer = 0;
  kvf_slice s;
  int rc = kvf_connect(ep, junk, sizeof junk, &conn);
  if (rc != KVF_INVALID_ARGUMENT || strstr(kvf_last_error(), "byte") == NULL) {
    fprintf(stderr, "malformed metadata: got %s (%s)\n", kvf_status_name(rc),
            kvf_last_error());
    exit(1);
  }
  rc = kvf_wait(ep, 12345, 10, NULL);
  if (rc != KVF_NOT_FOUND) {
    fprintf(stderr, "wait on no transfer: got %s\n", kvf_status_name(rc));
    exit(1);
  }
  s.region = 99;
  s.offset = 0;
  s.size = 1;
  rc = kvf_send(ep, 77, &s, 1, &xfer);
  if (rc != KVF_NOT_FOUND || kvf_last_error()[0] == '\0') {
    fprintf(stderr, "send on no connection: got %s\n", kvf_status_name(rc));
    exit(1);
  }
  rc = kvf_accept(NULL, 0, &conn);
  if (rc != KVF_INVALID_ARGUMENT) {
    fprintf(stderr, "a NULL endpoint: got %s\n", kvf_status_name(rc));
    exit(1);
  }
}

static kvf_endpoint* create(const char* name) {
  kvf_options o;
  kvf_endpoint* ep = NULL;
  kvf_options_init(&o);
  o.name = name;
  check(kvf_endpoint_create(&o, &ep), "kvf_endpoint_create");
  return ep;
}

/* DIR/meta into meta[0..cap), waiting up to LIMIT_MS for it to appear. */
static size_t read_meta(const char* path, uint8_t* meta, size_t cap) {
  time_t until = time(NULL) + LIMIT_MS / 1000;
  size_t size;
  FILE* f;
  while ((f = fopen(path, "rb")) == NULL && time(NULL) <= until)
    pause_briefly();
  if (f == NULL) {
    fprintf(stderr, "client: no %s within %u ms\n", path, LIMIT_MS);
    exit(1);
  }
  size = fread(meta, 1, cap, f);
  fclose(f);
  return size;
}

/* Round r of the teardown exchange: the size endpoint_peer.cpp expects. */
static size_t teardown_bytes(unsigned r) {
  return ((size_t)64 << 10) + (size_t)r * 4099u;
}

static void teardown_client(const uint8_t* meta, size_t size, unsigned rounds) {
  unsigned r;
  for (r = 0; r < rounds; ++r) {
    char name[64];
    kvf_endpoint* ep;
    uint64_t conn, region, id, bytes = 0;
    size_t n = teardown_bytes(r);
    uint8_t* out = malloc(n);
    kvf_slice s;
    snprintf(name, sizeof name, "c-teardown-client-%u", r);
    ep = create(name);
    fill(out, n, r);
    check(kvf_connect(ep, meta, size, &conn), "connect");
    check(kvf_reg(ep, out, n, KVF_DEVICE_DEFAULT, &region), "reg");
    s.region = region;
    s.offset = 0;
    s.size = n;
    check(kvf_send(ep, conn, &s, 1, &id), "send");
    check(kvf_wait(ep, id, LIMIT_MS, &bytes), "wait send");
    kvf_endpoint_destroy(ep); /* at once: no goodbye */
    free(out);
  }
  printf("client: sent %u rounds, each endpoint destroyed at once\n", rounds);
}

int main(int argc, char** argv) {
  uint8_t meta[1024];
  size_t size = 0;
  uint64_t conn = 0;
  char path[4096], tmp[4096];
  FILE* f;
  if (argc == 2 && strcmp(argv[1], "both") == 0) {
    /* In one process, the server's steps interleaved by hand: two-sided
     * matching and notifications need both sides. */
    kvf_endpoint* a = create("c-both-a");
    kvf_endpoint* b = create("c-both-b");
    uint8_t* src = malloc(WRITE_BYTES);
    uint8_t* dst = calloc(WRITE_BYTES, 1);
    uint8_t desc[KVF_DESCRIPTOR_BYTES], half[KVF_DESCRIPTOR_BYTES];
    uint64_t ab, ba, sr, dr, id, bytes = 0;
    kvf_slice s;
    bad_input(a);
    check(kvf_metadata(b, meta, sizeof meta, &size), "metadata");
    check(kvf_connect(a, meta, size, &ab), "connect");
    check(kvf_accept(b, LIMIT_MS, &ba), "accept");
    fill(src, WRITE_BYTES, 1);
    check(kvf_reg(a, src, WRITE_BYTES, KVF_DEVICE_DEFAULT, &sr), "reg");
    check(kvf_reg(b, dst, WRITE_BYTES, KVF_DEVICE_DEFAULT, &dr), "reg");
    check(kvf_advertise(b, dr, 0, WRITE_BYTES, desc), "advertise");
    check(kvf_descriptor_sub(desc, WRITE_BYTES / 2, WRITE_BYTES / 2, half),
          "descriptor_sub");
    s.region = sr;
    s.offset = WRITE_BYTES / 2;
    s.size = WRITE_BYTES / 2;
    check(kvf_write(a, ab, &s, half, 1, &id), "write");
    check(kvf_wait(a, id, LIMIT_MS, &bytes), "wait");
    (void)ba;
    kvf_endpoint_destroy(a);
    kvf_endpoint_destroy(b);
    if (bytes != WRITE_BYTES / 2 ||
        memcmp(dst + WRITE_BYTES / 2, src + WRITE_BYTES / 2, WRITE_BYTES / 2) !=
            0) {
      fprintf(stderr, "both: the bytes differ\n");
      return 1;
    }
    free(src);
    free(dst);
    printf("both: ok\n");
    return 0;
  }
  if (argc == 4 && strcmp(argv[1], "teardown-client") == 0) {
    path_of(path, sizeof path, argv[2], "meta");
    size = read_meta(path, meta, sizeof meta);
    teardown_client(meta, size, (unsigned)strtoul(argv[3], NULL, 10));
    return 0;
  }
  if (argc != 3) {
    fprintf(stderr,
            "usage: %s both | server DIR | client DIR | teardown-client DIR "
            "N\n",
            argv[0]);
    return 2;
  }
  path_of(path, sizeof path, argv[2], "meta");
  if (strcmp(argv[1], "server") == 0) {
    kvf_endpoint* ep = create("c-server");
    check(kvf_metadata(ep, meta, sizeof meta, &size), "metadata");
    path_of(tmp, sizeof tmp, argv[2], "meta.tmp");
    f = fopen(tmp, "wb");
    if (f == NULL || fwrite(meta, 1, size, f) != size || fclose(f) != 0) {
      perror(tmp);
      return 1;
    }
    rename(tmp, path);
    check(kvf_accept(ep, LIMIT_MS, &conn), "accept");
    serve(ep, conn);
    kvf_endpoint_destroy(ep);
    return 0;
  }
  {
    kvf_endpoint* ep = create("c-client");
    size = read_meta(path, meta, sizeof meta);
    check(kvf_connect(ep, meta, size, &conn), "connect");
    visit(ep, conn);
    kvf_endpoint_destroy(ep);
  }
  return 0;
}
