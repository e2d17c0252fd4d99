"""Realistic synthetic Traces for tests and benchmarks (no BPF, no root).

Stable API (other engineers' tests import it):

* ``make_trace(seed=0, threads=4, full=True, contention=True, ...) -> Trace``: a small but realistic glibc +
  native_alloc recording: nested malloc → _int_malloc → sysmalloc → brk with consistent call_id /
  parent_call_id / path / depth / self_ns, arena lock waits on main_arena and on a non-main arena, an
  unrelated stdio-lock wait, an application futex (counted, not streamed), brk shrink/grow cycles, same-size
  mmap/munmap pairs, consolidations, native batch/grow/lock waits, stacks with frames and aggregates with
  log2 histograms.
* ``write_trace_file(trace, path) -> Path``: writes any Trace with the real TraceWriter (0600 file).
* ``TraceBuilder``: build hand-computable traces call by call (``call(...)`` trees, ``add(tid, tree)``).
* ``write_large_trace(path, events, seed=0) -> Path``: a fast N-million-event file for the scale benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from arena_trace.probes.catalog import SYSCALLS, Tier
from arena_trace.probes.event_layout import (
    EVENT_FLAG_ARENA_LOCK,
    EVENT_FLAG_HAS_STACK,
    EVENT_FLAG_MAIN_ARENA,
    HISTOGRAM_BUCKETS,
    event_schema,
    pack_path,
)
from arena_trace.probes.glibc import GLIBC
from arena_trace.probes.native_alloc import NATIVE
from arena_trace.tracer.trace_format import Trace, aggregate_schema
from arena_trace.tracer.trace_writer import TraceWriter, events_frame

START_NS = 1_000_000_000_000
MAIN_ARENA = 0x7F3A_B8DD_3C60
OTHER_ARENA = 0x7F68_1400_0030  # heap 0x7f6814000000 + sizeof(heap_info)
NATIVE_ARENA = 0x5600_0000_4000
STDIO_LOCK = 0x7F3A_B8DD_5A10
APPLICATION_MUTEX = 0x5600_0000_9000
FUTEX_WAIT_PRIVATE = 128
LIBC_PATH = "/usr/lib/x86_64-linux-gnu/libc.so.6"
LIBC_BUILD_ID = "8e0f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b"
NATIVE_PATH = "/opt/app/lib/libnative_alloc.so"
NATIVE_BUILD_ID = "1234567890abcdef1234567890abcdef12345678"
APP_PATH = "/opt/app/bin/server"
APP_BUILD_ID = "feedfacefeedfacefeedfacefeedfacefeedface"


def catalog_functions() -> list[dict[str, Any]]:
    """The function table the tracer would write: glibc, then native_alloc, then syscalls; ids from 1."""
    entries: list[dict[str, Any]] = []
    for catalog in (GLIBC, NATIVE):
        for spec in catalog.functions:
            entries.append({"id": len(entries) + 1, "name": spec.name, "kind": "function", "role": str(spec.role),
                            "tier": str(spec.tier), "allocator": catalog.name,
                            "mode": "stream" if spec.tier == Tier.SLOW else "aggregate"})
    for syscall in SYSCALLS:
        entries.append({"id": len(entries) + 1, "name": syscall.name, "kind": "syscall", "role": "syscall",
                        "tier": "slow", "allocator": None, "mode": "stream"})
    return entries


@dataclass
class Call:
    """One traced call and its traced callees; ``start`` is nanoseconds after the trace start."""

    name: str
    start: int
    duration: int
    argument0: int = 0
    argument1: int = 0
    return_value: int = 0
    flags: int = 0
    stack_id: int = -1
    children: list[Call] = field(default_factory=list)


def call(name: str, start: int, duration: int, *children: Call, **values: int) -> Call:
    return Call(name, start, duration, children=list(children), **values)


class TraceBuilder:
    """Accumulates calls the way the BPF side reports them: slow-tier calls and syscalls become event rows,
    full-tier calls become (function, path, flags) aggregate rows with log2 histograms."""

    def __init__(self, functions: list[dict[str, Any]] | None = None, start_ns: int = START_NS) -> None:
        self.functions = functions or catalog_functions()
        self.ids = {entry["name"]: entry["id"] for entry in self.functions}
        self.streamed = {entry["name"] for entry in self.functions if entry["mode"] == "stream"}
        self.start_ns = start_ns
        self.rows: list[tuple] = []
        self.aggregates: dict[tuple[int, int, int], list[Any]] = {}
        self.next_call_id = 1
        self.frames: list[tuple] = []
        self.stacks: list[tuple] = []
        self.threads: dict[int, str] = {}

    def thread(self, tid: int, name: str) -> None:
        self.threads[tid] = name

    def stack(self, frames: list[tuple[str, str | None, int]], status: str = "complete") -> int:
        """A stack from (module, symbol or None, module_offset) tuples, innermost first; returns its id."""
        frame_ids = []
        for module, symbol, offset in frames:
            build_id = {LIBC_PATH: LIBC_BUILD_ID, NATIVE_PATH: NATIVE_BUILD_ID}.get(module, APP_BUILD_ID)
            frame_ids.append(len(self.frames))
            self.frames.append((len(self.frames), module, build_id, offset, symbol or "", 0 if symbol else None,
                                None, None))
        self.stacks.append((len(self.stacks), frame_ids, status))
        return len(self.stacks) - 1

    def add(self, tid: int, tree: Call, ancestors: tuple[int, ...] = (), parent_call_id: int = 0,
            inherited_stack: int = -1) -> int:
        """Record a call tree; returns the root's call_id."""
        call_id = self.next_call_id
        self.next_call_id += 1
        function = self.ids[tree.name]
        stack_id = tree.stack_id if tree.stack_id >= 0 else inherited_stack
        children_time = sum(child.duration for child in tree.children)
        self_ns = max(0, tree.duration - children_time)
        path = pack_path(list(ancestors))
        if tree.name in self.streamed:
            flags = tree.flags | (EVENT_FLAG_HAS_STACK if tree.stack_id >= 0 else 0)
            self.rows.append((self.start_ns + tree.start, tree.duration, self_ns, call_id, parent_call_id, path,
                              tree.argument0, tree.argument1, tree.return_value, tid, function, len(ancestors),
                              flags, stack_id))
        else:
            row = self.aggregates.setdefault((function, path, tree.flags), [0, 0, 0, 0, [0] * HISTOGRAM_BUCKETS])
            row[0] += 1
            row[1] += tree.duration
            row[2] += self_ns
            row[3] = max(row[3], tree.duration)
            row[4][min(HISTOGRAM_BUCKETS - 1, max(0, int(tree.duration).bit_length() - 1))] += 1
        for child in tree.children:
            self.add(tid, child, (*ancestors, function), call_id, stack_id)
        return call_id

    def add_aggregate(self, name: str, durations: np.ndarray, path: list[str] = (), flags: int = 0) -> None:
        """Many full-tier calls at once (e.g. 50,000 tcache-hit mallocs), straight into the aggregates."""
        function = self.ids[name]
        key = (function, pack_path([self.ids[item] for item in path]), flags)
        row = self.aggregates.setdefault(key, [0, 0, 0, 0, [0] * HISTOGRAM_BUCKETS])
        durations = np.asarray(durations, dtype=np.int64)
        buckets = np.clip(np.floor(np.log2(np.maximum(durations, 1))).astype(int), 0, HISTOGRAM_BUCKETS - 1)
        row[0] += len(durations)
        row[1] += int(durations.sum())
        row[2] += int(durations.sum())
        row[3] = max(row[3], int(durations.max(initial=0)))
        row[4] = [a + int(b) for a, b in zip(row[4], np.bincount(buckets, minlength=HISTOGRAM_BUCKETS), strict=True)]

    def event_batch(self) -> pa.RecordBatch:
        rows = sorted(self.rows, key=lambda row: row[0])
        columns = list(zip(*rows, strict=True)) if rows else [[] for _ in event_schema()]
        return pa.RecordBatch.from_arrays([pa.array(values, type=item.type)
                                           for values, item in zip(columns, event_schema(), strict=True)],
                                          schema=event_schema())

    def aggregate_table(self) -> pa.Table:
        keys = sorted(self.aggregates)
        values = [self.aggregates[key] for key in keys]
        data = {"function": [key[0] for key in keys], "path": [key[1] for key in keys],
                "flags": [key[2] for key in keys], "calls": [value[0] for value in values],
                "total_ns": [value[1] for value in values], "self_ns": [value[2] for value in values],
                "max_ns": [value[3] for value in values], "histogram": [value[4] for value in values]}
        return pa.Table.from_pydict(data, schema=aggregate_schema())

    def build(self, duration_ns: int, metadata: dict[str, Any] | None = None, footer: dict[str, Any] | None = None,
              full: bool = True) -> Trace:
        metadata = {**default_metadata(self.functions, self.threads, self.start_ns, full), **(metadata or {})}
        footer = {**default_footer(self.start_ns, duration_ns, len(self.rows), self.stacks), **(footer or {})}
        writer = TraceWriter(metadata)  # in memory only: exactly what live mode hands to the report
        writer.add_events(self.event_batch())
        writer.add_symbols(self.frames, self.stacks)
        writer.set_aggregates(self.aggregate_table())
        return writer.close(footer)


