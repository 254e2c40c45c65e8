#!/usr/bin/env python3
"""The Python module kvferry with GPU tensors (issue #16): torch (and cupy,
where installed) CUDA tensors registered through __cuda_array_interface__,
moved one-sided and two-sided between two endpoints on GPU 0, every byte
compared on the GPU: in one process over kvsock (one process cannot map its
own CUDA IPC handles), then between two processes (this script again, as the
server) where write, read, their vector forms and a vector send/recv must
take CUDA IPC (stats() counts them). Exits 77 ("SKIPPED: ...") without torch
or without a GPU. Run by tests/test_endpoint_torch (build tree and device
bundle alike)."""
import os
import subprocess
import sys
import tempfile
import time

try:
    import torch
except ImportError:
    print("SKIPPED: torch is not installed for %s" % sys.executable)
    sys.exit(77)
if not torch.cuda.is_available():
    print("SKIPPED: torch finds no CUDA GPU")
    sys.exit(77)

import kvferry

N = 8 << 20
LIMIT = 30.0


def pattern():
    return (torch.arange(N, device="cuda:0", dtype=torch.int64) * 7 %
            251).to(torch.uint8)


def take(ep):
    until = time.monotonic() + LIMIT
    while time.monotonic() < until:
        notes = ep.notifications()
        if notes:
            return notes[0][1]
        time.sleep(0.001)
    sys.exit("no notification within %.0f s" % LIMIT)


def serve(folder):
    """The server of the two-process case: advertises a tensor, receives a
    vector send into another, checks both."""
    with kvferry.Endpoint(gpu=0, name="torch-ipc-server") as ep:
        tmp = os.path.join(folder, "meta.tmp")
        with open(tmp, "wb") as f:
            f.write(ep.metadata())
        os.rename(tmp, os.path.join(folder, "meta"))
        conn = ep.accept(LIMIT)
        target = torch.zeros(N, device="cuda:0", dtype=torch.uint8)
        inbox = torch.zeros(N, device="cuda:0", dtype=torch.uint8)
        torch.cuda.synchronize()
        tr, ir = ep.reg(target), ep.reg(inbox)
        r = ep.recv(conn, [(ir, 0, N // 2), (ir, N // 2, N // 2)])
        ep.notify(conn, ep.advertise(tr, 0, N))
        assert ep.wait(r, LIMIT) == N
        expect = pattern()
        assert torch.equal(inbox, expect), "server: send/recv bytes differ"
        assert take(ep) == b"done"
        assert torch.equal(target, expect), "server: written bytes differ"
        stats = ep.stats()
        assert stats["ipc_transfers"] == 1, stats
        assert stats["plugin_transfers"] == 0, stats
    print("server: verified, over CUDA IPC")


def two_processes():
    folder = tempfile.mkdtemp(prefix="kvferry-ep-torch-")
    server = subprocess.Popen([sys.executable, __file__, "serve", folder])
    try:
        meta = os.path.join(folder, "meta")
        until = time.monotonic() + 60
        while not os.path.exists(meta) and time.monotonic() < until:
            time.sleep(0.01)
        with open(meta, "rb") as f, \
                kvferry.Endpoint(gpu=0, name="torch-ipc-client") as ep:
            conn = ep.connect(f.read())
            desc = take(ep)
            sub = kvferry.descriptor_sub
            src = pattern()
            back = torch.zeros(N, device="cuda:0", dtype=torch.uint8)
            torch.cuda.synchronize()
            sr, br = ep.reg(src), ep.reg(back)
            h, q = N // 2, N // 4
            moves = [
                ("write", ep.write(conn, (sr, 0, h), sub(desc, 0, h))),
                ("vector write",
                 ep.write(conn, [(sr, h, q), (sr, h + q, q)],
                          [sub(desc, h, q), sub(desc, h + q, q)])),
                ("read", ep.read(conn, (br, 0, h), sub(desc, 0, h))),
                ("vector read",
                 ep.read(conn, [(br, h + q, q), (br, h, q)],
                         [sub(desc, h + q, q), sub(desc, h, q)])),
            ]
            for what, xfer in moves:
                assert ep.wait(xfer, LIMIT) > 0, what
            assert torch.equal(back, src), "read back: bytes differ"
            assert ep.wait(ep.send(conn, [(sr, 0, q), (sr, q, N - q)]),
                           LIMIT) == N
            stats = ep.stats()
            assert stats["ipc_transfers"] == 5, stats
            assert stats["ipc_bytes"] == 3 * N, stats
            assert stats["plugin_transfers"] == 0, stats
            ep.notify(conn, b"done")
        assert server.wait(LIMIT) == 0, "the server process failed"
    finally:
        if server.poll() is None:
            server.kill()
    print("torch: two processes, write/read/vector forms/send over CUDA IPC, "
          "%d bytes each: ok" % N)


if len(sys.argv) == 3 and sys.argv[1] == "serve":
    serve(sys.argv[2])
    sys.exit(0)

with kvferry.Endpoint(gpu=0, name="torch-a") as a, \
        kvferry.Endpoint(gpu=0, name="torch-b") as b:
    ab = a.connect(b.metadata())
    ba = b.accept(LIMIT)
    src = (torch.arange(N, device="cuda:0", dtype=torch.int64) * 7 % 251).to(
        torch.uint8)
    dst = torch.zeros(N, device="cuda:0", dtype=torch.uint8)
    back = torch.zeros(N, device="cuda:0", dtype=torch.uint8)
    torch.cuda.synchronize()
    sr, dr, kr = a.reg(src), b.reg(dst), a.reg(back)
    desc = b.advertise(dr, 0, N)
    assert a.wait(a.write(ab, (sr, 0, N), desc), LIMIT) == N
    assert torch.equal(dst, src), "write: bytes differ"
    assert a.wait(a.read(ab, (kr, 0, N), desc), LIMIT) == N
    assert torch.equal(back, src), "read: bytes differ"
    dst.zero_()
    torch.cuda.synchronize()
    r = b.recv(ba, (dr, 0, N))
    assert a.wait(a.send(ab, (sr, 0, N)), LIMIT) == N
    assert b.wait(r, LIMIT) == N
    assert torch.equal(dst, src), "send/recv: bytes differ"
    # One process: CUDA IPC cannot open its own handles; kvsock moved them.
    assert a.stats()["ipc_transfers"] == 0, a.stats()
    assert a.stats()["plugin_transfers"] == 3, a.stats()
    print("torch: %d bytes write, read, send/recv on %s: ok" %
          (N, torch.cuda.get_device_name(0)))
    try:
        import cupy
    except ImportError:
        print("cupy: not installed, its case left out")
    else:
        c = cupy.arange(N, dtype=cupy.uint8)
        cr = a.reg(c)
        out = torch.zeros(N, device="cuda:0", dtype=torch.uint8)
        orr = b.reg(out)
        assert a.wait(a.write(ab, (cr, 0, N), b.advertise(orr, 0, N)),
                      LIMIT) == N
        assert bool((torch.as_tensor(c, device="cuda:0") == out).all())
        print("cupy: %d bytes write into a torch tensor: ok" % N)

two_processes()
