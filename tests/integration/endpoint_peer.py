#!/usr/bin/env python3
"""The Python module kvferry (numpy buffers) as one side of the endpoint peer
exchange (tests/integration/endpoint_peers.sh), the same protocol as
endpoint_peer.c, so either side may be either language:

    endpoint_peer.py server DIR | client DIR | both

Exit 0 when every byte matched. `both` also checks bad input and, with
--overhead, prints Python's added cost per call next to the C API's."""
import os
import sys
import time

import numpy as np

import kvferry

WRITE_BYTES = 1 << 20
SEND_BYTES = 256 << 10
LIMIT = 20.0


def pattern(n, seed):
    i = np.arange(n, dtype=np.uint64)
    return ((i * 7 + seed * 31 + i // 4093) & 0xFF).astype(np.uint8)


def take(ep):
    until = time.monotonic() + LIMIT
    while time.monotonic() < until:
        notes = ep.notifications()
        if notes:
            return notes
        time.sleep(0.001)
    sys.exit("no notification within %.0f s" % LIMIT)


def serve(ep, conn):
    target = np.zeros(WRITE_BYTES, dtype=np.uint8)
    inbox = np.zeros(SEND_BYTES, dtype=np.uint8)
    tr, ir = ep.reg(target), ep.reg(inbox)
    recv_id = ep.recv(conn, (ir, 0, SEND_BYTES))
    ep.notify(conn, ep.advertise(tr, 0, WRITE_BYTES))
    if ep.wait(recv_id, LIMIT) != SEND_BYTES or \
            not np.array_equal(inbox, pattern(SEND_BYTES, 2)):
        sys.exit("server: the two-sided bytes differ")
    notes = take(ep)
    if notes[0][1] != b"done":
        sys.exit("server: expected the notification 'done', got %r" % notes)
    if not np.array_equal(target, pattern(WRITE_BYTES, 1)):
        sys.exit("server: the one-sided bytes differ")
    print("server: verified %d + %d bytes" % (WRITE_BYTES, SEND_BYTES))


def visit(ep, conn):
    mine, out = pattern(WRITE_BYTES, 1), pattern(SEND_BYTES, 2)
    back = np.zeros(WRITE_BYTES, dtype=np.uint8)
    desc = take(ep)[0][1]
    if len(desc) != kvferry.DESCRIPTOR_BYTES:
        sys.exit("client: the first notification is not a descriptor")
    mr, br, orr = ep.reg(mine), ep.reg(back), ep.reg(out)
    ep.wait(ep.write(conn, (mr, 0, WRITE_BYTES), desc), LIMIT)
    ep.wait(ep.read(conn, (br, 0, WRITE_BYTES), desc), LIMIT)
    if not np.array_equal(back, mine):
        sys.exit("client: the bytes read back differ")
    ep.wait(ep.send(conn, (orr, 0, SEND_BYTES)), LIMIT)
    ep.notify(conn, b"done")  # no goodbye: the send landed, the client may go
    print("client: wrote, read back and sent %d + %d bytes" %
          (WRITE_BYTES, SEND_BYTES))


def expect_error(name, f, *args):
    try:
        f(*args)
    except kvferry.Error as e:
        if e.name != name or not e.reason:
            sys.exit("expected %s, got %s: %s" % (name, e.name, e.reason))
        return e
    sys.exit("expected %s, got no error" % name)


def both():
    with kvferry.Endpoint(name="py-both-a") as a, \
            kvferry.Endpoint(name="py-both-b") as b:
        e = expect_error("invalid_argument", a.connect, b"KVFM\x01\x00\x03")
        assert "byte" in e.reason, e.reason
        ab = a.connect(b.metadata())
        ba = b.accept(LIMIT)
        src = pattern(WRITE_BYTES, 1)
        dst = np.zeros(WRITE_BYTES, dtype=np.uint8)
        sr, dr = a.reg(src), b.reg(dst)
        desc = b.advertise(dr, 0, WRITE_BYTES)
        # Vector form: two pieces into two places.
        half = WRITE_BYTES // 2
        x = a.write(ab, [(sr, 0, half), (sr, half, half)],
                    [kvferry.descriptor_sub(desc, half, half),
                     kvferry.descriptor_sub(desc, 0, half)])
        assert a.wait(x, LIMIT) == WRITE_BYTES
        assert np.array_equal(dst[half:], src[:half])
        assert np.array_equal(dst[:half], src[half:])
        # Two-sided, a wait that times out, and a raw (pointer, size) region.
        r = b.recv(ba, (dr, 0, 4096))
        expect_error("timeout", b.wait, r, 0.05)
        assert b.poll(r) is None
        raw = pattern(4096, 5)
        rr = a.reg((raw.ctypes.data, raw.nbytes))
        assert a.wait(a.send(ab, (rr, 0, 4096)), LIMIT) == 4096
        assert b.wait(r, LIMIT) == 4096
        assert np.array_equal(dst[:4096], raw)
        expect_error("invalid_argument", a.reg, b"read-only")
        expect_error("not_found", a.send, 99, (sr, 0, 1))
        if "--overhead" in sys.argv:
            overhead(a)
    print("both: ok")


def overhead(ep):
    """Python's added cost per call: poll of an unknown id (the cheapest
    call, all C API) timed from Python."""
    n = 20000
    t = time.perf_counter()
    for _ in range(n):
        try:
            ep.poll(1 << 60)
        except kvferry.Error:
            pass
    per = (time.perf_counter() - t) / n * 1e6
    print("python: %.2f us per call (poll, error path)" % per)


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "both":
        both()
        return
    if len(sys.argv) != 3 or sys.argv[1] not in ("server", "client"):
        sys.exit("usage: endpoint_peer.py both | server DIR | client DIR")
    meta = os.path.join(sys.argv[2], "meta")
    if sys.argv[1] == "server":
        with kvferry.Endpoint(name="py-server") as ep:
            with open(meta + ".tmp", "wb") as f:
                f.write(ep.metadata())
            os.rename(meta + ".tmp", meta)
            serve(ep, ep.accept(LIMIT))
        return
    with kvferry.Endpoint(name="py-client") as ep:
        until = time.monotonic() + LIMIT
        while not os.path.exists(meta) and time.monotonic() < until:
            time.sleep(0.02)
        with open(meta, "rb") as f:
            visit(ep, ep.connect(f.read()))


if __name__ == "__main__":
    main()
