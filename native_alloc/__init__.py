"""ctypes bindings for libnative_alloc.so, the arena allocator arena-trace uses as a traceable target.

The C library is built by ``make -C native_alloc`` into ``native_alloc/build/``. The bindings exist for
tests and experiments: every call crosses ctypes, so they are not a fast way to allocate.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType

__all__ = [
    "ALIGNMENT",
    "CHUNK_HEADER",
    "CHUNK_SIZE",
    "CHUNK_TRAILER",
    "CHUNK_USABLE",
    "LARGE_THRESHOLD",
    "MIN_FREE_SPAN",
    "MIN_SPAN_REQUEST",
    "NO_TCACHE",
    "SIZE_CLASSES",
    "SLAB_SPAN",
    "SMALL_MAX",
    "SPAN_HEADER",
    "TCACHE_BATCH",
    "TCACHE_MAX",
    "TRACED_SYMBOLS",
    "Arena",
    "ArenaStats",
    "NativeAllocError",
    "NativeLibraryNotBuilt",
    "build_dir",
    "library_path",
    "load_library",
    "workload_path",
]

# Mirrors of native_alloc.h; tests use them to compute exact expected layouts.
ALIGNMENT = 16
CHUNK_SIZE = 1 << 20
CHUNK_HEADER = 64
CHUNK_TRAILER = 16
CHUNK_USABLE = CHUNK_SIZE - CHUNK_HEADER - CHUNK_TRAILER
SPAN_HEADER = 16
SMALL_MAX = 1024
LARGE_THRESHOLD = 128 * 1024
SLAB_SPAN = 32 * 1024
MIN_FREE_SPAN = 48
MIN_SPAN_REQUEST = SMALL_MAX + ALIGNMENT + SPAN_HEADER
TCACHE_MAX = 32
TCACHE_BATCH = 16
NO_TCACHE = 1
SIZE_CLASSES = (16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024)

# Exported functions that start with the 5-byte nop and are meant to carry uprobes.
TRACED_SYMBOLS = ("na_alloc", "na_free", "na_alloc_batch", "na_consolidate", "na_reset", "na_grow", "na_lock_wait")

ENV_LIB = "ARENA_TRACE_NATIVE_LIB"
LIB_NAME = "libnative_alloc.so"


class NativeAllocError(RuntimeError):
    """A native_alloc call failed (allocation returned NULL, arena already destroyed, ...)."""


class NativeLibraryNotBuilt(NativeAllocError):
    """libnative_alloc.so was not found; it has to be built first."""


def build_dir() -> Path:
    """The Makefile's output directory, next to this module."""
    return Path(__file__).resolve().parent / "build"


def library_path() -> Path:
    """Path of libnative_alloc.so: $ARENA_TRACE_NATIVE_LIB if set, else build/ next to this module."""
    env = os.environ.get(ENV_LIB)
    if env:
        path = Path(env)
        if not path.is_file():
            raise NativeLibraryNotBuilt(f"{ENV_LIB}={env} does not name a file")
        return path
    path = build_dir() / LIB_NAME
    if not path.is_file():
        raise NativeLibraryNotBuilt(f"{path} not found: run make -C native_alloc")
    return path


def workload_path() -> Path:
    """Path of the arena-workload program built next to the library."""
    path = build_dir() / "arena-workload"
    if not path.is_file():
        raise NativeLibraryNotBuilt(f"{path} not found: run make -C native_alloc")
    return path


