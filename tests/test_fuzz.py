"""Fuzzing the readers of untrusted bytes with a fixed budget: trace files, ELF files, CFI and stack snapshots.

Derandomized hypothesis runs (the same examples on every CI run, about a minute in all). The contracts:

* trace reader: ``BadTraceError`` or a ``Trace`` (possibly with ``damage``), never another exception;
* ELF reader and symbol tables: ``ElfError`` (or ``OSError``), never another exception;
* CFI tables and the unwinder: never raise, always terminate, on any section bytes or snapshot.

A crash found here becomes a fixed bug plus a regression test in this file.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from pathlib import Path

import pytest
from arena_trace.analysis.trace_reader import read_trace
from arena_trace.tracer.cfi import _FrameSection
from arena_trace.tracer.elf_file import ElfError, open_elf
from arena_trace.tracer.symbols import build_symbol_table
from arena_trace.tracer.trace_format import HEADER, SECTION_HEADER, Trace
from arena_trace.tracer.unwind import StackSnapshot, Unwinder, UnwindModule
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import make_trace, write_trace_file
from tracing import build_native

from arena_trace.errors import BadTraceError

REPOSITORY = Path(__file__).resolve().parent.parent
LIBRARY = REPOSITORY / "native_alloc" / "build" / "libnative_alloc.so"
WORKLOAD = REPOSITORY / "native_alloc" / "build" / "arena-workload"


# ARENA_TRACE_FUZZ_SCALE=20 runs twenty times the CI budget, with fresh random inputs, for a local hunt.
SCALE = float(os.environ.get("ARENA_TRACE_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    """A fixed budget: the same ``examples`` inputs on every CI run, nothing stored between runs."""
    return settings(max_examples=int(examples * SCALE), derandomize=SCALE == 1, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def native_build() -> None:
    build_native()


def _scratch(name: str) -> Path:
    # hypothesis runs many examples inside one test call, so function-scoped tmp_path is not per example.
    directory = Path(tempfile.mkdtemp(prefix="arena-trace-fuzz-"))
    return directory / name


# --- trace files -------------------------------------------------------------------------------------

_TRACE_BYTES: bytes | None = None


def trace_bytes() -> bytes:
    """A real trace file (written by the real TraceWriter), small enough to mutate quickly."""
    global _TRACE_BYTES
    if _TRACE_BYTES is None:
        path = write_trace_file(make_trace(seed=5, threads=2), _scratch("seed.atrace"), batch_rows=300)
        _TRACE_BYTES = path.read_bytes()
    return _TRACE_BYTES


def section_offsets(data: bytes) -> list[int]:
    position, offsets = HEADER.size, []
    while position + SECTION_HEADER.size <= len(data):
        offsets.append(position)
        position += SECTION_HEADER.size + SECTION_HEADER.unpack_from(data, position)[4]
    return offsets


def read_mutated(data: bytes) -> None:
    path = _scratch("mutated.atrace")
    path.write_bytes(data)
    try:
        trace = read_trace(path)
    except BadTraceError as error:
        assert "\n" not in str(error)
        return
    assert isinstance(trace, Trace)
    assert len(trace.events.columns) > 0


@fuzz(600)
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=8))
def test_trace_reader_bit_flips(flips: list[tuple[float, int]]) -> None:
    data = bytearray(trace_bytes())
    for where, bit in flips:
        data[int(where * len(data))] ^= 1 << bit
    read_mutated(bytes(data))


@fuzz(300)
@given(cut=st.floats(0, 1))
def test_trace_reader_truncation(cut: float) -> None:
    data = trace_bytes()
    read_mutated(data[:int(cut * len(data))])


@fuzz(600)
@given(index=st.integers(0, 1000), field=st.sampled_from(["magic", "kind", "encoding", "length", "checksum"]),
       value=st.integers(0, 2**64 - 1))
def test_trace_reader_section_header_edits(index: int, field: str, value: int) -> None:
    data = bytearray(trace_bytes())
    offsets = section_offsets(bytes(data))
    start = offsets[index % len(offsets)]
    magic, kind, encoding, reserved, length, checksum = SECTION_HEADER.unpack_from(data, start)
    if field == "magic":
        magic = value.to_bytes(8, "little")[:4]
    elif field == "kind":
        kind = value & 0xFF
    elif field == "encoding":
        encoding = value & 0xFF
    elif field == "length":
        length = value
    else:
        checksum = value & 0xFFFFFFFF
    SECTION_HEADER.pack_into(data, start, magic, kind, encoding, reserved, length, checksum)
    read_mutated(bytes(data))


# --- ELF files ---------------------------------------------------------------------------------------

def elf_contract(path: Path) -> None:
    """Everything the tracer reads from a target's ELF file: only ElfError/OSError may come out."""
    try:
        with open_elf(path) as binary:
            _ = binary.build_id, binary.debuglink, binary.segments, binary.section_names()
            for name in (".symtab", ".dynsym", ".eh_frame", ".gnu_debuglink"):
                binary.section_data(name)
            if binary.has_section(".symtab"):
                binary.section_link_data(".symtab")
        table = build_symbol_table(str(path), default_debug_directory=str(path.parent / "no-debug"))
        for symbol in table.symbols[:50]:
            table.symbolize(symbol.address)
    except (ElfError, OSError):
        pass


