"""Tests of libnative_alloc.so: entry-point layout, allocator semantics through the ctypes bindings,
exact counters, fragmentation on constructed layouts, and sanitizer stress runs of the C stress test."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import arena_trace.native_alloc as na
import pytest
from elftools.dwarf.callframe import FDE
from elftools.elf.elffile import ELFFile
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parent.parent
NATIVE_DIR = REPO / "native_alloc"
NOP5 = bytes.fromhex("0f1f440000")


@pytest.fixture(scope="session", autouse=True)
def native_build() -> Path:
    """Build everything once per session; make is a no-op when the build is current."""
    proc = subprocess.run(["make", "-C", str(NATIVE_DIR)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return NATIVE_DIR / "build"


def _fill(ptr: int, n: int, byte: int) -> None:
    ctypes.memset(ptr, byte, n)


def _read(ptr: int, n: int) -> bytes:
    return ctypes.string_at(ptr, n)


# ------------------------------------------------------------------ ELF layout of the traced entries


def _dynsym_functions(path: Path) -> dict[str, tuple[int, str, str]]:
    with path.open("rb") as f:
        elf = ELFFile(f)
        out = {}
        for sym in elf.get_section_by_name(".dynsym").iter_symbols():
            if sym["st_info"]["type"] == "STT_FUNC" and sym["st_shndx"] != "SHN_UNDEF":
                out[sym.name] = (sym["st_value"], sym["st_info"]["bind"], sym["st_other"]["visibility"])
        return out


def test_traced_symbols_start_with_nop5(native_build: Path) -> None:
    lib = native_build / "libnative_alloc.so"
    funcs = _dynsym_functions(lib)
    with lib.open("rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text")
        data = text.data()
        for name in na.TRACED_SYMBOLS:
            addr, bind, vis = funcs[name]
            assert bind == "STB_GLOBAL" and vis == "STV_DEFAULT", name
            off = addr - text["sh_addr"]
            assert data[off : off + 5] == NOP5, f"{name} starts with {data[off:off + 5].hex()}"
            # the nop is followed by a rel32 jmp to the implementation, so rsp is untouched until then
            assert data[off + 5] == 0xE9, name


def test_traced_symbols_have_cfi(native_build: Path) -> None:
    """Each stub needs its own FDE so DWARF unwinding through a probed entry works."""
    lib = native_build / "libnative_alloc.so"
    funcs = _dynsym_functions(lib)
    with lib.open("rb") as f:
        elf = ELFFile(f)
        assert elf.get_section_by_name(".eh_frame") is not None
        fdes = [e for e in elf.get_dwarf_info().EH_CFI_entries() if isinstance(e, FDE)]
        for name in na.TRACED_SYMBOLS:
            addr = funcs[name][0]
            covering = [
                e for e in fdes
                if e.header["initial_location"] <= addr < e.header["initial_location"] + e.header["address_range"]
            ]
            assert len(covering) == 1, name
            assert covering[0].header["initial_location"] == addr, name


def test_only_api_is_exported(native_build: Path) -> None:
    funcs = set(_dynsym_functions(native_build / "libnative_alloc.so"))
    api = {"na_arena_create", "na_arena_destroy", "na_stats", "na_usable_size", *na.TRACED_SYMBOLS}
    assert funcs - {"_init", "_fini"} == api


# ------------------------------------------------------------------ library location


def test_library_path_env_override(monkeypatch: pytest.MonkeyPatch, native_build: Path) -> None:
    real = native_build / "libnative_alloc.so"
    monkeypatch.setenv(na.ENV_LIB, str(real))
    assert na.library_path() == real
    monkeypatch.setenv(na.ENV_LIB, str(native_build / "does-not-exist.so"))
    with pytest.raises(na.NativeLibraryNotBuilt):
        na.library_path()
    monkeypatch.delenv(na.ENV_LIB)
    assert na.library_path() == real


def test_missing_library_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(na.ENV_LIB, raising=False)
    monkeypatch.setattr(na, "build_dir", lambda: tmp_path)
    with pytest.raises(na.NativeLibraryNotBuilt, match="make -C native_alloc"):
        na.library_path()


# ------------------------------------------------------------------ semantics


SIZES = [1, 2, 15, 16, 17, 31, 100, 128, 129, 255, 256, 257, 511, 512, 513, 1000, 1023, 1024, 1025, 2000, 4096,
         65536, na.LARGE_THRESHOLD, na.LARGE_THRESHOLD + 1, 1 << 20, 3 << 20]


@pytest.mark.parametrize("tcache", [True, False])
def test_alignment_sizes_and_contents(tcache: bool) -> None:
    with na.Arena(tcache=tcache) as arena:
        blocks = []
        for i, size in enumerate(SIZES * 3):
            p = arena.alloc(size)
            assert p % na.ALIGNMENT == 0
            assert arena.usable_size(p) >= size
            _fill(p, size, i & 0xFF)
            blocks.append((p, size, i & 0xFF))
        spans = sorted((p, p + arena.usable_size(p)) for p, _, _ in blocks)
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert end <= start, "blocks overlap"
        for p, size, byte in blocks:
            assert _read(p, size) == bytes([byte]) * size
        for p, _, _ in blocks:
            arena.free(p)
        st_ = arena.stats()
        assert st_.allocs == len(blocks) and st_.frees == len(blocks)


def test_size_classes_usable_size() -> None:
    with na.Arena(tcache=False) as arena:
        for size in range(1, na.SMALL_MAX + 1):
            p = arena.alloc(size)
            expect = min(c for c in na.SIZE_CLASSES if c >= size)
            assert arena.usable_size(p) == expect, size
            arena.free(p)
        p = arena.alloc(na.SMALL_MAX + 1)
        assert arena.usable_size(p) == na.SMALL_MAX + 16
        arena.free(p)


def test_counters_exact_without_tcache() -> None:
    with na.Arena(tcache=False) as arena:
        ptrs = [arena.alloc(24) for _ in range(10)]
        batch = arena.alloc_batch(3000, 5)
        assert len(batch) == 5 and len(set(batch)) == 5
        for p in ptrs[:4]:
            arena.free(p)
        s = arena.stats()
        assert (s.allocs, s.frees, s.batches, s.batch_objects) == (10, 4, 1, 5)
        assert s.grows == 1 and s.chunks == 1 and s.slabs == 1
        assert s.bytes_in_use == 6 * 32 + 5 * 3008
        # 10 allocs + 4 frees + 1 batch, each one lock acquisition, plus this stats call
        assert s.lock_acquisitions == 16
        assert s.lock_waits == 0
        assert s.consolidations == 0 and s.resets == 0
        arena.free(0)  # NULL is a no-op and not counted
        assert arena.stats().frees == 4


def test_thread_cache_refills_by_batch() -> None:
    with na.Arena(tcache=True) as arena:
        ptrs = [arena.alloc(40) for _ in range(na.TCACHE_BATCH)]
        s = arena.stats()
        assert (s.allocs, s.batches, s.batch_objects) == (na.TCACHE_BATCH, 1, na.TCACHE_BATCH)
        ptrs.append(arena.alloc(40))
        s = arena.stats()
        assert (s.batches, s.batch_objects) == (2, 2 * na.TCACHE_BATCH)
        # another size class has its own cache bin
        ptrs.append(arena.alloc(500))
        assert arena.stats().batches == 3
        acq = arena.stats().lock_acquisitions
        for p in ptrs:
            arena.free(p)
        # frees land in the thread cache: no lock taken (only the stats call below)
        s = arena.stats()
        assert s.frees == len(ptrs)
        assert s.lock_acquisitions == acq + 1
        # cached objects still count as in use from the arena's point of view
        assert s.bytes_in_use == 2 * na.TCACHE_BATCH * 48 + na.TCACHE_BATCH * 512


def test_thread_cache_flushes_half_when_full() -> None:
    with na.Arena(tcache=True) as arena:
        ptrs = [arena.alloc(64) for _ in range(na.TCACHE_MAX + 1)]
        before = arena.stats().lock_acquisitions
        for p in ptrs:
            arena.free(p)
        s = arena.stats()
        # cache held 15 leftovers from the last refill; the free that finds it full flushes half
        assert s.lock_acquisitions - before >= 2
        assert s.frees == na.TCACHE_MAX + 1


def test_alloc_batch_mixed_sizes() -> None:
    with na.Arena() as arena:
        for size, n in [(8, 100), (700, 33), (5000, 20), (na.LARGE_THRESHOLD + 10, 3)]:
            got = arena.alloc_batch(size, n)
            assert len(got) == n and len(set(got)) == n
            for p in got:
                assert p % 16 == 0 and arena.usable_size(p) >= size
                _fill(p, size, 0x5A)
            for p in got:
                assert _read(p, size) == b"\x5a" * size
                arena.free(p)
        s = arena.stats()
        assert s.batches == 4 and s.batch_objects == 156
        assert s.large_maps == 3 and s.large_unmaps == 3 and s.large_blocks == 0


def test_consolidate_returns_everything() -> None:
    with na.Arena(tcache=False) as arena:
        ptrs = [arena.alloc(s) for s in (16, 100, 1000) for _ in range(3000)]
        ptrs += [arena.alloc(20000) for _ in range(100)]
        s = arena.stats()
        assert s.grows >= 3 and s.chunks == s.grows
        for p in ptrs:
            arena.free(p)
        s = arena.stats()
        assert s.bytes_in_use == 0 and s.slabs > 0
        released = arena.consolidate()
        s2 = arena.stats()
        assert released == s.chunks * na.CHUNK_SIZE
        assert (s2.chunks, s2.slabs, s2.bytes_mapped, s2.bytes_free) == (0, 0, 0, 0)
        assert s2.slabs_released == s.slabs and s2.chunks_released == s.chunks
        assert s2.consolidations == 1
        # the arena is still usable and grows again
        p = arena.alloc(100)
        assert arena.stats().grows == s.grows + 1
        arena.free(p)


def test_consolidate_keeps_live_slabs() -> None:
    with na.Arena(tcache=False) as arena:
        keep = arena.alloc(48)
        _fill(keep, 48, 0x11)
        tmp = [arena.alloc(48) for _ in range(2000)]
        for p in tmp:
            arena.free(p)
        arena.consolidate()
        s = arena.stats()
        assert s.slabs == 1 and s.chunks == 1
        assert _read(keep, 48) == b"\x11" * 48
        arena.free(keep)


@pytest.mark.parametrize("tcache", [True, False])
def test_reset(tcache: bool) -> None:
    with na.Arena(tcache=tcache) as arena:
        for size in (16, 300, 3000, 50000, 500000):
            for _ in range(50):
                arena.alloc(size)
        s = arena.stats()
        assert s.large_blocks == 50
        arena.reset()
        r = arena.stats()
        assert r.resets == 1 and r.bytes_in_use == 0 and r.large_blocks == 0 and r.slabs == 0
        assert r.chunks == s.chunks
        assert r.bytes_free == r.chunks * na.CHUNK_USABLE
        assert r.bytes_mapped == r.chunks * na.CHUNK_SIZE
        assert r.fragmentation == 0.0
        # counters survive a reset
        assert r.allocs == s.allocs
        # a thread cache filled before the reset must not hand out stale objects
        batches = r.batches
        p = arena.alloc(16)
        if tcache:
            assert arena.stats().batches == batches + 1
        _fill(p, 16, 1)
        arena.free(p)
        assert arena.stats().grows == s.grows


def test_destroy_twice_and_use_after_destroy() -> None:
    arena = na.Arena()
    arena.alloc(10)
    arena.destroy()
    arena.destroy()
    with pytest.raises(na.NativeAllocError):
        arena.alloc(10)


def test_free_with_null_arena_uses_header() -> None:
    with na.Arena(tcache=False) as arena:
        lib = na.load_library()
        p = arena.alloc(3000)
        lib.na_free(None, p)
        assert arena.stats().frees == 1


def _run_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("size", "tcache"), [(32, True), (32, False), (3000, False), (300000, False)]
)
def test_double_free_aborts(size: int, tcache: bool) -> None:
    code = (
        "import arena_trace.native_alloc as na\n"
        f"a = na.Arena(tcache={tcache})\n"
        f"keep = a.alloc({size}); p = a.alloc({size}); a.free(p); a.free(p)\n"
    )
    if size > na.LARGE_THRESHOLD:
        # a large block is unmapped on free, so a second free faults or aborts; either way it must die
        proc = _run_child(code)
        assert proc.returncode < 0
        return
    proc = _run_child(code)
    assert proc.returncode == -6, proc.stderr
    assert "double free" in proc.stderr


def test_foreign_arena_free_aborts() -> None:
    code = (
        "import arena_trace.native_alloc as na\n"
        "a = na.Arena(); b = na.Arena(); p = a.alloc(100); b.free(p)\n"
    )
    proc = _run_child(code)
    assert proc.returncode == -6 and "another arena" in proc.stderr


# ------------------------------------------------------------------ fragmentation


def _span(request: int) -> int:
    """Bytes a medium request occupies in the span heap."""
    return -(-request // 16) * 16 + na.SPAN_HEADER


def test_fragmentation_single_hole() -> None:
    with na.Arena(tcache=False) as arena:
        a = arena.alloc(4000)
        arena.alloc(2000)  # guard: keeps the hole from merging with the chunk's tail
        arena.free(a)
        arena.alloc(3500)  # refills the 4016-byte hole and leaves a 496-byte remainder
        s = arena.stats()
        hole = _span(4000) - _span(3500)
        assert hole == 496 and hole < na.MIN_SPAN_REQUEST
        tail = na.CHUNK_USABLE - _span(4000) - _span(2000)
        assert s.bytes_free == hole + tail
        assert s.frag_bytes == hole
        assert Fraction(s.frag_bytes, s.bytes_free) == Fraction(496, 496 + tail)
        assert s.fragmentation == pytest.approx(496 / (496 + tail), rel=1e-15)
        assert s.largest_free == tail
        assert s.largest_free_share == pytest.approx(tail / (496 + tail), rel=1e-15)


def test_fragmentation_many_holes_and_coalescing() -> None:
    with na.Arena(tcache=False) as arena:
        # alternate victims and guards; each victim later leaves a remainder of known size
        victims, guards = [], []
        remainders = [48, 112, 496, 1056, 2000]  # 1056 == MIN_SPAN_REQUEST: usable, not fragmentation
        for _ in remainders:
            victims.append(arena.alloc(8000))
            guards.append(arena.alloc(1500))
        for v in victims:
            arena.free(v)
        refills = [arena.alloc(_span(8000) - r - na.SPAN_HEADER) for r in remainders]
        s = arena.stats()
        used = len(remainders) * (_span(8000) + _span(1500))
        tail = na.CHUNK_USABLE - used
        small = [r for r in remainders if r < na.MIN_SPAN_REQUEST]
        assert small == [48, 112, 496]
        total_free = sum(remainders) + tail
        assert s.bytes_free == total_free
        assert s.frag_bytes == sum(small)
        assert Fraction(s.frag_bytes, s.bytes_free) == Fraction(656, total_free)
        assert s.largest_free == tail
        # freeing a refill merges it with its remainder: that hole stops counting as fragmentation
        arena.free(refills[0])
        s = arena.stats()
        assert s.frag_bytes == 112 + 496
        for p in refills[1:] + guards:
            arena.free(p)
        s = arena.stats()
        assert s.frag_bytes == 0 and s.fragmentation == 0.0
        assert s.bytes_free == na.CHUNK_USABLE and s.largest_free_share == 1.0


def test_fragmentation_counts_free_slab_slots() -> None:
    with na.Arena(tcache=False) as arena:
        ptrs = [arena.alloc(100) for _ in range(10)]  # class 112
        for p in ptrs[:3]:
            arena.free(p)
        s = arena.stats()
        stride = 112 + na.SPAN_HEADER
        # slab_t is 64 bytes rounded to 16; objects fill the rest of the 32 KiB span
        nobj = (na.SLAB_SPAN - na.SPAN_HEADER - 64) // stride
        slots_free = (nobj - 7) * 112
        tail = na.CHUNK_USABLE - na.SLAB_SPAN
        assert s.bytes_free == slots_free + tail
        assert s.frag_bytes == 0
        assert s.bytes_in_use == 7 * 112


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 200_000), st.integers(0, 10**6)), min_size=1, max_size=120))
def test_random_ops_keep_accounting(ops: list[tuple[bool, int, int]]) -> None:
    with na.Arena(tcache=False) as arena:
        live: dict[int, int] = {}
        for is_alloc, size, pick in ops:
            if is_alloc or not live:
                p = arena.alloc(size)
                assert p not in live and p % 16 == 0
                live[p] = arena.usable_size(p)
                _fill(p, min(size, 64), len(live) & 0xFF)
            else:
                p = sorted(live)[pick % len(live)]
                arena.free(p)
                del live[p]
            s = arena.stats()
            assert s.bytes_in_use == sum(live.values())
            assert s.bytes_in_use + s.bytes_free <= s.bytes_mapped
            assert 0.0 <= s.fragmentation <= 1.0 and 0.0 <= s.largest_free_share <= 1.0
        for p in list(live):
            arena.free(p)
        arena.consolidate()
        s = arena.stats()
        assert s.bytes_mapped == 0 and s.bytes_in_use == 0


# ------------------------------------------------------------------ sanitizer stress


def _stress(binary: Path, threads: int, ops: int, env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **env_extra)
    return subprocess.run([str(binary), str(threads), str(ops)], capture_output=True, text=True, timeout=300, env=env)


def test_stress_plain(native_build: Path) -> None:
    proc = _stress(native_build / "na-stress", 4, 200_000, {})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "failures=0" in proc.stdout


def test_stress_asan(native_build: Path) -> None:
    proc = _stress(native_build / "asan" / "na-stress", 4, 200_000,
                   {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "halt_on_error=1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "AddressSanitizer" not in proc.stderr
    assert "runtime error" not in proc.stderr
    assert "failures=0" in proc.stdout


def test_stress_tsan(native_build: Path) -> None:
    binary = native_build / "tsan" / "na-stress"
    assert binary.exists(), "the Makefile builds the TSan variant whenever the compiler supports it"
    proc = _stress(binary, 4, 30_000, {"TSAN_OPTIONS": "halt_on_error=1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ThreadSanitizer" not in proc.stderr
