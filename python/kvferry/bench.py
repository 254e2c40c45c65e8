"""Python's side of `kvferry bench endpoint`: the same one-sided writes as
the C++ rows (two endpoints in this process, depth 1, every byte verified),
timed from Python, so the table can show Python's added cost per call: the
p50 of the write call alone (call_p50_us: in bursts of back-to-back calls,
as the C++ rows time theirs) and of write + wait (p50_us).

    python3 -m kvferry.bench --sizes 256,4K [--ops N] [--json FILE]
"""
import argparse
import ctypes
import json
import statistics
import sys
import time

import kvferry


def parse_size(text):
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1] in scale:
        return int(float(text[:-1]) * scale[text[-1]])
    return int(text)


def call_cost(a, conn, region, desc, size, bursts=16, burst=16):
    """The write call alone, timed as the C++ rows time theirs
    (engine/src/endpoint_bench.cpp, call_cost): bursts of back-to-back
    calls, each timed, then awaited."""
    clock = time.perf_counter_ns
    calls = []
    for _ in range(bursts):
        ids = []
        for _ in range(burst):
            t0 = clock()
            ids.append(a.write(conn, (region, 0, size), desc))
            calls.append(clock() - t0)
        for x in ids:
            a.wait(x, 10.0)
    return calls


def run(sizes, ops):
    rows = []
    with kvferry.Endpoint(name="py-bench-a") as a, \
            kvferry.Endpoint(name="py-bench-b") as b:
        ab = a.connect(b.metadata())
        b.accept(10.0)
        cap = max(sizes)
        src = (ctypes.c_uint8 * cap)(*[(i * 7 + i // 4093) & 0xFF
                                       for i in range(cap)])
        dst = (ctypes.c_uint8 * cap)()
        sr, dr = a.reg(src), b.reg(dst)
        desc = b.advertise(dr, 0, cap)
        for size in sizes:
            ctypes.memset(dst, 0, cap)
            d = kvferry.descriptor_sub(desc, 0, size)
            a.wait(a.write(ab, (sr, 0, size), d), 10.0)  # warm-up
            calls = call_cost(a, ab, sr, d, size)
            ctypes.memset(dst, 0, cap)
            whole = []
            clock = time.perf_counter_ns
            t = time.perf_counter()
            for _ in range(ops):
                t0 = clock()
                a.wait(a.write(ab, (sr, 0, size), d), 10.0)
                whole.append(clock() - t0)
            secs = time.perf_counter() - t
            verified = bytes(dst)[:size] == bytes(src)[:size]
            rows.append({"op": "write", "size": size, "depth": 1, "ops": ops,
                         "us_per_op": secs / ops * 1e6,
                         "p50_us": statistics.median(whole) / 1e3,
                         "call_p50_us": statistics.median(calls) / 1e3,
                         "gbps": size * ops / secs / 1e9,
                         "verified": verified})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="256,4K")
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = run([parse_size(s) for s in args.sizes.split(",") if s], args.ops)
    for r in rows:
        print("python write %9d B: %8.1f us/op, p50 %8.1f us, the call "
              "alone p50 %6.2f us, verified %s" %
              (r["size"], r["us_per_op"], r["p50_us"], r["call_p50_us"],
               r["verified"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if all(r["verified"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