def default_metadata(functions: list[dict[str, Any]], threads: dict[int, str], start_ns: int,
                     full: bool) -> dict[str, Any]:
    probes = [{"function": entry["name"], "symbol": entry["name"], "library": LIBC_PATH if entry["allocator"] ==
               "glibc" else NATIVE_PATH, "address": 0x96B20 + entry["id"], "offset": 0x96B20 + entry["id"],
               "tier": entry["tier"], "placement": "entry", "cost_class": "emulated", "misses": "", "reason": "",
               "attached": True, "error": None}
              for entry in functions if entry["kind"] == "function" and (full or entry["tier"] == "slow")]
    probes[-1] = {**probes[-1], "attached": False, "error": "uprobe attach failed twice: Invalid argument"}
    return {
        "schema": "arena-trace/trace/1",
        "target": {"pid": 4242, "comm": "server", "cmdline": [APP_PATH, "--threads", str(len(threads))],
                   "start_time": "2024-05-01T12:00:00Z"},
        "host": {"kernel": "6.1.0-18-amd64", "hostname": "build-7", "glibc": "2.36"},
        "allocators": [
            {"name": "glibc", "path": LIBC_PATH, "build_id": LIBC_BUILD_ID, "version": "2.36", "debug_symbols": True,
             "main_arena": MAIN_ARENA},
            {"name": "native", "path": NATIVE_PATH, "build_id": NATIVE_BUILD_ID, "version": "0.1.0",
             "debug_symbols": False, "main_arena": None},
        ],
        "maps": [],
        "probes": probes,
        "functions": functions,
        "threads": [{"tid": tid, "name": name} for tid, name in sorted(threads.items())],
        "options": {"full": full, "allocator": "auto", "duration": None},
        "start_ns": start_ns,
    }


