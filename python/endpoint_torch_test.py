#!/usr/bin/env python3
"""The Python module kvferry with GPU tensors (issue #16): torch (and cupy,
where installed) CUDA tensors registered through __cuda_array_interface__,
moved one-sided and two-sided between two endpoints on GPU 0 over kvsock;
every byte compared on the GPU. Exits 77 ("SKIPPED: ...") without torch or
without a GPU. Run by tests/test_endpoint_torch (build tree and device
bundle alike)."""
import sys

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
