#!/usr/bin/env python3
"""How many half-open connections a kvferry directory survives (docs/deploy.md).

Starts `kvferry directory` with the open-files soft limit given (it raises its
own soft limit to the hard one at start), opens N TCP connections to it that
send nothing (or a partial BASP header with --partial), then checks that
`kvferry directory --probe` still gets answers; closes them and checks again
(recovery). Prints one line per N.

  scripts/half_open.py build/bin/kvferry 300 1000 5000 15000
"""
import argparse
import os
import resource
import socket
import subprocess
import sys
import time


def probe(kvferry, port, timeout_s=10):
    start = time.monotonic()
    try:
        r = subprocess.run([kvferry, "directory", "--probe", f"127.0.0.1:{port}",
                            "--count", "20"], capture_output=True,
                           timeout=timeout_s)
        ok = r.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    return ok, time.monotonic() - start


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kvferry")
    ap.add_argument("counts", type=int, nargs="+")
    ap.add_argument("--soft", type=int, default=256,
                    help="open-files soft limit the directory starts with")
    ap.add_argument("--hard", type=int, default=0,
                    help="open-files hard limit too (0: this shell's)")
    ap.add_argument("--hold", type=float, default=0,
                    help="seconds to keep them open before probing")
    ap.add_argument("--partial", action="store_true",
                    help="send 10 bytes of a BASP header, not nothing")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"hard open-files limit: {hard}")
    for n in args.counts:
        hard_part = f"; ulimit -Hn {args.hard}" if args.hard else ""
        limit = f"ulimit -Sn {args.soft}{hard_part}; exec {args.kvferry} directory --port 0 --bind 127.0.0.1"
        log = open(f"/tmp/half_open_directory_{n}.log", "w+")
        d = subprocess.Popen(["bash", "-c", limit], stdout=subprocess.PIPE,
                             stderr=log, text=True)
        line = d.stdout.readline()
        port = int(line.strip().rsplit(":", 1)[1])
        conns, failed = [], 0
        t0 = time.monotonic()
        for _ in range(n):
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(("127.0.0.1", port))
                if args.partial:
                    s.send(b"\x00" * 10)
                conns.append(s)
            except OSError:
                failed += 1
                s.close()
        opened = time.monotonic() - t0
        time.sleep(args.hold)  # does the directory time any of them out?
        cpu_before = cpu_seconds(d.pid)
        ok_during, t_during = probe(args.kvferry, port)
        cpu_during = cpu_seconds(d.pid) - cpu_before
        for s in conns:
            s.close()
        ok_after, t_after = probe(args.kvferry, port, timeout_s=30)
        alive = d.poll() is None
        log.seek(0)
        limits = [l.strip() for l in log if "open-files" in l]
        print(limits[0] if limits else "(no open-files line)")
        d.terminate()
        try:
            d.wait(10)
        except subprocess.TimeoutExpired:
            d.kill()
        print(f"N={n}: connected {len(conns)} (failed {failed}) in {opened:.1f} s; "
              f"probe while open: {'ok' if ok_during else 'FAILED'} ({t_during:.1f} s, "
              f"directory CPU {cpu_during:.1f} s); "
              f"after closing: {'ok' if ok_after else 'FAILED'} ({t_after:.1f} s); "
              f"directory {'alive' if alive else 'DEAD'}", flush=True)


if __name__ == "__main__":
    main()
