"""Drains the BPF ring buffers and maps into a TraceWriter: call events in bulk with numpy, stack snapshots
through the unwinder, in-kernel aggregates and loss counters."""

from __future__ import annotations

import ctypes

import numpy as np
import pyarrow as pa
from arena_trace.probes.event_layout import HISTOGRAM_BUCKETS, event_dtype, event_schema
from arena_trace.tracer.bpf_program import COUNTER_NAMES
from arena_trace.tracer.stack_resolver import StackResolver
from arena_trace.tracer.trace_format import aggregate_schema
from arena_trace.tracer.trace_writer import TraceWriter

_EVENT = event_dtype()
_SCHEMA = event_schema()
# Batches are written when this many events are pending, or at every flush.
BATCH_EVENTS = 65536


class Collector:
    def __init__(self, bpf, writer: TraceWriter, resolver: StackResolver) -> None:
        self.bpf = bpf
        self.writer = writer
        self.resolver = resolver
        self._event_records: list[bytes] = []
        self._stack_records: list[bytes] = []
        self._pending: list[np.ndarray] = []
        self._pending_count = 0
        self._call_stacks: dict[int, int] = {}
        self.events_recorded = 0
        # ctypes callbacks must stay referenced while the ring buffers exist.
        self._callbacks = (self._on_event, self._on_stack)
        bpf["call_events"].open_ring_buffer(self._on_event)
        bpf["stack_snapshots"].open_ring_buffer(self._on_stack)

    def _on_event(self, _context, data, size) -> int:
        self._event_records.append(ctypes.string_at(data, size))
        return 0

    def _on_stack(self, _context, data, size) -> int:
        self._stack_records.append(ctypes.string_at(data, size))
        return 0

    def poll(self) -> None:
        """Consume whatever the ring buffers hold (records are submitted without wakeups)."""
        self.bpf.ring_buffer_consume()
        self._process()

    def _process(self) -> None:
        # Stacks first: a call's snapshot is taken at its entry, so it precedes the call's event.
        records, self._stack_records = self._stack_records, []
        for record in records:
            call_id, stack_id = self.resolver.resolve(record)
            self._call_stacks[call_id] = stack_id
        if self._event_records:
            chunk, self._event_records = b"".join(self._event_records), []
            self._pending.append(np.frombuffer(chunk, dtype=_EVENT))
            self._pending_count += len(self._pending[-1])
        if self._pending_count >= BATCH_EVENTS:
            self.flush()

    def _stack_ids(self, events: np.ndarray) -> np.ndarray:
        stacks = self._call_stacks
        # A syscall made inside e.g. sysmalloc has no snapshot of its own: it shares its caller's stack.
        own = np.fromiter((stacks.get(int(call), -1) for call in events["call_id"]), dtype=np.int32,
                          count=len(events))
        parent = np.fromiter((stacks.get(int(call), -1) for call in events["parent_call_id"]), dtype=np.int32,
                             count=len(events))
        # A parent's event comes after all its children's: its entry can go once its own event is seen.
        for call in events["call_id"][own >= 0]:
            stacks.pop(int(call), None)
        return np.where(own >= 0, own, parent)

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
        """Final consume after the probes are gone."""
        self.poll()
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