@fuzz(600)
@given(edits=st.lists(st.tuples(st.integers(0, 2**32), st.integers(0, 255)), min_size=1, max_size=12),
       headers_only=st.booleans())
def test_elf_reader_on_mutated_binaries(edits: list[tuple[int, int]], headers_only: bool) -> None:
    data = bytearray(WORKLOAD.read_bytes())
    # ELF header fields and the program/section header tables are where parsers go wrong; aim most
    # edits there (the e_phoff/e_shoff tables), the rest anywhere in the file.
    section_table = struct.unpack_from("<Q", data, 0x28)[0]
    program_table = struct.unpack_from("<Q", data, 0x20)[0]
    targets = [(0, 64), (program_table, 56 * 13), (section_table, max(64, len(data) - section_table))]
    for position, value in edits:
        if headers_only:
            start, size = targets[position % len(targets)]
            position = start + (position // len(targets)) % size
        data[position % len(data)] = value
    path = _scratch("mutated-elf")
    path.write_bytes(bytes(data))
    elf_contract(path)


@fuzz(150)
@given(cut=st.floats(0, 1))
def test_elf_reader_on_truncated_binaries(cut: float) -> None:
    data = WORKLOAD.read_bytes()
    path = _scratch("truncated-elf")
    path.write_bytes(data[:int(cut * len(data))])
    elf_contract(path)


# --- CFI and the unwinder ----------------------------------------------------------------------------

_EH_FRAME: tuple[bytes, int, bytes, int] | None = None


def eh_frame_sections() -> tuple[bytes, int, bytes, int]:
    """(.eh_frame bytes, address, .eh_frame_hdr bytes, address) of the native_alloc library."""
    global _EH_FRAME
    if _EH_FRAME is None:
        with open_elf(LIBRARY) as binary:
            frame_address, _ = binary.section_bounds(".eh_frame")
            header_address, _ = binary.section_bounds(".eh_frame_hdr")
            _EH_FRAME = (binary.section_data(".eh_frame"), frame_address, binary.section_data(".eh_frame_hdr"),
                         header_address)
    return _EH_FRAME


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    mutable = bytearray(data)
    for position, value in edits:
        if mutable:
            mutable[position % len(mutable)] = value
    return bytes(mutable)


@fuzz(800)
@given(frame_edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=10),
       header_edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=4),
       use_header=st.booleans(), addresses=st.lists(st.integers(0, 0x4000), min_size=1, max_size=6))
def test_cfi_decoder_on_mutated_eh_frame(frame_edits: list, header_edits: list, use_header: bool,
                                         addresses: list[int]) -> None:
    frame, frame_address, header, header_address = eh_frame_sections()
    section = _FrameSection(mutate(frame, frame_edits), frame_address, is_eh_frame=True,
                            hdr=(mutate(header, header_edits), header_address) if use_header else None)
    for address in addresses:
        decoded = section.find_fde(address)
        if decoded is not None:
            decoded.row_for(address)
    for offset in section.fde_offsets()[:20]:
        section.decode_fde_at(offset)


@fuzz(1500)
@given(rip=st.one_of(st.integers(0x1000, 0x4000), st.integers(0, 2**64 - 1)),
       rsp=st.integers(0x7ff0_0000_0000, 0x7ff0_0000_1000), rbp=st.integers(0, 2**64 - 1),
       stack=st.binary(max_size=512), shadow=st.dictionaries(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                                                              max_size=3))
def test_unwinder_on_garbage_snapshots(rip: int, rsp: int, rbp: int, stack: bytes, shadow: dict[int, int]) -> None:
    module = UnwindModule(path=str(LIBRARY), start=0x1000, end=0x4000, load_bias=0)
    unwinder = Unwinder([module])
    result = unwinder.unwind(StackSnapshot(registers={"rip": rip, "rsp": rsp, "rbp": rbp}, stack_base=rsp,
                                           stack=stack, return_address_shadow=shadow), max_frames=64)
    assert 1 <= len(result.pcs) <= 64
    assert isinstance(result.status, str)


if __name__ == "__main__":  # pragma: no cover - handy for a longer local run
    sys.exit(pytest.main([__file__, "-q"]))