def default_footer(start_ns: int, duration_ns: int, events: int, stacks: list[tuple]) -> dict[str, Any]:
    truncated = sum(1 for stack in stacks if stack[2] != "complete")
    return {"end_ns": start_ns + duration_ns, "duration_ns": duration_ns, "events_lost": 0, "events_recorded": events,
            "stacks_captured": len(stacks), "stacks_truncated": truncated, "stacks_lost": 0, "unresolved_frames": 1,
            "exit_reason": "duration", "target_exit_status": None}


def _stacks(builder: TraceBuilder) -> dict[str, int]:
    libc, app, native = LIBC_PATH, APP_PATH, NATIVE_PATH
    tail = [(app, "worker_loop", 0x1520), (libc, "start_thread", 0x8b3a), (libc, "clone3", 0x10c0d)]
    return {
        "malloc_grow": builder.stack([(libc, "sysmalloc", 0x96b20), (libc, "_int_malloc", 0x97a0c),
                                      (libc, "malloc", 0x98a10), (app, "parse_request", 0x1830), *tail]),
        "malloc_lock": builder.stack([(libc, "__lll_lock_wait_private", 0x860b0), (libc, "malloc", 0x98bf8),
                                      (app, "build_reply", 0x1990), *tail]),
        "free_lock": builder.stack([(libc, "__lll_lock_wait_private", 0x860b0), (libc, "_int_free", 0x9697d),
                                    (app, None, 0x1a44), *tail]),
        "trim": builder.stack([(libc, "systrim", 0x96070), (libc, "_int_free", 0x96600), (app, "drop_cache", 0x1b00),
                               *tail]),
        "arena": builder.stack([(libc, "arena_get2", 0x957a0), (libc, "tcache_init", 0x98300), *tail]),
        "stdio": builder.stack([(libc, "__lll_lock_wait_private", 0x860b0), (libc, "_IO_fwrite", 0x7a000),
                                (app, "log_line", 0x1c00)], status="truncated-snapshot"),
        "native": builder.stack([(native, "na_lock_wait", 0x2100), (native, "na_alloc_batch", 0x2400),
                                 (app, "native_worker", 0x1d00), *tail]),
    }


