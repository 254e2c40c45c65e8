"""kvferry's endpoint from Python (docs/engine-api.md).

Pure Python over the C API (libkvferry.so, kvferry.h) through ctypes, so one
build serves every Python 3 (Debian 12's 3.11, the GPU host's 3.12).

    import numpy as np, kvferry
    ep = kvferry.Endpoint()
    conn = ep.connect(peer_metadata)          # or ep.accept(10.0)
    buf = np.zeros(1 << 20, dtype=np.uint8)
    region = ep.reg(buf)                      # numpy, torch/cupy, (ptr, size)
    xfer = ep.write(conn, [(region, 0, 4096)], [peer_descriptor])
    ep.wait(xfer)                             # bytes moved

Memory: anything with the buffer protocol (host memory, e.g. numpy), an
object with __cuda_array_interface__ (torch, cupy: GPU memory), or a
(pointer, size) pair. Errors raise kvferry.Error with the code and reason.
"""

import ctypes
import os
import threading

__all__ = ["Endpoint", "Error", "descriptor_sub", "DESCRIPTOR_BYTES",
           "MAX_NOTIFICATION_BYTES", "library_path", "version"]

DESCRIPTOR_BYTES = 48
MAX_NOTIFICATION_BYTES = 65536
_PENDING = 100
_DEVICE_DEFAULT = -2


class Error(Exception):
    """A kvferry call failed: `code` (an int of kvferry.h), `name`
    ("timeout", "peer_down", ...) and `reason` (names what is at fault)."""

    def __init__(self, code, name, reason):
        super().__init__(reason or name)
        self.code = code
        self.name = name
        self.reason = reason


def _candidates():
    here = os.path.dirname(os.path.abspath(__file__))
    if os.environ.get("KVFERRY_LIBRARY"):
        yield os.environ["KVFERRY_LIBRARY"]
    try:  # an installation (cmake --install writes _install.py)
        from . import _install
        yield os.path.join(here, _install.LIBDIR, "libkvferry.so")
    except ImportError:
        pass
    # The build tree: build/python/kvferry -> build/lib.
    yield os.path.join(here, "..", "..", "lib", "libkvferry.so")
    yield "libkvferry.so"


def _load():
    errors = []
    for path in _candidates():
        if os.sep in path and not os.path.exists(path):
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            errors.append("%s: %s" % (path, e))
            continue
        found = os.path.dirname(os.path.realpath(path)) if os.sep in path else ""
        # kvsock (the default plugin) is installed next to libkvferry.so.
        if found and "KVFERRY_PLUGIN_PATH" not in os.environ:
            os.environ["KVFERRY_PLUGIN_PATH"] = found
        return lib, path
    raise ImportError("kvferry: cannot load libkvferry.so (set KVFERRY_LIBRARY "
                      "to its path): " + "; ".join(errors or ["not found"]))


_lib, library_path = _load()


class _Options(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_int), ("plugin", ctypes.c_char_p),
                ("address", ctypes.c_char_p), ("port", ctypes.c_uint16),
                ("name", ctypes.c_char_p),
                ("transfer_timeout_ms", ctypes.c_uint32),
                ("connect_timeout_ms", ctypes.c_uint32),
                ("tls_dir", ctypes.c_char_p), ("tls_name", ctypes.c_char_p)]


class _Slice(ctypes.Structure):
    _fields_ = [("region", ctypes.c_uint64), ("offset", ctypes.c_uint64),
                ("size", ctypes.c_uint64)]


_u64p = ctypes.POINTER(ctypes.c_uint64)
_sizep = ctypes.POINTER(ctypes.c_size_t)
_bytes = ctypes.c_char_p
_ep = ctypes.c_void_p


def _declare(name, *args, restype=ctypes.c_int):
    try:
        f = getattr(_lib, name)
    except AttributeError:
        # Seen with a build tree whose libkvferry.so was older than the
        # module beside it: name both, not ctypes' bare "undefined symbol".
        raise ImportError(
            "kvferry: %s has no %s: it is older than this module (%s); "
            "rebuild it (target kvferry_c) or set KVFERRY_LIBRARY" %
            (library_path, name, os.path.abspath(__file__))) from None
    f.argtypes = list(args)
    f.restype = restype
    return f


