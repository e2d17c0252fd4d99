"""A small hand-computable Trace for the flamegraph exporter tests (expected totals worked out below)."""

from __future__ import annotations

import pandas as pd
from arena_trace.probes.event_layout import EVENT_FLAG_ARENA_LOCK, EVENT_FLAG_MAIN_ARENA, HISTOGRAM_BUCKETS, pack_path
from arena_trace.tracer.trace_format import FRAME_COLUMNS, STACK_COLUMNS, Trace, empty_aggregates, empty_events

MAIN_ARENA = 0x7F3A_B8DD_3C60
STDIO_LOCK = 0x7F3A_B8DD_5A10
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
LIBC_BUILD_ID = "93ac61ec5a8eb1396f9fbd350e3169a558528a40"
APP = "/opt/app/bin/server"
APP_BUILD_ID = "feedfacefeedfacefeedfacefeedfacefeedface"
GROWTH = 0x21000  # one brk step and one mprotect step

FUNCTIONS = [
    {"id": 1, "name": "malloc", "kind": "function", "role": "api-alloc", "tier": "full", "allocator": "glibc"},
    {"id": 2, "name": "_int_malloc", "kind": "function", "role": "alloc-internal", "tier": "full",
     "allocator": "glibc"},
    {"id": 3, "name": "sysmalloc", "kind": "function", "role": "grow", "tier": "slow", "allocator": "glibc"},
    {"id": 4, "name": "__lll_lock_wait_private", "kind": "function", "role": "lock-wait", "tier": "slow",
     "allocator": "glibc"},
    {"id": 5, "name": "new_heap", "kind": "function", "role": "grow", "tier": "slow", "allocator": "glibc"},
    {"id": 10, "name": "brk", "kind": "syscall", "role": "syscall", "tier": "slow", "allocator": None},
    {"id": 11, "name": "mmap", "kind": "syscall", "role": "syscall", "tier": "slow", "allocator": None},
    {"id": 12, "name": "mprotect", "kind": "syscall", "role": "syscall", "tier": "slow", "allocator": None},
    {"id": 13, "name": "futex", "kind": "syscall", "role": "syscall", "tier": "slow", "allocator": None},
]

FRAMES = [  # frame_id, module, build_id, module_offset, symbol, symbol_offset, file, line
    (1, APP, APP_BUILD_ID, 0x1100, "main", 0x20, "server.c", 10),
    (2, APP, APP_BUILD_ID, 0x1300, "handle_request", 0x44, "server.c", 42),
    (3, LIBC, LIBC_BUILD_ID, 0x9A0E0, "__libc_malloc", 0x50, "malloc.c", 3301),
    (4, LIBC, LIBC_BUILD_ID, 0x97000, "_int_malloc", 0x300, "malloc.c", 4402),
    (5, LIBC, LIBC_BUILD_ID, 0x96B00, "sysmalloc", 0x4, "malloc.c", 2560),
    (6, LIBC, LIBC_BUILD_ID, 0x8A000, "__lll_lock_wait_private", 0x4, None, None),
    (7, LIBC, LIBC_BUILD_ID, 0x89000, "start_thread", 0x100, "pthread_create.c", 444),
    (8, APP, APP_BUILD_ID, 0x1500, "worker; \"quoted\"\nname", 0x10, "server.c", 77),
    (9, APP, APP_BUILD_ID, 0x1700, None, None, None, None),  # unsymbolized: shown as server+0x1700
]
STACKS = [  # innermost first
    (0, [5, 4, 3, 2, 1], "complete"),
    (1, [6, 3, 9, 8, 7], "complete"),
    (2, [5, 4, 3, 8, 7], "complete"),
]

