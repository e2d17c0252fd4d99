"""Reading a trace file back into the same ``Trace`` the live recorder builds in memory.

``read_trace(path, debug_dirs=()) -> Trace``

Robustness rules (the file may come from a recorder that was SIGKILLed, a full disk, or anywhere else):

* Nothing is allocated from a declared length before checking it against the file size and
  ``MAX_SECTION_BYTES``; every payload is CRC-checked before it is parsed; JSON and Arrow only.
* An unusable file (empty, not a trace, unsupported version, truncated header, no METADATA first, or
  corruption before any event could be read) raises ``BadTraceError`` with one line naming the problem.
* Damage after usable data stops the reading there: the sections before it are returned and
  ``trace.damage`` says what was lost (and "no footer" when the recording did not finish).

Memory and time: the file is read once. Each EVENTS section is validated as a whole, then its columns are
appended to arrays preallocated from the section lengths, of the narrowest unsigned type that holds every
value seen so far (e.g. durations below 4.29 s become uint32); a column is copied to a wider type when a
later value needs it. Unused capacity is never touched and is trimmed in place at the end, so loading
costs about one narrowed row's width per event and no second full copy. Analysis code must therefore not
assume the uint64 dtypes of the file schema.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from arena_trace.probes.event_layout import event_schema
from arena_trace.tracer.trace_format import (
    FILE_MAGIC,
    FORMAT_VERSION,
    FRAME_COLUMNS,
    HEADER,
    MAX_SECTION_BYTES,
    SECTION_HEADER,
    SECTION_MAGIC,
    STACK_COLUMNS,
    SectionKind,
    Trace,
    aggregate_schema,
    empty_aggregates,
    final_metadata,
)

from arena_trace.errors import BadTraceError

_UNSIGNED = (np.uint8, np.uint16, np.uint32, np.uint64)


def narrowest_unsigned(largest: int, declared: np.dtype) -> np.dtype:
    """The smallest unsigned dtype holding ``largest``, never wider than the declared one."""
    for candidate in _UNSIGNED:
        if largest <= np.iinfo(candidate).max:
            return np.dtype(candidate) if np.dtype(candidate).itemsize <= declared.itemsize else declared
    return declared


def compact_events(events: pd.DataFrame) -> pd.DataFrame:
    """Narrow unsigned event columns in place of a copy (live mode may call this on its own frame)."""
    columns = {}
    for name in events.columns:
        values = events[name].to_numpy()
        if values.dtype.kind == "u" and len(values):
            values = values.astype(narrowest_unsigned(int(values.max()), values.dtype), copy=False)
        columns[name] = values
    return pd.DataFrame(columns, copy=False)


@dataclass
class _EventSection:
    offset: int  # of the payload in the file
    length: int
    rows: int


class _EventColumns:
    """The events read so far, one narrowed numpy array per column, preallocated for ``capacity`` rows.

    np.empty leaves the pages of unused capacity untouched (not resident); frame() trims them with an
    in-place ``resize`` (realloc). Growing uses new arrays and a copy, because ``resize`` zero-fills (touches)
    the added capacity; with the capacity from _event_rows_bound it happens only for compressed Arrow bodies
    or a file that grew after it was opened.
    """

    def __init__(self, schema: pa.Schema, capacity: int) -> None:
        self.declared = {item.name: np.dtype(item.type.to_pandas_dtype()) for item in schema}
        self.arrays = {name: np.empty(capacity, dtype=narrowest_unsigned(0, declared) if declared.kind == "u"
                                      else declared) for name, declared in self.declared.items()}
        self.rows = 0
        self.capacity = capacity

    def append(self, batch: pa.RecordBatch) -> None:
        rows = batch.num_rows
        if self.rows + rows > self.capacity:
            self.capacity = max(2 * self.capacity, self.rows + rows)
            for name, array in self.arrays.items():
                self._copy(name, array.dtype)
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            values = column.to_numpy(zero_copy_only=False)  # a view of the payload: no nulls (checked)
            array = self.arrays[name]
            if values.dtype.kind == "u" and rows:
                largest = int(values.max())
                if largest > np.iinfo(array.dtype).max:  # widened once per type step, not per batch
                    array = self._copy(name, narrowest_unsigned(largest, self.declared[name]))
            array[self.rows:self.rows + rows] = values  # lossless: the array's type holds ``largest``
        self.rows += rows

    def _copy(self, name: str, dtype: np.dtype) -> np.ndarray:
        """Replace a column by a new one of self.capacity rows and ``dtype``, holding the rows so far."""
        replacement = np.empty(self.capacity, dtype=dtype)
        replacement[:self.rows] = self.arrays[name][:self.rows]
        self.arrays[name] = replacement
        return replacement

    def frame(self) -> pd.DataFrame:
        for array in self.arrays.values():
            # In place (refcheck=False is safe: nothing else refers to these arrays yet). Shrinking a
            # large array gives the unused tail back without copying or touching it.
            array.resize(self.rows, refcheck=False)
        return pd.DataFrame(self.arrays, copy=False)


def _event_rows_bound(stream: BinaryIO, file_size: int, schema: pa.Schema) -> int:
    """At most how many event rows the file holds, from the EVENTS section headers alone: an uncompressed
    Arrow row takes at least the sum of the column widths. Damage is left to the scan; this only sizes."""
    row_bytes = sum(np.dtype(item.type.to_pandas_dtype()).itemsize for item in schema)
    total = 0
    position = HEADER.size
    while position + SECTION_HEADER.size <= file_size:
        stream.seek(position)
        header = stream.read(SECTION_HEADER.size)
        if len(header) < SECTION_HEADER.size:
            break
        magic, kind, _encoding, _reserved, length, _checksum = SECTION_HEADER.unpack(header)
        if magic != SECTION_MAGIC or length > MAX_SECTION_BYTES:
            break
        if kind == SectionKind.EVENTS:
            total += min(length, file_size - position)
        position += SECTION_HEADER.size + length
    return total // row_bytes


class _ReadBuffer:
    """One reusable buffer for EVENTS payloads. Reading each payload into a fresh ``bytes`` makes malloc map
    and unmap megabytes per section, twice per file: page faults cost time, and glibc kept some of the
    freed memory resident (about 6 MiB after loading the 1 M-event benchmark file)."""

    def __init__(self) -> None:
        self._buffer: mmap.mmap | None = None

    def read(self, descriptor: int, offset: int, length: int) -> memoryview:
        """``length`` bytes at ``offset`` (fewer at the end of the file); valid until the next call. Callers
        drop every Arrow object built on the previous payload first (it is overwritten in place)."""
        if self._buffer is None or len(self._buffer) < length:
            # An anonymous mapping goes back to the kernel when dropped, where malloc might keep it.
            self._buffer = mmap.mmap(-1, max(length, 1))
        view = memoryview(self._buffer)[:length]
        done = 0
        while done < length:  # pread, not the stream: the prefetch thread reads at the same time
            count = os.preadv(descriptor, [view[done:]], offset + done)
            if count == 0:
                break
            done += count
        return view[:done]


class _Prefetcher:
    """Reads and checksums the section after the current EVENTS section in a background thread.

    readinto/preadv and zlib.crc32 release the GIL, so on this 2-CPU machine reading and checking section
    k + 1 overlaps converting section k (about a third of the load time for the 10 M-event benchmark).
    It is only a cache: the scanner parses and validates every header itself and asks for (offset, length);
    a guess that does not match, e.g. after damage, is read again synchronously.
    """

    def __init__(self, descriptor: int, file_size: int) -> None:
        self.descriptor = descriptor
        self.file_size = file_size
        self.buffers = (_ReadBuffer(), _ReadBuffer())
        self.turn = 0  # the buffer the current payload is in; the prefetch uses the other one
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trace-prefetch")
        self.pending: Future[tuple[int, int, memoryview, int] | None] | None = None

    def payload(self, offset: int, length: int) -> tuple[memoryview, int]:
        """The payload at ``offset`` and its CRC-32; then starts reading the section after it."""
        guess = self.pending.result() if self.pending is not None else None
        self.pending = None
        if guess is not None and guess[:2] == (offset, length):
            self.turn ^= 1
            view, checksum = guess[2], guess[3]
        else:
            view = self.buffers[self.turn].read(self.descriptor, offset, length)
            checksum = zlib.crc32(view)
        self.pending = self.pool.submit(self._read_section, offset + length, self.buffers[self.turn ^ 1])
        return view, checksum

    def _read_section(self, position: int, buffer: _ReadBuffer) -> tuple[int, int, memoryview, int] | None:
        header = os.pread(self.descriptor, SECTION_HEADER.size, position)
        if len(header) < SECTION_HEADER.size:
            return None
        magic, kind, _encoding, _reserved, length, _checksum = SECTION_HEADER.unpack(header)
        start = position + SECTION_HEADER.size
        if magic != SECTION_MAGIC or kind != SectionKind.EVENTS or start + length > self.file_size \
                or length > MAX_SECTION_BYTES:
            return None
        view = buffer.read(self.descriptor, start, length)
        return start, length, view, zlib.crc32(view)

    def close(self) -> None:
        if self.pending is not None:
            self.pending.result()  # the thread must be done with the buffers before they go away
        self.pool.shutdown()


@dataclass
class _Scan:
    metadata: dict[str, Any] | None = None
    footer: dict[str, Any] = field(default_factory=dict)
    event_sections: list[_EventSection] = field(default_factory=list)
    events: _EventColumns = field(default_factory=lambda: _EventColumns(event_schema(), 0))
    aggregates: pa.Table | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)
    stacks: list[dict[str, Any]] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)
    last_event_ns: int | None = None
    corrupted: bool = False  # damage other than the file simply ending early


class _PayloadError(Exception):
    """A section whose checksum is right but whose content cannot be used."""


def _kind_name(kind: int) -> str:
    try:
        return SectionKind(kind).name
    except ValueError:
        return f"kind-{kind}"


def _json_document(payload: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _PayloadError(f"bad JSON in {what}: {error}") from None
    if not isinstance(document, dict):
        raise _PayloadError(f"{what} is not a JSON object")
    return document


def _arrow_batches(payload: bytes | memoryview, expected: pa.Schema, what: str) -> list[pa.RecordBatch]:
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(payload))
        if not reader.schema.remove_metadata().equals(expected):
            raise _PayloadError(f"{what} has an unexpected schema ({_schema_brief(reader.schema)})")
        batches = list(reader)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as error:
        raise _PayloadError(f"bad Arrow data in {what}: {str(error).splitlines()[0]}") from None
    for batch in batches:
        for column_name, column in zip(batch.schema.names, batch.columns, strict=True):
            if column.null_count:
                raise _PayloadError(f"{what} has null values in column {column_name}")
    return batches


def _schema_brief(schema: pa.Schema) -> str:
    text = ", ".join(f"{item.name}:{item.type}" for item in schema)
    return text if len(text) < 120 else text[:117] + "..."


def _cut_message(scan: _Scan, file_size: int, kind: str, start: int) -> str:
    message = f"file cut at byte {file_size} inside a {kind} section that starts at byte {start}"
    if scan.last_event_ns is not None and scan.metadata is not None:
        start_ns = int(scan.metadata.get("start_ns") or 0)
        seconds = (scan.last_event_ns - start_ns) / 1e9 if start_ns else None
        message += f": events after t={seconds:.3f} s lost" if seconds is not None else ": later events lost"
    return message


class _Scanner:
    """Walk and validate every section, keeping the events of each valid EVENTS section."""

    def __init__(self, stream: BinaryIO, file_size: int, name: str) -> None:
        self.stream = stream
        self.file_size = file_size
        self.name = name
        self.schema = event_schema()
        self.scan = _Scan(events=_EventColumns(self.schema, _event_rows_bound(stream, file_size, self.schema)))
        self.prefetcher = _Prefetcher(stream.fileno(), file_size)
        self.next_position = HEADER.size

    def run(self) -> _Scan:
        try:
            while self.next_position < self.file_size:
                if not self._section(self.next_position):
                    break
        finally:
            self.prefetcher.close()
        return self.scan

    def _damage(self, message: str, corrupted: bool) -> bool:
        self.scan.damage.append(message)
        self.scan.corrupted = corrupted
        return False

    def _section(self, position: int) -> bool:
        scan = self.scan
        self.stream.seek(position)
        header = self.stream.read(SECTION_HEADER.size)
        if len(header) < SECTION_HEADER.size:
            return self._damage(f"file cut at byte {self.file_size} inside a section header", corrupted=False)
        magic, kind, _encoding, _reserved, length, checksum = SECTION_HEADER.unpack(header)
        kind_name = _kind_name(kind)
        if magic != SECTION_MAGIC:
            return self._damage(f"bad section magic at byte {position}: the remaining "
                                f"{self.file_size - position} bytes are unreadable", corrupted=True)
        if length > MAX_SECTION_BYTES:
            return self._damage(f"{kind_name} section at byte {position} declares {length} bytes "
                                f"(limit {MAX_SECTION_BYTES}): corrupted", corrupted=True)
        payload_start = position + SECTION_HEADER.size
        if payload_start + length > self.file_size:
            return self._damage(_cut_message(scan, self.file_size, kind_name, position), corrupted=False)
        # Other sections are small and an AGGREGATES table keeps its payload: those get their own bytes.
        if kind == SectionKind.EVENTS:
            payload, actual_checksum = self.prefetcher.payload(payload_start, length)
        else:
            payload = self.stream.read(length)
            actual_checksum = zlib.crc32(payload)
        self.next_position = payload_start + length
        if len(payload) != length:  # the file shrank while we read it
            return self._damage(_cut_message(scan, self.file_size, kind_name, position), corrupted=False)
        if actual_checksum != checksum:
            return self._damage(f"{kind_name} section at byte {position} fails its checksum: it and "
                                f"everything after it are ignored", corrupted=True)
        if scan.metadata is None and kind != SectionKind.METADATA:
            raise BadTraceError(f"{self.name}: no METADATA section at the start (found {kind_name})")
        try:
            self._decode(kind, payload, payload_start, position)
        except _PayloadError as error:
            if scan.metadata is None:
                raise BadTraceError(f"{self.name}: {error}") from None
            return self._damage(f"{error} (section at byte {position}): it and everything after it are ignored",
                                corrupted=True)
        return kind != SectionKind.FOOTER

    def _decode(self, kind: int, payload: bytes | memoryview, payload_start: int, position: int) -> None:
        scan = self.scan
        if kind == SectionKind.METADATA:
            if scan.metadata is not None:
                raise _PayloadError("a second METADATA section")
            scan.metadata = _json_document(payload, "METADATA")
        elif kind == SectionKind.EVENTS:
            # The whole section is validated before any of it is kept: damage drops whole sections.
            batches = _arrow_batches(payload, self.schema, "EVENTS section")
            rows = sum(batch.num_rows for batch in batches)
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                last = pc.max(batch.column("timestamp_ns")).as_py()
                scan.last_event_ns = max(scan.last_event_ns or 0, last)
                scan.events.append(batch)
            batch = None  # nothing may use the payload buffer once it is reused for a later section
            del batches, batch
            scan.event_sections.append(_EventSection(payload_start, len(payload), rows))
        elif kind == SectionKind.AGGREGATES:
            batches = _arrow_batches(payload, aggregate_schema(), "AGGREGATES section")
            scan.aggregates = pa.Table.from_batches(batches, schema=aggregate_schema())
        elif kind == SectionKind.SYMBOLS:
            document = _json_document(payload, "SYMBOLS section")
            frames, stacks = document.get("frames", []), document.get("stacks", [])
            if not isinstance(frames, list) or not isinstance(stacks, list):
                raise _PayloadError("SYMBOLS section: frames and stacks must be lists")
            scan.frames += [frame for frame in frames if isinstance(frame, dict)]
            scan.stacks += [stack for stack in stacks if isinstance(stack, dict)]
        elif kind == SectionKind.FOOTER:
            scan.footer = _json_document(payload, "FOOTER")
        # Unknown kinds are skipped: version 1 readers ignore sections added later (docs/trace-format.md).


def _read_header(stream: BinaryIO, file_size: int, name: str) -> None:
    if file_size == 0:
        raise BadTraceError(f"{name}: empty file (0 bytes), not an arena-trace file")
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        if FILE_MAGIC.startswith(header[:len(FILE_MAGIC)]) or header.startswith(FILE_MAGIC):
            raise BadTraceError(f"{name}: truncated header ({len(header)} of {HEADER.size} bytes)")
        raise BadTraceError(f"{name}: not an arena-trace file (bad magic)")
    magic, version, _flags, _reserved = HEADER.unpack(header)
    if magic != FILE_MAGIC:
        raise BadTraceError(f"{name}: not an arena-trace file (bad magic)")
    if version != FORMAT_VERSION:
        raise BadTraceError(f"{name}: unsupported trace format version {version} "
                            f"(this arena-trace reads version {FORMAT_VERSION})")


def _optional_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value, 0) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        return None


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def frames_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [(_optional_int(record.get("frame_id")), _optional_text(record.get("module")),
             _optional_text(record.get("build_id")), _optional_int(record.get("module_offset")),
             str(record.get("symbol") or ""), _optional_int(record.get("symbol_offset")),
             _optional_text(record.get("file")), _optional_int(record.get("line"))) for record in records]
    rows = [row for row in rows if row[0] is not None]
    return pd.DataFrame(rows, columns=list(FRAME_COLUMNS))


def stacks_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for record in records:
        stack_id = _optional_int(record.get("stack_id"))
        frame_ids = record.get("frame_ids")
        if stack_id is None or not isinstance(frame_ids, list):
            continue
        frames = [_optional_int(frame) for frame in frame_ids]
        rows.append((stack_id, [frame for frame in frames if frame is not None], str(record.get("status", ""))))
    return pd.DataFrame(rows, columns=list(STACK_COLUMNS))


def open_input_file(path: str | os.PathLike[str], what: str = "trace file") -> BinaryIO:
    """Open a file given on the command line for reading: a regular file only, never blocking (a FIFO would
    otherwise wait forever for a writer); anything else is a one-line BadTraceError."""
    name = os.fspath(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except IsADirectoryError:
        raise BadTraceError(f"{name}: is a directory, not a {what}") from None
    except OSError as error:
        raise BadTraceError(f"cannot open {name}: {error.strerror or error}") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        kind = "is a directory" if stat.S_ISDIR(mode) else "is not a regular file (a pipe or device)"
        raise BadTraceError(f"{name}: {kind}, not a {what}: reading one needs a file it can seek in")
    return os.fdopen(descriptor, "rb")


def read_trace(path: str | os.PathLike[str], debug_dirs: tuple[str, ...] | list[str] = ()) -> Trace:
    """Read a trace file; raise BadTraceError when unusable, else return it with ``damage`` filled in."""
    name = os.fspath(path)
    stream = open_input_file(path)
    try:
        file_size = os.fstat(stream.fileno()).st_size
        _read_header(stream, file_size, name)
        scan = _Scanner(stream, file_size, name).run()
        if scan.metadata is None:
            detail = scan.damage[0] if scan.damage else "the file ends after its header"
            raise BadTraceError(f"{name}: no METADATA section ({detail})")
        if scan.corrupted and not scan.event_sections:
            raise BadTraceError(f"{name}: {scan.damage[-1]}")
        if not scan.footer:
            scan.damage.append("no footer: the recording did not finish (recorder killed or disk full?)")
        events = scan.events.frame()
    finally:
        stream.close()
    aggregates = scan.aggregates.to_pandas() if scan.aggregates is not None else empty_aggregates()
    trace = Trace(metadata=final_metadata(scan.metadata, scan.footer), events=events, aggregates=aggregates,
                  frames=frames_frame(scan.frames), stacks=stacks_frame(scan.stacks), footer=scan.footer,
                  damage=scan.damage)
    if debug_dirs:
        from arena_trace.analysis.resymbolize import resymbolize

        resymbolize(trace, [str(directory) for directory in debug_dirs])
    return trace