_last_error = _declare("kvf_last_error", restype=ctypes.c_char_p)
_status_name = _declare("kvf_status_name", ctypes.c_int,
                        restype=ctypes.c_char_p)
_version = _declare("kvf_version", restype=ctypes.c_char_p)
_destroy = _declare("kvf_endpoint_destroy", _ep, restype=None)
_create = _declare("kvf_endpoint_create", ctypes.POINTER(_Options),
                   ctypes.POINTER(_ep))
_metadata = _declare("kvf_metadata", _ep, ctypes.c_char_p, ctypes.c_size_t,
                     _sizep)
_connect = _declare("kvf_connect", _ep, _bytes, ctypes.c_size_t, _u64p)
_accept = _declare("kvf_accept", _ep, ctypes.c_uint32, _u64p)
_reg = _declare("kvf_reg", _ep, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                _u64p)
_dereg = _declare("kvf_dereg", _ep, ctypes.c_uint64)
_advertise = _declare("kvf_advertise", _ep, ctypes.c_uint64, ctypes.c_uint64,
                      ctypes.c_uint64, ctypes.c_char_p)
_sub = _declare("kvf_descriptor_sub", _bytes, ctypes.c_uint64,
                ctypes.c_uint64, ctypes.c_char_p)
_one_sided = {
    "write": _declare("kvf_write", _ep, ctypes.c_uint64,
                      ctypes.POINTER(_Slice), _bytes, ctypes.c_size_t, _u64p),
    "read": _declare("kvf_read", _ep, ctypes.c_uint64, ctypes.POINTER(_Slice),
                     _bytes, ctypes.c_size_t, _u64p),
}
_two_sided = {
    "send": _declare("kvf_send", _ep, ctypes.c_uint64, ctypes.POINTER(_Slice),
                     ctypes.c_size_t, _u64p),
    "recv": _declare("kvf_recv", _ep, ctypes.c_uint64, ctypes.POINTER(_Slice),
                     ctypes.c_size_t, _u64p),
}
class _Stats(ctypes.Structure):
    _fields_ = [("plugin_transfers", ctypes.c_uint64),
                ("plugin_bytes", ctypes.c_uint64),
                ("ipc_transfers", ctypes.c_uint64),
                ("ipc_bytes", ctypes.c_uint64)]


_stats = _declare("kvf_stats_get", _ep, ctypes.POINTER(_Stats))
_poll = _declare("kvf_poll", _ep, ctypes.c_uint64, _u64p)
_wait = _declare("kvf_wait", _ep, ctypes.c_uint64, ctypes.c_uint32, _u64p)
_notify = _declare("kvf_notify", _ep, ctypes.c_uint64, _bytes, ctypes.c_size_t)
_take = _declare("kvf_take_notification", _ep, _u64p, ctypes.c_char_p,
                 ctypes.c_size_t, _sizep)


def _raise(code):
    raise Error(code, _status_name(code).decode(),
                _last_error().decode(errors="replace"))


def _check(code):
    if code != 0:
        _raise(code)


def version():
    return _version().decode()


def descriptor_sub(descriptor, offset, size):
    """The sub-range [offset, offset + size) of a descriptor (bytes)."""
    out = ctypes.create_string_buffer(DESCRIPTOR_BYTES)
    _check(_sub(bytes(descriptor), offset, size, out))
    return out.raw



