"""The declarative probe catalog format: which allocator functions exist, what they do, what their
argument registers carry and which tier they belong to. One module per allocator fills it in
(``glibc.py``, ``native_alloc.py``); the tracer resolves every name at run time, never by offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    API_ALLOC = "api-alloc"  # malloc, calloc, realloc, na_alloc
    API_FREE = "api-free"  # free, na_free
    ALLOC_INTERNAL = "alloc-internal"  # _int_malloc
    FREE_INTERNAL = "free-internal"  # _int_free
    BATCH = "batch"  # na_alloc_batch
    CONSOLIDATE = "consolidate"  # malloc_consolidate, na_consolidate
    GROW = "grow"  # sysmalloc, new_heap, na_grow: getting memory from the kernel
    ARENA_SELECT = "arena-select"  # arena_get2: a thread picks (or creates) its arena
    LOCK_WAIT = "lock-wait"  # blocking on an arena lock
    TRIM = "trim"  # systrim, na_reset: giving memory back
    SYSCALL = "syscall"


class Tier(StrEnum):
    SLOW = "slow"  # rare calls: on by default, each call streamed with exact latency and a stack
    FULL = "full"  # every call: opt-in with --full, aggregated in the kernel


class Meaning(StrEnum):
    SIZE = "size"
    ARENA = "arena"
    FUTEX = "futex"  # address of a lock word
    POINTER = "pointer"
    COUNT = "count"
    LENGTH = "length"


ARGUMENT_REGISTERS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")


@dataclass(frozen=True)
class Argument:
    register: str
    meaning: Meaning


@dataclass(frozen=True)
class FunctionSpec:
    name: str  # report name
    symbols: tuple[str, ...]  # candidates in order; GCC clone suffixes (.constprop.N, .part.N) also match
    role: Role
    tier: Tier
    arguments: tuple[Argument, ...] = ()  # at most two are recorded (argument0, argument1)
    returns: Meaning | None = None
    exported: bool = False  # in .dynsym, so resolvable without debug symbols
    stack: bool = True  # capture a user stack at entry (slow tier only)
    note: str = ""


@dataclass(frozen=True)
class SyscallSpec:
    name: str
    length_argument: str | None = None  # tracepoint field holding the byte count, if any
    note: str = ""


@dataclass(frozen=True)
class AllocatorCatalog:
    name: str  # "glibc" | "native"
    library_patterns: tuple[str, ...]  # regexes on the basename of a mapped file
    functions: tuple[FunctionSpec, ...]
    # Data symbols the tracer reads to classify locks (e.g. glibc's main_arena).
    data_symbols: tuple[str, ...] = ()
    debug_package: str = ""  # what to install when local symbols are missing
    notes: tuple[str, ...] = field(default_factory=tuple)

    def tier(self, tier: Tier) -> tuple[FunctionSpec, ...]:
        return tuple(spec for spec in self.functions if spec.tier == tier)


# Syscall tracepoints of the target; every call is counted, calls inside allocator functions are streamed.
SYSCALLS: tuple[SyscallSpec, ...] = (
    SyscallSpec("brk", note="argument0 = requested break"),
    SyscallSpec("mmap", length_argument="len"),
    SyscallSpec("munmap", length_argument="len"),
    SyscallSpec("mprotect", length_argument="len"),
    SyscallSpec("madvise", length_argument="len_in"),
    SyscallSpec("futex", note="argument0 = uaddr, argument1 = op"),
)