def make_trace(seed: int = 0, threads: int = 4, full: bool = True, contention: bool = True, growth: bool = True,
               thread_names: dict[int, str] | None = None, duration_ns: int = 2_000_000_000,
               native: bool = True) -> Trace:
    """A realistic recording of ``threads`` worker threads (tids 1001...) over ``duration_ns``.

    contention=False gives the "default arenas, no sharing" case: no arena lock waits at all.
    """
    rng = np.random.default_rng(seed)
    builder = TraceBuilder()
    tids = [1000 + index for index in range(1, threads + 1)]
    builder.thread(1000, "server")
    for index, tid in enumerate(tids):
        builder.thread(tid, (thread_names or {}).get(tid, f"worker-{index}"))
    stacks = _stacks(builder)
    span = duration_ns - 50_000_000

    def at() -> int:
        return int(rng.integers(1_000_000, span))

    def wrap(inner: Call, mode: str = "malloc") -> Call:
        """Full tier: the slow call happens inside malloc → _int_malloc (or free → _int_free)."""
        if not full:
            return inner
        internal = "_int_malloc" if mode == "malloc" else "_int_free"
        extra = int(rng.integers(200, 900))
        return call(mode, inner.start - 400, inner.duration + extra + 400,
                    call(internal, inner.start - 200, inner.duration + extra, inner))

    # Each worker picks an arena once: the first two share OTHER_ARENA, the rest get main_arena (contention).
    arenas = {tid: (OTHER_ARENA if index < 2 else MAIN_ARENA) for index, tid in enumerate(tids)}
    for index, tid in enumerate(tids):
        start = 200_000 + index * 50_000
        children = []
        if index == 0:  # the first thread creates the arena: new_heap maps a 64 MiB-aligned heap
            children = [call("new_heap", start + 2_000, 30_000,
                             call("mmap", start + 3_000, 12_000, argument0=128 << 20, argument1=0),
                             call("munmap", start + 16_000, 5_000, argument0=64 << 20),
                             call("mprotect", start + 22_000, 6_000, argument0=132 << 10, argument1=3),
                             argument0=2264, argument1=128 << 10)]
        builder.add(tid, call("arena_get2", start, 40_000, *children, argument0=640, return_value=arenas[tid],
                              stack_id=stacks["arena"]))

    brk = 0x5555_5576_0000
    if growth:
        # Repeated small heap growth on main_arena (sysmalloc → brk of 132 KiB each time), and trim / regrow
        # cycles (systrim gives 256 KiB back, sysmalloc takes it again). The break moves in time order.
        plan = sorted([(at(), "grow") for _ in range(60)] + [(at(), "trim") for _ in range(8)])
        for start, kind in plan:
            if kind == "grow":
                duration = int(rng.integers(8_000, 40_000))
                brk += 132 << 10
                grow = call("sysmalloc", start, duration,
                            call("brk", start + 500, int(duration * 0.6), argument0=brk, return_value=brk),
                            argument0=(132 << 10) - 4096, argument1=MAIN_ARENA, stack_id=stacks["malloc_grow"])
                builder.add(int(rng.choice(tids)), wrap(grow))
                continue
            brk -= 256 << 10
            trim = call("systrim", start, 9_000, call("brk", start + 1_000, 6_000, argument0=brk, return_value=brk),
                        argument0=128 << 10, stack_id=stacks["trim"])
            builder.add(tids[-1], wrap(trim, "free"))
            brk += 256 << 10
            grow = call("sysmalloc", start + 30_000, 15_000,
                        call("brk", start + 31_000, 11_000, argument0=brk, return_value=brk),
                        argument0=256 << 10, argument1=MAIN_ARENA, stack_id=stacks["malloc_grow"])
            builder.add(tids[-1], wrap(grow))
    # Same-size mmap/munmap pairs: 256 KiB requests above the mmap threshold.
        for _ in range(12):
            start = at()
            mapped = call("sysmalloc", start, 20_000, call("mmap", start + 800, 15_000, argument0=(256 << 10) + 4096,
                                                         argument1=3, return_value=0x7F00_0000_0000),
                          argument0=(256 << 10) + 4096, argument1=MAIN_ARENA, stack_id=stacks["malloc_grow"])
            builder.add(tids[0], wrap(mapped))
            if full:  # free → munmap (munmap_chunk is not traced; the syscall is streamed inside free)
                builder.add(tids[0], call("free", start + 60_000, 14_000,
                                          call("munmap", start + 61_000, 12_000, argument0=(256 << 10) + 4096)))
            else:
                builder.add(tids[0], call("munmap", start + 61_000, 12_000, argument0=(256 << 10) + 4096))
    # Consolidations inside _int_malloc.
    for _ in range(5):
        start = at()
        builder.add(int(rng.choice(tids)), wrap(call("malloc_consolidate", start, int(rng.integers(3_000, 9_000)),
                                                     argument0=MAIN_ARENA, stack_id=stacks["malloc_grow"])))

    if contention:
        for _ in range(300):  # main_arena: the lock-wait function with its futex inside
            start = at()
            wait = int(rng.lognormal(math.log(30_000), 0.8)) + 1_000
            flags = EVENT_FLAG_ARENA_LOCK | EVENT_FLAG_MAIN_ARENA
            tid = int(rng.choice(tids[2:] or tids))
            stack = stacks["malloc_lock"] if rng.random() < 0.7 else stacks["free_lock"]
            tree = call("__lll_lock_wait_private", start, wait,
                        call("futex", start + 300, wait - 600, argument0=MAIN_ARENA, argument1=FUTEX_WAIT_PRIVATE,
                             flags=flags),
                        argument0=MAIN_ARENA, flags=flags, stack_id=stack)
            builder.add(tid, tree)
        for _ in range(40):  # a non-main arena shared by the first two workers
            start = at()
            wait = int(rng.lognormal(math.log(15_000), 0.5)) + 1_000
            tree = call("__lll_lock_wait_private", start, wait,
                        call("futex", start + 300, wait - 600, argument0=OTHER_ARENA, argument1=FUTEX_WAIT_PRIVATE,
                             flags=EVENT_FLAG_ARENA_LOCK),
                        argument0=OTHER_ARENA, flags=EVENT_FLAG_ARENA_LOCK, stack_id=stacks["malloc_lock"])
            builder.add(tids[int(rng.integers(0, min(2, len(tids))))], tree)
    # Not an arena: a stdio lock (streamed because the lock-wait function is traced, but no arena flag).
    for _ in range(10):
        start = at()
        builder.add(tids[0], call("__lll_lock_wait_private", start, 20_000,
                                  call("futex", start + 300, 19_000, argument0=STDIO_LOCK,
                                       argument1=FUTEX_WAIT_PRIVATE),
                                  argument0=STDIO_LOCK, stack_id=stacks["stdio"]))
    # Application futexes (pthread mutex) are counted in the kernel, never streamed.
    builder.add_aggregate("futex", rng.integers(5_000, 80_000, size=25))

    if native:
        native_tid = 1000
        for _ in range(30):
            start = at()
            children = []
            if rng.random() < 0.5:
                children.append(call("na_lock_wait", start + 500, 12_000, argument0=NATIVE_ARENA,
                                     flags=EVENT_FLAG_ARENA_LOCK, stack_id=stacks["native"]))
            builder.add(native_tid, call("na_alloc_batch", start, 20_000, *children, argument0=NATIVE_ARENA,
                                         argument1=64))
        for _ in range(6):
            start = at()
            builder.add(native_tid, call("na_grow", start, 50_000,
                                         call("mmap", start + 1_000, 40_000, argument0=1 << 20, argument1=3),
                                         argument0=NATIVE_ARENA, argument1=1 << 20))

    if full:  # the fast path: tcache hits and frees, aggregated in the kernel
        builder.add_aggregate("malloc", rng.lognormal(math.log(60), 0.4, size=20_000).astype(np.int64) + 20)
        builder.add_aggregate("_int_malloc", rng.lognormal(math.log(150), 0.5, size=6_000).astype(np.int64) + 40,
                              path=["malloc"])
        builder.add_aggregate("free", rng.lognormal(math.log(45), 0.4, size=19_000).astype(np.int64) + 15)
        builder.add_aggregate("_int_free", rng.lognormal(math.log(35), 0.4, size=19_000).astype(np.int64) + 10,
                              path=["free"])
        if native:
            builder.add_aggregate("na_alloc", rng.lognormal(math.log(25), 0.3, size=8_000).astype(np.int64) + 5)
            builder.add_aggregate("na_free", rng.lognormal(math.log(20), 0.3, size=8_000).astype(np.int64) + 5)
    return builder.build(duration_ns, full=full)