def _memory(obj):
    """(pointer, bytes, gpu or None, keep-alive) of what reg() was given."""
    if isinstance(obj, tuple) and len(obj) == 2:
        return int(obj[0]), int(obj[1]), None, None
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is not None:
        strides = cai.get("strides")
        if strides is not None:
            expect, step = [], int(cai["typestr"][2:])
            for dim in reversed(cai["shape"]):
                expect.insert(0, step)
                step *= dim
            if tuple(strides) != tuple(expect):
                raise Error(9, "invalid_argument",
                            "reg: a non-contiguous GPU array (strides %r)" %
                            (tuple(strides),))
        count = 1
        for dim in cai["shape"]:
            count *= dim
        size = count * int(cai["typestr"][2:])
        device = getattr(obj, "device", None)
        gpu = getattr(device, "index", None)  # torch
        if gpu is None:
            gpu = getattr(device, "id", None)  # cupy
        return int(cai["data"][0]), size, gpu, obj
    view = memoryview(obj)
    if not view.contiguous:
        raise Error(9, "invalid_argument", "reg: a non-contiguous buffer")
    if view.readonly:
        raise Error(9, "invalid_argument",
                    "reg: a read-only buffer (kvferry may write into it)")
    size = view.nbytes
    holder = (ctypes.c_char * size).from_buffer(view.cast("B"))
    return ctypes.addressof(holder), size, -1, (view, holder)


def _slices(local):
    if isinstance(local, tuple):
        local = [local]
    arr = (_Slice * len(local))()
    for i, (region, offset, size) in enumerate(local):
        arr[i] = _Slice(region, offset, size)
    return arr, len(local)


class _Scratch(threading.local):
    """Each thread's reusable call arguments: one slice and the out value.
    A call right after a wait runs on a cold core, where every new ctypes
    object costs several microseconds (Python's added cost per write was
    ~25 us at p50 with them, ~5 us without, 2 cores); per thread because
    ctypes lets go of the GIL during the call."""

    def __init__(self):
        self.slice = _Slice()
        self.slice_ref = ctypes.byref(self.slice)
        self.out = ctypes.c_uint64()
        self.out_ref = ctypes.byref(self.out)


_scratch = _Scratch()


