"""Streams a recording into a trace file (optional) and keeps the same data in memory for the live report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
from arena_trace.probes.event_layout import event_schema
from arena_trace.tracer.trace_format import (
    FRAME_COLUMNS,
    STACK_COLUMNS,
    Encoding,
    SectionKind,
    Trace,
    aggregate_schema,
    arrow_payload,
    encode_header,
    encode_section,
    final_metadata,
)


class TraceWriterError(Exception):
    """The trace file cannot be created or written."""


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays (frame offsets, stack frame ids) must stay numbers and lists; the old
    # default=str turned them into strings like "[1 2 3]" that no reader can use.
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray | tuple | set | frozenset):
        return list(value.tolist() if isinstance(value, np.ndarray) else value)
    return str(value)


def _json_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), default=_json_default).encode()


class TraceWriter:
    def __init__(self, metadata: dict[str, Any], path: Path | None = None, force: bool = False) -> None:
        self.metadata = metadata
        self.path = path
        self._file: BinaryIO | None = None
        self._event_batches: list[pa.RecordBatch] = []
        self._frames: list[tuple] = []
        self._stacks: list[tuple] = []
        self._aggregates: pa.Table = aggregate_schema().empty_table()
        if path is not None:
            self._file = self._create(path, force)
            self._file.write(encode_header())
            self._write_section(SectionKind.METADATA, Encoding.JSON, _json_bytes(metadata))

    @staticmethod
    def _create(path: Path, force: bool) -> BinaryIO:
        # 0600: the file reveals the target's address-space layout.
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
        try:
            descriptor = os.open(path, flags, 0o600)
        except FileExistsError:
            raise TraceWriterError(f"{path} already exists (use --force to overwrite)") from None
        except OSError as error:
            raise TraceWriterError(f"cannot create {path}: {error.strerror}") from None
        if force:
            os.fchmod(descriptor, 0o600)
        return os.fdopen(descriptor, "wb")

    def _write_section(self, kind: SectionKind, encoding: Encoding, payload: bytes) -> None:
        if self._file is None:
            return
        try:
            self._file.write(encode_section(kind, encoding, payload))
            self._file.flush()
        except OSError as error:
            # Keep recording in memory: the live report must not be lost because the disk filled up.
            self.metadata.setdefault("write_errors", []).append(str(error))
            self._file = None

    def add_events(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self._event_batches.append(batch)
        self._write_section(SectionKind.EVENTS, Encoding.ARROW_IPC, arrow_payload(batch))

    def add_symbols(self, frames: list[tuple], stacks: list[tuple]) -> None:
        """New frames (FRAME_COLUMNS tuples) and stacks (STACK_COLUMNS tuples) since the last call."""
        if not frames and not stacks:
            return
        self._frames += frames
        self._stacks += stacks
        document = {
            "frames": [dict(zip(FRAME_COLUMNS, row, strict=True)) for row in frames],
            "stacks": [dict(zip(STACK_COLUMNS, row, strict=True)) for row in stacks],
        }
        self._write_section(SectionKind.SYMBOLS, Encoding.JSON, _json_bytes(document))

    def set_aggregates(self, table: pa.Table) -> None:
        """The latest snapshot of in-kernel aggregates; each snapshot replaces the previous one."""
        self._aggregates = table
        self._write_section(SectionKind.AGGREGATES, Encoding.ARROW_IPC, arrow_payload(table))

    def close(self, footer: dict[str, Any]) -> Trace:
        self._write_section(SectionKind.FOOTER, Encoding.JSON, _json_bytes(footer))
        if self._file is not None:
            self._file.close()
            self._file = None
        return Trace(
            metadata=final_metadata(self.metadata, footer),
            events=events_frame(self._event_batches),
            aggregates=self._aggregates.to_pandas(),
            frames=pd.DataFrame(self._frames, columns=list(FRAME_COLUMNS)),
            stacks=pd.DataFrame(self._stacks, columns=list(STACK_COLUMNS)),
            footer=footer,
        )


def events_frame(batches: list[pa.RecordBatch]) -> pd.DataFrame:
    return pa.Table.from_batches(batches, schema=event_schema()).to_pandas()
