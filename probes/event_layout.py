"""The BPF-to-user event layout, defined once.

The C struct compiled into the BPF program, the numpy dtype the collector decodes ring-buffer records
with, and the Arrow schema of the trace file's event batches are all generated from ``EVENT_FIELDS``,
so the three can never drift apart.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

# (name, type, meaning). Ordered largest first so the C struct has no padding holes.
EVENT_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("timestamp_ns", "u64", "call start, bpf_ktime_get_ns (CLOCK_MONOTONIC)"),
    ("duration_ns", "u64", "inclusive time from entry to return"),
    ("self_ns", "u64", "duration minus the inclusive time of traced callees"),
    ("call_id", "u64", "unique per traced call; links a call to its stack snapshot"),
    ("parent_call_id", "u64", "call_id of the innermost enclosing traced call, 0 at top level"),
    ("path", "u64", "function ids of the enclosing traced calls, 8 bits each, outermost in the low byte"),
    ("argument0", "u64", "first interesting argument (size, arena, futex address, syscall length)"),
    ("argument1", "u64", "second interesting argument"),
    ("return_value", "u64", "return register at exit"),
    ("tid", "u32", "kernel thread id"),
    ("function", "u16", "function id (index into the trace's function table)"),
    ("depth", "u8", "number of enclosing traced calls"),
    ("flags", "u8", "EVENT_FLAG_* bits"),
)

# Header of a user-stack snapshot record; the copied stack bytes follow it. Slots and return addresses of
# the enclosing traced calls let the unwinder undo uretprobe trampolines (shadow return addresses).
SNAPSHOT_SHADOW_DEPTH = 8
STACK_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("call_id", "u64", "the traced call this stack belongs to"),
    ("rip", "u64", "registers at the probe"),
    ("rsp", "u64", "stack pointer; the snapshot starts here"),
    ("rbp", "u64", ""),
    ("rbx", "u64", ""),
    ("r12", "u64", ""),
    ("r13", "u64", ""),
    ("r14", "u64", ""),
    ("r15", "u64", ""),
    ("shadow_slot", f"u64[{SNAPSHOT_SHADOW_DEPTH}]", "stack address of each enclosing call's return address"),
    ("shadow_return", f"u64[{SNAPSHOT_SHADOW_DEPTH}]", "the return address read before a uretprobe replaced it"),
    ("tid", "u32", "kernel thread id"),
    ("length", "u32", "bytes of stack that follow the header"),
)

# Columns the collector adds after decoding; they are not part of the BPF record.
EXTRA_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("stack_id", "i32", "index into the trace's stack table, -1 when no stack was captured"),
)

EVENT_FLAG_ARENA_LOCK = 1  # argument0 is a malloc arena's lock word (arena lock wait)
EVENT_FLAG_MAIN_ARENA = 2  # ... and that arena is glibc's main_arena
EVENT_FLAG_PATH_TRUNCATED = 4  # more than PATH_DEPTH enclosing calls; outermost ones dropped
EVENT_FLAG_HAS_STACK = 8  # a stack snapshot was emitted for this call
EVENT_FLAG_UNMATCHED = 16  # the return did not match the innermost open call (longjmp, attach mid-call)
EVENT_FLAG_STACK_SKIPPED = 32  # a stack was wanted but the per-function snapshot rate limit skipped it

PATH_DEPTH = 8
EVENT_BATCH = 64  # events per ring-buffer record in batched streaming: one record costs what one event did
HISTOGRAM_BUCKETS = 40  # log2(ns) buckets: bucket b holds durations in [2^b, 2^(b+1))

_C_TYPES = {"u64": "u64", "u32": "u32", "u16": "u16", "u8": "u8", "i32": "s32"}
_NUMPY_TYPES = {"u64": "<u8", "u32": "<u4", "u16": "<u2", "u8": "u1", "i32": "<i4"}
_ARROW_TYPES = {"u64": pa.uint64(), "u32": pa.uint32(), "u16": pa.uint16(), "u8": pa.uint8(), "i32": pa.int32()}


def _split_array(kind: str) -> tuple[str, int]:
    base, _, count = kind.partition("[")
    return base, int(count.rstrip("]")) if count else 0


def c_struct(name: str = "call_event", fields: tuple[tuple[str, str, str], ...] = EVENT_FIELDS) -> str:
    """The C definition of a record, for the BPF program."""
    lines = [f"struct {name} {{"]
    for field, kind, meaning in fields:
        base, count = _split_array(kind)
        suffix = f"[{count}]" if count else ""
        comment = f"  /* {meaning} */" if meaning else ""
        lines.append(f"    {_C_TYPES[base]} {field}{suffix};{comment}")
    lines.append("};")
    return "\n".join(lines)


def _dtype(fields: tuple[tuple[str, str, str], ...]) -> np.dtype:
    entries = []
    for field, kind, _ in fields:
        base, count = _split_array(kind)
        entries.append((field, _NUMPY_TYPES[base], (count,)) if count else (field, _NUMPY_TYPES[base]))
    return np.dtype(entries)


def event_dtype() -> np.dtype:
    """numpy dtype of one BPF call record, byte-compatible with ``c_struct()``."""
    return _dtype(EVENT_FIELDS)


def batch_dtype() -> np.dtype:
    """A batched record: ``count`` valid events out of EVENT_BATCH (``struct event_batch`` in the BPF C)."""
    return np.dtype([("count", "<u4"), ("busy", "<u4"), ("first_ns", "<u8"), ("events", event_dtype(), (EVENT_BATCH,))])


def stack_header_dtype() -> np.dtype:
    """numpy dtype of a stack snapshot header, byte-compatible with ``c_struct("stack_snapshot", STACK_FIELDS)``."""
    return _dtype(STACK_FIELDS)


def event_schema() -> pa.Schema:
    """Arrow schema of an event batch in a trace file (BPF fields plus collector columns)."""
    fields = EVENT_FIELDS + EXTRA_COLUMNS
    return pa.schema([pa.field(field, _ARROW_TYPES[kind]) for field, kind, _ in fields])


EVENT_SIZE = event_dtype().itemsize
STACK_HEADER_SIZE = stack_header_dtype().itemsize


def pack_path(function_ids: list[int]) -> int:
    """Pack enclosing function ids (outermost first) the way the BPF program does."""
    packed = 0
    for level, function_id in enumerate(function_ids[-PATH_DEPTH:]):
        packed |= (function_id & 0xFF) << (8 * level)
    return packed


def unpack_path(packed: int) -> list[int]:
    """Function ids of the enclosing calls, outermost first."""
    function_ids = []
    while packed:
        function_ids.append(packed & 0xFF)
        packed >>= 8
    return function_ids