class Endpoint:
    """One kvferry endpoint (kvferry::endpoint): its own actor system and
    transfer actor. Close it (or use `with`) when done."""

    def __init__(self, gpu=-1, plugin=None, address=None, port=0, name=None,
                 transfer_timeout_ms=0, connect_timeout_ms=0, tls_dir=None,
                 tls_name=None):
        """tls_dir: mutual TLS on the control port (a folder made by
        `kvferry pki init`, presenting tls_name's certificate, default
        name); None: plain TCP."""
        o = _Options(gpu, plugin.encode() if plugin else None,
                     address.encode() if address else None, port,
                     name.encode() if name else None, transfer_timeout_ms,
                     connect_timeout_ms,
                     tls_dir.encode() if tls_dir else None,
                     tls_name.encode() if tls_name else None)
        handle = _ep()
        _check(_create(ctypes.byref(o), ctypes.byref(handle)))
        self._h = handle
        self._regions = {}  # region -> what keeps its memory alive

    def close(self):
        if self._h:
            _destroy(self._h)
            self._h = None
            self._regions.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def metadata(self):
        size = ctypes.c_size_t(0)
        buf = ctypes.create_string_buffer(1024)
        _check(_metadata(self._h, buf, len(buf), ctypes.byref(size)))
        return buf.raw[:size.value]

    def connect(self, metadata):
        conn = ctypes.c_uint64(0)
        data = bytes(metadata)
        _check(_connect(self._h, data, len(data), ctypes.byref(conn)))
        return conn.value

    def accept(self, timeout=10.0):
        conn = ctypes.c_uint64(0)
        _check(_accept(self._h, int(timeout * 1000), ctypes.byref(conn)))
        return conn.value

    def reg(self, memory, gpu=None):
        """Registers memory in place; keeps a reference to it until dereg."""
        ptr, size, found_gpu, keep = _memory(memory)
        if gpu is None:
            gpu = _DEVICE_DEFAULT if found_gpu is None else found_gpu
        region = ctypes.c_uint64(0)
        _check(_reg(self._h, ptr, size, gpu, ctypes.byref(region)))
        self._regions[region.value] = keep
        return region.value

    def dereg(self, region):
        _check(_dereg(self._h, region))
        self._regions.pop(region, None)

    def advertise(self, region, offset=0, size=None):
        """A descriptor (bytes) of [offset, offset + size) of a region."""
        if size is None:
            raise Error(9, "invalid_argument", "advertise: give the size")
        out = ctypes.create_string_buffer(DESCRIPTOR_BYTES)
        _check(_advertise(self._h, region, offset, size, out))
        return out.raw

    def _one(self, what, conn, local, remote):
        if (type(local) is tuple and type(remote) is bytes and
                len(remote) == DESCRIPTOR_BYTES):
            # One slice and one descriptor (the common case): no new objects.
            s = _scratch
            s.slice.region, s.slice.offset, s.slice.size = local
            _check(_one_sided[what](self._h, conn, s.slice_ref, remote, 1,
                                    s.out_ref))
            return s.out.value
        arr, n = _slices(local)
        if isinstance(remote, (bytes, bytearray)):
            remote = [remote]
        blob = b"".join(bytes(d) for d in remote)
        if len(blob) != DESCRIPTOR_BYTES * len(remote):
            raise Error(9, "invalid_argument",
                        "%s: a descriptor is %d bytes" % (what,
                                                          DESCRIPTOR_BYTES))
        if len(remote) != n:
            raise Error(9, "invalid_argument",
                        "%s: %d local slices and %d descriptors" %
                        (what, n, len(remote)))
        xfer = ctypes.c_uint64(0)
        _check(_one_sided[what](self._h, conn, arr, blob, n,
                                ctypes.byref(xfer)))
        return xfer.value

    def write(self, conn, local, remote):
        """local: (region, offset, size) or a list of them; remote: a
        descriptor or a list, pairwise of equal sizes. Returns the id."""
        return self._one("write", conn, local, remote)

    def read(self, conn, local, remote):
        return self._one("read", conn, local, remote)

    def _two(self, what, conn, local):
        if type(local) is tuple:  # one slice: no new objects (_Scratch)
            s = _scratch
            s.slice.region, s.slice.offset, s.slice.size = local
            _check(_two_sided[what](self._h, conn, s.slice_ref, 1, s.out_ref))
            return s.out.value
        arr, n = _slices(local)
        xfer = ctypes.c_uint64(0)
        _check(_two_sided[what](self._h, conn, arr, n, ctypes.byref(xfer)))
        return xfer.value

    def send(self, conn, local):
        return self._two("send", conn, local)

    def recv(self, conn, local):
        return self._two("recv", conn, local)

    def poll(self, xfer):
        """None while pending, else the bytes moved (raises on failure)."""
        s = _scratch
        code = _poll(self._h, xfer, s.out_ref)
        if code == _PENDING:
            return None
        _check(code)
        return s.out.value

    def wait(self, xfer, timeout=10.0):
        """The bytes moved; raises Error (name "timeout": still pending)."""
        s = _scratch
        _check(_wait(self._h, xfer, int(timeout * 1000), s.out_ref))
        return s.out.value

    def stats(self):
        """Transfers done and their bytes per path: {"plugin_transfers",
        "plugin_bytes", "ipc_transfers", "ipc_bytes"} (CUDA IPC: same-host
        endpoints of GPU memory)."""
        out = _Stats()
        _check(_stats(self._h, ctypes.byref(out)))
        return {name: getattr(out, name) for name, _ in _Stats._fields_}

    def notify(self, conn, data):
        data = bytes(data)
        _check(_notify(self._h, conn, data, len(data)))

    def notifications(self):
        """Every notification received so far: [(conn, bytes)], oldest first."""
        out = []
        buf = ctypes.create_string_buffer(MAX_NOTIFICATION_BYTES)
        conn, size = ctypes.c_uint64(0), ctypes.c_size_t(0)
        while True:
            code = _take(self._h, ctypes.byref(conn), buf, len(buf),
                         ctypes.byref(size))
            if code == 7:  # not_found: none left
                return out
            _check(code)
            out.append((conn.value, buf.raw[:size.value]))