def write_trace_file(trace: Trace, path: str | Path, batch_rows: int = 65_536) -> Path:
    """Write ``trace`` through the real TraceWriter (header, METADATA, EVENTS..., SYMBOLS, AGGREGATES, FOOTER)."""
    path = Path(path)
    writer = TraceWriter(trace.metadata, path, force=True)
    table = pa.Table.from_pandas(trace.events.astype(event_schema().empty_table().to_pandas().dtypes.to_dict()),
                                 schema=event_schema(), preserve_index=False)
    for batch in table.to_batches(max_chunksize=batch_rows):
        writer.add_events(batch)
    writer.add_symbols([tuple(row) for row in trace.frames.itertuples(index=False)],
                       [tuple(row) for row in trace.stacks.itertuples(index=False)])
    writer.set_aggregates(pa.Table.from_pandas(trace.aggregates, schema=aggregate_schema(), preserve_index=False))
    writer.close(trace.footer)
    return path


# ---- scale benchmark: millions of events, generated per batch so the generator itself stays small ----

_SCALE_TEMPLATES = (
    # (function name, ancestors, flags, share)
    ("__lll_lock_wait_private", (), EVENT_FLAG_ARENA_LOCK | EVENT_FLAG_MAIN_ARENA, 0.30),
    ("futex", ("__lll_lock_wait_private",), EVENT_FLAG_ARENA_LOCK | EVENT_FLAG_MAIN_ARENA, 0.30),
    ("sysmalloc", ("malloc", "_int_malloc"), 0, 0.12),
    ("brk", ("malloc", "_int_malloc", "sysmalloc"), 0, 0.12),
    ("malloc_consolidate", ("malloc", "_int_malloc"), 0, 0.04),
    ("mmap", ("malloc", "_int_malloc", "sysmalloc"), 0, 0.04),
    ("na_alloc_batch", (), 0, 0.04),
    ("na_lock_wait", ("na_alloc_batch",), EVENT_FLAG_ARENA_LOCK, 0.04),
)


