"""Drains the BPF ring buffers and maps into a TraceWriter: call events in bulk with numpy, stack snapshots
through the unwinder, in-kernel aggregates and loss counters."""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import pyarrow as pa
from arena_trace.probes.event_layout import (
    EVENT_BATCH,
    EVENT_FLAG_HAS_STACK,
    HISTOGRAM_BUCKETS,
    batch_dtype,
    event_dtype,
    event_schema,
)
from arena_trace.tracer.bpf_program import COUNTER_NAMES
from arena_trace.tracer.stack_resolver import StackResolver
from arena_trace.tracer.trace_format import aggregate_schema
from arena_trace.tracer.trace_writer import TraceWriter

_EVENT = event_dtype()
_BATCH = batch_dtype()
_SCHEMA = event_schema()
# Batches are written when this many events are pending, or at every flush.
BATCH_EVENTS = 65536
READER_INTERVAL_SECONDS = 0.01


class Collector:
    def __init__(self, bpf, writer: TraceWriter, resolver: StackResolver, syscall_ids: frozenset[int] = frozenset()
                 ) -> None:
        self.bpf = bpf
        self.syscall_ids = np.array(sorted(syscall_ids), dtype=np.uint16)
        self.writer = writer
        self.resolver = resolver
        self._event_records: list[bytes] = []
        self._stack_records: list[bytes] = []
        self._batch_records: list[bytes] = []
        self._reader: threading.Thread | None = None
        self._reader_stop = threading.Event()
        self._pending: list[np.ndarray] = []
        self._pending_count = 0
        self._call_stacks: dict[int, int] = {}
        self.events_recorded = 0
        # ctypes callbacks must stay referenced while the ring buffers exist.
        self._callbacks = (self._on_event, self._on_stack, self._on_batch)
        bpf["call_events"].open_ring_buffer(self._on_event)
        bpf["stack_snapshots"].open_ring_buffer(self._on_stack)
        bpf["event_batches"].open_ring_buffer(self._on_batch)

    def _on_event(self, _context, data, size) -> int:
        self._event_records.append(ctypes.string_at(data, size))
        return 0

    def _on_batch(self, _context, data, size) -> int:
        self._batch_records.append(ctypes.string_at(data, size))
        return 0

    def _on_stack(self, _context, data, size) -> int:
        self._stack_records.append(ctypes.string_at(data, size))
        return 0

    def start_reader(self, interval: float = READER_INTERVAL_SECONDS) -> None:
        """Drain the rings from a thread that only copies bytes, so slow processing (loading symbols for the
        first stacks, writing a batch) can never let a ring overflow. Records carry no wakeups: poll."""
        self._reader_stop.clear()

        def read() -> None:
            while not self._reader_stop.wait(interval):
                self.bpf.ring_buffer_consume()

        self._reader = threading.Thread(target=read, name="arena-trace-ring-reader", daemon=True)
        self._reader.start()

    def stop_reader(self) -> None:
        if self._reader is not None:
            self._reader_stop.set()
            self._reader.join()
            self._reader = None

    def poll(self) -> None:
        """Process what the reader copied (or consume here when no reader thread runs)."""
        if self._reader is None:
            self.bpf.ring_buffer_consume()
        self._process()

    def _process(self) -> None:
        # Swapping a list is atomic under the GIL, so the reader thread can keep appending meanwhile.
        # Stacks first: a call's snapshot is taken at its entry, so it precedes the call's event.
        records, self._stack_records = self._stack_records, []
        for record in records:
            call_id, stack_id = self.resolver.resolve(record)
            self._call_stacks[call_id] = stack_id
        records, self._event_records = self._event_records, []
        if records:
            self._add_pending(np.frombuffer(b"".join(records), dtype=_EVENT))
        records, self._batch_records = self._batch_records, []
        if records:
            self._add_batches(np.frombuffer(b"".join(records), dtype=_BATCH))
        if self._pending_count >= BATCH_EVENTS:
            self.flush()

    def _add_pending(self, events: np.ndarray) -> None:
        if len(events):
            self._pending.append(events)
            self._pending_count += len(events)

    def _add_batches(self, batches: np.ndarray) -> None:
        full = batches["count"] == EVENT_BATCH
        self._add_pending(batches["events"][full].reshape(-1))
        for batch in batches[~full]:  # partial batches: only the ones read back at detach
            self._add_pending(batch["events"][: min(int(batch["count"]), EVENT_BATCH)])

    def _stack_ids(self, events: np.ndarray) -> np.ndarray:
        """Stack id per event: its own snapshot, or for a syscall made inside e.g. sysmalloc, its caller's.

        Only those few events are looked up, so batched full-tier streams stay vectorized."""
        stacks = self._call_stacks
        result = np.full(len(events), -1, dtype=np.int32)
        own = np.flatnonzero(events["flags"] & EVENT_FLAG_HAS_STACK)
        for index in own:
            # A parent's event comes after all its children's: its entry can go once its own event is seen.
            result[index] = stacks.pop(int(events["call_id"][index]), -1)
        nested = np.flatnonzero(np.isin(events["function"], self.syscall_ids) & (events["parent_call_id"] != 0))
        for index in nested:
            result[index] = stacks.get(int(events["parent_call_id"][index]), -1)
        return result

    def flush(self) -> None:
        frames, stacks = self.resolver.take_new()
        self.writer.add_symbols(frames, stacks)
        if not self._pending:
            return
        events = np.concatenate(self._pending)
        self._pending, self._pending_count = [], 0
        columns = [pa.array(events[name]) for name in _EVENT.names]
        columns.append(pa.array(self._stack_ids(events)))
        self.writer.add_events(pa.RecordBatch.from_arrays(columns, schema=_SCHEMA))
        self.events_recorded += len(events)

    def drain(self) -> None:
        """Final consume after the probes are gone, including the partly filled per-CPU batches."""
        self.stop_reader()
        self.poll()
        for per_cpu in self.bpf["pending_batch"].values():
            for batch in per_cpu:
                if batch.count:
                    self._batch_records.append(bytes(batch))
        self._process()
        self.flush()

    def aggregates(self) -> pa.Table:
        rows: dict[str, list] = {name: [] for name in aggregate_schema().names}
        for key, per_cpu in self.bpf["aggregates"].items():
            histogram = np.zeros(HISTOGRAM_BUCKETS, dtype=np.uint64)
            calls = total = self_time = longest = 0
            for value in per_cpu:
                calls += value.calls
                total += value.total_ns
                self_time += value.self_ns
                longest = max(longest, value.max_ns)
                histogram += np.ctypeslib.as_array(value.histogram).astype(np.uint64)
            if not calls:
                continue
            rows["function"].append(key.function)
            rows["path"].append(key.path)
            rows["flags"].append(key.flags)
            rows["calls"].append(calls)
            rows["total_ns"].append(total)
            rows["self_ns"].append(self_time)
            rows["max_ns"].append(longest)
            rows["histogram"].append(histogram.tolist())
        return pa.Table.from_pydict(rows, schema=aggregate_schema())

    def exited_thread_names(self) -> dict[int, str]:
        return {int(tid.value): bytes(name.comm).split(b"\0", 1)[0].decode(errors="replace")
                for tid, name in self.bpf["exited_thread_names"].items()}

    def counters(self) -> dict[str, int]:
        table = self.bpf["counters"]
        return {name: int(sum(table[ctypes.c_int(index)])) for index, name in enumerate(COUNTER_NAMES)}