# call_id, parent, tid, function, path ids, start, duration, self, argument0, return value, flags, stack
EVENTS = [
    (1, 0, 101, 3, [], 1000, 5000, 3000, 4096, 0, 0, 0),
    (2, 1, 101, 10, [3], 1500, 1000, 1000, 0, 0x10000, 0, 0),  # first brk: no known predecessor
    (3, 1, 101, 10, [3], 3000, 1000, 1000, 0x31000, 0x31000, 0, 0),  # grows the break by GROWTH
    (4, 0, 102, 4, [], 2000, 7000, 7000, MAIN_ARENA, 0, EVENT_FLAG_ARENA_LOCK | EVENT_FLAG_MAIN_ARENA, 1),
    (5, 0, 102, 4, [], 10000, 400, 400, STDIO_LOCK, 0, 0, 1),  # stdio lock: neither allocator time nor lock wait
    (6, 0, 102, 3, [], 20000, 9000, 1000, 8192, 0, 0, 2),
    (7, 6, 102, 5, [3], 21000, 8000, 2000, 8192, 0, 0, -1),
    (8, 7, 102, 11, [3, 5], 22000, 3000, 3000, 128 << 20, 0x7F00_0000_0000, 0, -1),  # PROT_NONE reservation
    (9, 7, 102, 12, [3, 5], 26000, 3000, 3000, GROWTH, 0, 0, -1),
]
# function, path ids, flags, calls, total, self
AGGREGATES = [
    (1, [], 0, 1000, 200_000, 150_000),
    (2, [1], 0, 300, 50_000, 50_000),
    (4, [1, 2], EVENT_FLAG_ARENA_LOCK, 5, 2_500, 2_500),
    (13, [], 0, 50, 99_999, 99_999),  # application futexes outside the allocator: not allocator time
]

EXPECTED_TOTALS = {
    # outermost counted calls: sysmalloc 5000, the arena lock wait 7000, sysmalloc 9000, aggregated malloc
    "allocator-time": 5000 + 7000 + 9000 + 200_000,
    "lock-wait": 7000 + 2_500,
    "grow-time": 5000 + 9000,  # inclusive time of the two outermost sysmalloc calls
    "heap-growth": GROWTH + GROWTH,
    "calls": 8 + 1000 + 300 + 5,
}


def _events(with_stacks: bool) -> pd.DataFrame:
    rows = []
    for (call_id, parent, tid, function, path, start, duration, self_time, argument0, returned, flags,
         stack) in EVENTS:
        rows.append({
            "timestamp_ns": 5_000_000_000 + start, "duration_ns": duration, "self_ns": self_time, "call_id": call_id,
            "parent_call_id": parent, "path": pack_path(path), "argument0": argument0, "argument1": 0,
            "return_value": returned, "tid": tid, "function": function, "depth": len(path), "flags": flags,
            "stack_id": stack if with_stacks else -1,
        })
    template = empty_events()
    return pd.DataFrame(rows, columns=template.columns).astype(template.dtypes.to_dict())


def _aggregates() -> pd.DataFrame:
    rows = [{"function": function, "path": pack_path(path), "flags": flags, "calls": calls, "total_ns": total,
             "self_ns": self_time, "max_ns": total, "histogram": [0] * HISTOGRAM_BUCKETS}
            for function, path, flags, calls, total, self_time in AGGREGATES]
    template = empty_aggregates()
    frame = pd.DataFrame(rows, columns=template.columns)
    return frame.astype({column: dtype for column, dtype in template.dtypes.items() if column != "histogram"})


def metadata() -> dict:
    return {
        "functions": FUNCTIONS,
        "threads": [{"tid": 101, "name": "server"}, {"tid": 102, "name": "worker-1"}],
        "allocators": [{"name": "glibc", "path": LIBC, "build_id": LIBC_BUILD_ID, "version": "2.36",
                        "main_arena": MAIN_ARENA}],
        "target": {"pid": 101, "comm": "server", "cmdline": ["server"]},
        "start_ns": 5_000_000_000,
    }


def make_export_trace(with_stacks: bool = True) -> Trace:
    return Trace(
        metadata=metadata(),
        events=_events(with_stacks),
        aggregates=_aggregates(),
        frames=pd.DataFrame(FRAMES if with_stacks else [], columns=list(FRAME_COLUMNS)),
        stacks=pd.DataFrame(STACKS if with_stacks else [], columns=list(STACK_COLUMNS)),
        footer={"duration_ns": 1_000_000},
    )


def make_empty_trace() -> Trace:
    return Trace(metadata=metadata())