class _CStats(ctypes.Structure):
    _fields_ = [
        ("bytes_in_use", ctypes.c_uint64),
        ("bytes_free", ctypes.c_uint64),
        ("bytes_mapped", ctypes.c_uint64),
        ("frag_bytes", ctypes.c_uint64),
        ("largest_free", ctypes.c_uint64),
        ("fragmentation", ctypes.c_double),
        ("largest_free_share", ctypes.c_double),
        ("allocs", ctypes.c_uint64),
        ("frees", ctypes.c_uint64),
        ("batches", ctypes.c_uint64),
        ("batch_objects", ctypes.c_uint64),
        ("consolidations", ctypes.c_uint64),
        ("resets", ctypes.c_uint64),
        ("grows", ctypes.c_uint64),
        ("large_maps", ctypes.c_uint64),
        ("large_unmaps", ctypes.c_uint64),
        ("lock_waits", ctypes.c_uint64),
        ("lock_acquisitions", ctypes.c_uint64),
        ("chunks", ctypes.c_uint64),
        ("slabs", ctypes.c_uint64),
        ("large_blocks", ctypes.c_uint64),
        ("slabs_released", ctypes.c_uint64),
        ("chunks_released", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class ArenaStats:
    """Python view of ``struct na_stats`` (see native_alloc.h for each field's meaning)."""

    bytes_in_use: int
    bytes_free: int
    bytes_mapped: int
    frag_bytes: int
    largest_free: int
    fragmentation: float
    largest_free_share: float
    allocs: int
    frees: int
    batches: int
    batch_objects: int
    consolidations: int
    resets: int
    grows: int
    large_maps: int
    large_unmaps: int
    lock_waits: int
    lock_acquisitions: int
    chunks: int
    slabs: int
    large_blocks: int
    slabs_released: int
    chunks_released: int

    @classmethod
    def _from_c(cls, raw: _CStats) -> ArenaStats:
        return cls(**{f.name: getattr(raw, f.name) for f in fields(cls)})


_lib: ctypes.CDLL | None = None


def load_library() -> ctypes.CDLL:
    """Load the library once and declare prototypes (ctypes' int default would truncate pointers)."""
    global _lib
    if _lib is not None:
        return _lib
    lib = ctypes.CDLL(str(library_path()))
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    protos: dict[str, tuple[type | None, list[type]]] = {
        "na_arena_create": (vp, [ctypes.c_uint]),
        "na_arena_destroy": (None, [vp]),
        "na_alloc": (vp, [vp, sz]),
        "na_free": (None, [vp, vp]),
        "na_alloc_batch": (sz, [vp, sz, sz, ctypes.POINTER(vp)]),
        "na_consolidate": (sz, [vp]),
        "na_reset": (None, [vp]),
        "na_stats": (ctypes.c_int, [vp, ctypes.POINTER(_CStats)]),
        "na_usable_size": (sz, [vp]),
    }
    for name, (restype, argtypes) in protos.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    _lib = lib
    return lib


class Arena:
    """One native_alloc arena. Use as a context manager so the arena is destroyed on exit."""

    def __init__(self, *, tcache: bool = True) -> None:
        self._lib = load_library()
        handle = self._lib.na_arena_create(0 if tcache else NO_TCACHE)
        if not handle:
            raise NativeAllocError("na_arena_create failed")
        self._handle: int | None = handle

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise NativeAllocError("arena already destroyed")
        return self._handle

    def alloc(self, size: int) -> int:
        """Allocate size bytes; returns the block's address."""
        ptr = self._lib.na_alloc(self.handle, size)
        if not ptr:
            raise NativeAllocError(f"na_alloc({size}) returned NULL")
        return int(ptr)

    def free(self, ptr: int) -> None:
        self._lib.na_free(self.handle, ptr)

    def alloc_batch(self, size: int, n: int) -> list[int]:
        """Allocate up to n blocks of size bytes under one lock acquisition."""
        out = (ctypes.c_void_p * max(n, 1))()
        got = self._lib.na_alloc_batch(self.handle, size, n, out)
        return [int(out[i]) for i in range(got)]

    def consolidate(self) -> int:
        """Release empty slabs and chunks; returns the number of bytes unmapped."""
        return int(self._lib.na_consolidate(self.handle))

    def reset(self) -> None:
        """Free every block of the arena at once (all addresses it handed out become invalid)."""
        self._lib.na_reset(self.handle)

    def stats(self) -> ArenaStats:
        raw = _CStats()
        if self._lib.na_stats(self.handle, ctypes.byref(raw)) != 0:
            raise NativeAllocError("na_stats failed")
        return ArenaStats._from_c(raw)

    def usable_size(self, ptr: int) -> int:
        return int(self._lib.na_usable_size(ptr))

    def destroy(self) -> None:
        if self._handle is not None:
            self._lib.na_arena_destroy(self._handle)
            self._handle = None

    def __enter__(self) -> Arena:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()
