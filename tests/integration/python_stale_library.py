#!/usr/bin/env python3
"""`import kvferry` over a libkvferry.so that lacks a C API symbol (a build
tree whose library is older than the module: bench endpoint's Python column
once died of it with ctypes' bare "undefined symbol") must fail with an
ImportError naming the library, the symbol and the remedy.

    python_stale_library.py LIBRARY   (a shared library without kvf_*)"""
import os
import subprocess
import sys


def main():
    lib = os.path.abspath(sys.argv[1])
    env = dict(os.environ, KVFERRY_LIBRARY=lib)
    run = subprocess.run([sys.executable, "-c", "import kvferry"], env=env,
                         capture_output=True, text=True, timeout=60)
    err = run.stderr
    assert run.returncode != 0, "import kvferry succeeded over %s" % lib
    assert "ImportError" in err, err
    for part in (lib, "has no kvf_", "rebuild it (target kvferry_c)"):
        assert part in err, "%r missing from:\n%s" % (part, err)
    print("stale library: ok")


if __name__ == "__main__":
    main()
