"""The arena-trace file format (version 1) and the in-memory ``Trace`` both live and offline reports use.

A trace file is a header followed by self-delimiting, checksummed sections, appended as the recording goes:

    header  : b"ARENATRC" | u16 format version | u16 flags (0) | u32 0            (16 bytes)
    section : b"SECT" | u8 kind | u8 encoding | u16 0 | u64 payload length | u32 crc32(payload) | payload

Section kinds: METADATA (JSON, first), EVENTS (one Arrow IPC stream holding one record batch),
AGGREGATES (Arrow IPC, the latest section replaces earlier ones), SYMBOLS (JSON: frames and stacks learned
since the previous SYMBOLS section), FOOTER (JSON, last; absent when the recorder was killed).
A reader stops at the first section that is cut short or fails its checksum and reports what was lost,
so a recording killed mid-run stays readable up to its last complete section. Nothing is pickled or eval'd.
See docs/trace-format.md for the field-by-field description.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import pandas as pd
import pyarrow as pa
from arena_trace.probes.event_layout import HISTOGRAM_BUCKETS, event_schema

FILE_MAGIC = b"ARENATRC"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHHI")
SECTION_MAGIC = b"SECT"
SECTION_HEADER = struct.Struct("<4sBBHQI")
# A section larger than this is treated as corruption rather than allocated: real sections are a few MiB.
MAX_SECTION_BYTES = 1 << 30


class SectionKind(IntEnum):
    METADATA = 1
    EVENTS = 2
    AGGREGATES = 3
    SYMBOLS = 4
    FOOTER = 5


class Encoding(IntEnum):
    JSON = 1
    ARROW_IPC = 2


def aggregate_schema() -> pa.Schema:
    """In-kernel aggregated calls: one row per (function, path, flags)."""
    return pa.schema([
        pa.field("function", pa.uint16()),
        pa.field("path", pa.uint64()),
        pa.field("flags", pa.uint8()),
        pa.field("calls", pa.uint64()),
        pa.field("total_ns", pa.uint64()),
        pa.field("self_ns", pa.uint64()),
        pa.field("max_ns", pa.uint64()),
        pa.field("histogram", pa.list_(pa.uint64(), HISTOGRAM_BUCKETS)),
    ])


FRAME_COLUMNS = ("frame_id", "module", "build_id", "module_offset", "symbol", "symbol_offset", "file", "line")
STACK_COLUMNS = ("stack_id", "frame_ids", "status")


def empty_events() -> pd.DataFrame:
    return event_schema().empty_table().to_pandas()


def empty_aggregates() -> pd.DataFrame:
    return aggregate_schema().empty_table().to_pandas()


@dataclass
class Trace:
    """Everything a report needs, with no reference to the target's binaries.

    ``metadata`` keys: schema, target {pid, comm, cmdline, start_time}, host {kernel, hostname, glibc},
    allocators [{name, path, build_id, version, debug_symbols}], maps [...], probes [{function, symbol,
    library, address, offset, tier, placement, cost_class, misses, reason, attached, error}],
    functions [{id, name, kind: function|syscall, role, tier, allocator, mode: stream|aggregate}],
    options {...}, start_ns.
    ``footer`` keys: end_ns, duration_ns, events_lost, events_recorded, stacks_captured, stacks_truncated,
    stacks_lost, unresolved_frames, exit_reason, target_exit_status.
    """

    metadata: dict[str, Any]
    events: pd.DataFrame = field(default_factory=empty_events)
    aggregates: pd.DataFrame = field(default_factory=empty_aggregates)
    frames: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(FRAME_COLUMNS)))
    stacks: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(STACK_COLUMNS)))
    footer: dict[str, Any] = field(default_factory=dict)
    damage: list[str] = field(default_factory=list)  # what a reader found wrong with the file

    def function_names(self) -> dict[int, str]:
        return {entry["id"]: entry["name"] for entry in self.metadata.get("functions", [])}


def final_metadata(metadata: dict[str, Any], footer: dict[str, Any]) -> dict[str, Any]:
    """Facts learned during the recording (thread names, final maps, the command's name) travel in the
    footer's ``metadata`` and override the header's; writer and reader both apply this one rule."""
    return {**metadata, **footer.get("metadata", {})}


def encode_section(kind: SectionKind, encoding: Encoding, payload: bytes) -> bytes:
    header = SECTION_HEADER.pack(SECTION_MAGIC, kind, encoding, 0, len(payload), zlib.crc32(payload))
    return header + payload


def encode_header() -> bytes:
    return HEADER.pack(FILE_MAGIC, FORMAT_VERSION, 0, 0)


def arrow_payload(table: pa.Table | pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)
    return sink.getvalue().to_pybytes()