def scale_batches(events: int, seed: int = 0, batch_rows: int = 65_536, threads: int = 16) -> Iterator[pa.RecordBatch]:
    """Batches of plausible events (lock waits, sysmalloc → brk, ...) at about 20 M events/s to generate."""
    ids = {entry["name"]: entry["id"] for entry in catalog_functions()}
    template_function = np.array([ids[name] for name, _, _, _ in _SCALE_TEMPLATES], dtype=np.uint16)
    template_path = np.array([pack_path([ids[item] for item in ancestors]) for _, ancestors, _, _ in _SCALE_TEMPLATES],
                             dtype=np.uint64)
    template_depth = np.array([len(ancestors) for _, ancestors, _, _ in _SCALE_TEMPLATES], dtype=np.uint8)
    template_flags = np.array([flags for _, _, flags, _ in _SCALE_TEMPLATES], dtype=np.uint8)
    shares = np.array([share for _, _, _, share in _SCALE_TEMPLATES])
    rng = np.random.default_rng(seed)
    produced = 0
    schema = event_schema()
    while produced < events:
        rows = min(batch_rows, events - produced)
        template = rng.choice(len(_SCALE_TEMPLATES), size=rows, p=shares / shares.sum())
        duration = rng.integers(500, 200_000, size=rows, dtype=np.uint64)
        call_id = np.arange(produced + 1, produced + rows + 1, dtype=np.uint64)
        depth = template_depth[template]
        arrays = {
            "timestamp_ns": START_NS + (call_id * np.uint64(6_000)),
            "duration_ns": duration,
            "self_ns": duration // np.uint64(2),
            "call_id": call_id,
            "parent_call_id": np.where(depth > 0, call_id - np.uint64(1), np.uint64(0)).astype(np.uint64),
            "path": template_path[template],
            "argument0": np.where(template_flags[template] > 0, np.uint64(MAIN_ARENA), np.uint64(135168)),
            "argument1": np.full(rows, FUTEX_WAIT_PRIVATE, dtype=np.uint64),
            "return_value": np.zeros(rows, dtype=np.uint64),
            "tid": (rng.integers(0, threads, size=rows) + 1001).astype(np.uint32),
            "function": template_function[template],
            "depth": depth,
            "flags": template_flags[template],
            "stack_id": np.full(rows, -1, dtype=np.int32),
        }
        yield pa.RecordBatch.from_arrays([pa.array(arrays[item.name], type=item.type) for item in schema],
                                         schema=schema)
        produced += rows


def write_large_trace(path: str | Path, events: int, seed: int = 0) -> Path:
    path = Path(path)
    threads = {1000 + index: f"worker-{index}" for index in range(1, 17)}
    functions = catalog_functions()
    writer = TraceWriter(default_metadata(functions, threads, START_NS, True), path, force=True)
    for batch in scale_batches(events, seed):
        writer.add_events(batch)
        writer._event_batches.clear()  # keep the generator's memory flat: the benchmark reads the file back
    writer.set_aggregates(aggregate_schema().empty_table())
    duration = int(events * 6_000)
    writer.close(default_footer(START_NS, duration, events, []))
    return path


def in_memory_events(trace: Trace) -> Any:
    """The events of ``trace`` exactly as TraceWriter keeps them (for tests comparing live and file)."""
    return events_frame([pa.RecordBatch.from_pandas(trace.events, schema=event_schema(), preserve_index=False)])
